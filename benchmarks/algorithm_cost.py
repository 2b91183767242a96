"""Each algorithm's round time over FedAvg's, the same rounds (same keys) side by side.

  python benchmarks/algorithm_cost.py [--setting=seed_mlr|niid_cnn] [--rounds=5]
      [--algorithms=fedavg,fedprox,fednova,scaffold,fedadam,fedavgm]

seed_mlr: the seed protocol with logistic regression (1000 power-law clients on MNIST, 10 a
round, E = 10) without stragglers, so that every algorithm trains the same clients for the same
steps and only its own machinery differs; niid_cnn: configs/niid_bench.py (10 clients all
sampled, NIID-Bench's CNN, momentum 0.9, Dirichlet(0.5) labels) at E = 1. The rounds are
interleaved (A B C A B C ...) after one compile round each, and the median is reported with
the CPU model. MNIST is read from ../shared/data/mnist (IDX).
"""

import statistics
import time

import jax
from absl import app, flags

import common
from configs import niid_bench
from fedprox_jax.core import algorithms, models, rounds
from fedprox_jax.data import mnist as data_lib
from fedprox_jax.run import config as config_lib
from fedprox_jax.run import experiment

flags.DEFINE_enum("setting", "seed_mlr", ["seed_mlr", "niid_cnn"], "which experiment")
flags.DEFINE_integer("rounds", 5, "timed rounds per algorithm (after one compile round)")
flags.DEFINE_list("algorithms", ["fedavg", "fedprox", "fednova", "scaffold", "fedadam",
                                 "fedavgm"], "algorithms of core/algorithms.py")
F = flags.FLAGS


def _config():
  if F.setting == "niid_cnn":
    # A run of the grid's settings, on the config's partition (labeldir 0.5).
    c = config_lib.as_run(niid_bench.get_config("grid"))
    c.local_epochs = 1
  else:
    c = common.mnist_config.get_config("fedprox")
    c.update(model="mlr", stragglers_fraction=0.0)
  return config_lib.resolve(c)


def main(_):
  c = _config()
  mnist = data_lib.load_mnist("idx", common.DEFAULT_DATA_DIR)
  setup = experiment.prepare(c, mnist, lanes_over_devices=False)
  c = setup.config  # with the paths set-up chose
  data = setup.data.train
  params = models.init_params(setup.model, jax.random.key(0), setup.data.input_spec)
  runs = {}
  for name in F.algorithms:
    a = algorithms.get(name)
    spec = experiment.round_spec(c, setup.data.stats["max_train"], algorithm=a)
    hp = experiment.hparams(
        c, a, mu={"zero": 0.0, "config": c.mu, "fixed": a.mu, "adaptive": c.mu}[a.mu_rule],
        drop_stragglers=a.drop_stragglers)
    fn = rounds.make_round_fn(setup.model.apply, spec, with_state=True)
    state = rounds.init_server_state(spec, params, c.num_clients, hp)
    state, m = fn(state, data, hp, jax.random.key(0))  # compile
    jax.block_until_ready(state)
    runs[name] = [fn, state, hp, []]
  for t in range(1, F.rounds + 1):
    for name, run in runs.items():
      fn, state, hp, times = run
      start = time.perf_counter()
      state, m = fn(state, data, hp, jax.random.key(t))
      jax.block_until_ready(state)
      times.append(time.perf_counter() - start)
      run[1] = state
  print(common.header())
  print(f"cpu={common.cpu_model()} setting={F.setting} rounds={F.rounds} (median, interleaved)")
  base = statistics.median(runs[F.algorithms[0]][3])
  print(f"| algorithm | ms/round | over {F.algorithms[0]} |\n|---|---:|---:|")
  for name, run in runs.items():
    ms = statistics.median(run[3]) * 1e3
    print(f"| {name} | {ms:.1f} | {ms / (base * 1e3):.2f}x |")


if __name__ == "__main__":
  app.run(main)
