"""Round time on the default MNIST experiment: packed vs naive vmap vs looped, and scaling.

  python benchmarks/default_round.py --model=cnn [--rounds=3] [--clients_per_round=10,100]
      [--paths=packed,naive,looped] [--stragglers=0.9]

For each clients-per-round value and path, runs the same rounds (same keys) of the default
config (real MNIST partition, E = 10, B = 10) after a compile round, and reports ms/round,
useful client-steps per round, ms per useful client-step, packing efficiency, and the useful
GFLOP/s (XLA's flop count of one training example's forward+backward, times the real
examples trained) next to this device's measured f32 matmul peak.
packed = the backend's default lanes; naive = one lane per client; N = packed into N lanes;
looped = the reference.
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import common
from fedprox_jax.core import client, models, reference, rounds
from fedprox_jax.run import defaults, experiment

flags.DEFINE_string("model", "cnn", "cnn | mlr")
flags.DEFINE_integer("rounds", 3, "timed rounds per path (after one compile round)")
flags.DEFINE_list("clients_per_round", ["10"], "clients per round values")
flags.DEFINE_list("paths", ["packed", "naive", "looped"],
                  "packed | naive | looped | N (packed into N lanes)")
flags.DEFINE_float("stragglers", 0.9, "stragglers fraction (FedProx keeps their work)")
F = flags.FLAGS


def matmul_peak_gflops(n=2048, repeats=10):
  a = jax.random.normal(jax.random.key(0), (n, n))
  f = jax.jit(lambda a: a @ a)
  jax.block_until_ready(f(a))
  start = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(f(a))
  return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e9


def flops_per_example(model, params):
  """XLA's count for one example's loss forward + backward (batch 10, divided by 10)."""
  x = jnp.zeros((10, 28, 28, 1))
  y = jnp.zeros(10, jnp.int32)
  grad = jax.jit(jax.grad(lambda p: client.masked_cross_entropy(model.apply(p, x), y,
                                                                jnp.ones(10, bool))))
  cost = grad.lower(params).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return cost["flops"] / 10


def main(argv):
  del argv
  print(common.header())
  peak = matmul_peak_gflops()
  print(f"f32 matmul peak (2048^3): {peak:.1f} GFLOP/s")
  for k in map(int, F.clients_per_round):
    c, exp = common.default_experiment(model=F.model, clients_per_round=k)
    model = models.make_model(F.model, defaults.conv_impl())
    params = models.init_params(model, jax.random.key(0))
    per_example = flops_per_example(model, params)
    c.update(stragglers_fraction=F.stragglers, drop_stragglers=False)
    hp = experiment.hparams(c)
    spec_with = lambda lanes: experiment.round_spec(c, exp.stats["max_train"], num_lanes=lanes)
    keys = [jax.random.fold_in(jax.random.key(c.seed), t) for t in range(F.rounds + 1)]
    # Useful work of the timed rounds (identical for every path: same plans).
    spec = spec_with(1)
    plans = [rounds.plan_round(key, exp.train, hp, spec) for key in keys[1:]]
    useful_steps = np.mean([int(p.steps.sum()) for p in plans])
    examples = np.mean([int(jnp.sum(p.sizes * p.epochs)) for p in plans])
    print(f"\nmodel={F.model} clients_per_round={k} stragglers={F.stragglers} "
          f"useful client-steps/round={useful_steps:.0f} examples/round={examples:.0f} "
          f"flops/example={per_example / 1e6:.3f}M")
    for path in F.paths:
      if path == "looped":
        run = lambda key, spec=spec: reference.looped_round(model.apply, spec, params, exp.train,
                                                         hp, key)
        lanes = 1
      else:
        lanes = {"packed": defaults.num_lanes(k), "naive": k}.get(path) or int(path)
        round_fn = rounds.make_round_fn(model.apply, spec_with(lanes))
        run = lambda key, f=round_fn: f(params, exp.train, hp, key)
      start = time.perf_counter()
      jax.block_until_ready(run(keys[0]))
      compile_s = time.perf_counter() - start
      times, efficiency = [], []
      for key in keys[1:]:
        start = time.perf_counter()
        _, metrics = jax.block_until_ready(run(key))
        times.append(time.perf_counter() - start)
        efficiency.append(int(metrics.lanes.useful_steps) / max(int(metrics.lanes.executed_steps), 1))
      seconds = statistics.median(times)
      gflops = examples * per_example / seconds / 1e9
      print(f"  {path:>6} lanes={lanes:<5d} {seconds * 1e3:9.1f} ms/round  "
            f"{seconds / useful_steps * 1e3:7.3f} ms/useful step  efficiency "
            f"{np.mean(efficiency):.3f}  {gflops:6.1f} GFLOP/s ({gflops / peak:.0%} of peak)  "
            f"first round {compile_s:.1f} s")


if __name__ == "__main__":
  app.run(main)
