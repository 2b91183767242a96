"""Strong and weak scaling of the sharded round over forced CPU host devices (or real GPUs).

  python benchmarks/scaling_devices.py [--model=mlr] [--devices=1,2,4,8] [--clients=100,1000]
      [--rounds=3]

Sets XLA_FLAGS=--xla_force_host_platform_device_count=8 itself on CPU (all forced devices
share this machine's cores, so this measures the sharding overhead, not extra compute).
strong: fixed clients per round and 8 lanes, spread over N devices.
weak:   clients per round and lanes both grow with N (clients/N per device, 1 lane per device).
"""

import os

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()

import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
from absl import app, flags  # noqa: E402

import common  # noqa: E402
import ml_collections  # noqa: E402
from fedprox_jax.run import defaults, distributed, experiment  # noqa: E402
from fedprox_jax.core import models, rounds  # noqa: E402

flags.DEFINE_string("model", "mlr", "cnn | mlr")
flags.DEFINE_list("devices", ["1", "2", "4", "8"], "device counts")
flags.DEFINE_list("clients", ["100", "1000"], "clients per round (strong scaling)")
flags.DEFINE_integer("weak_clients_per_device", 100, "clients per round per device (weak)")
flags.DEFINE_integer("rounds", 3, "timed rounds")
F = flags.FLAGS


def time_rounds(model, params, exp, c, k, lanes, n):
  mesh = distributed.make_mesh(n)
  c = ml_collections.ConfigDict(c.to_dict())
  c.update(clients_per_round=k, stragglers_fraction=0.9, drop_stragglers=False)
  spec = experiment.round_spec(c, exp.stats["max_train"], mesh=mesh, num_lanes=lanes)
  hp = experiment.hparams(c)
  round_fn = rounds.make_round_fn(model.apply, spec)
  jax.block_until_ready(round_fn(params, exp.train, hp, jax.random.key(0)))
  times = []
  for t in range(1, F.rounds + 1):
    start = time.perf_counter()
    _, m = jax.block_until_ready(round_fn(params, exp.train, hp, jax.random.key(t)))
    times.append(time.perf_counter() - start)
  return statistics.median(times), int(m.lanes.useful_steps)


def main(argv):
  del argv
  print(common.header())
  print(f"devices visible: {jax.device_count()} ({jax.devices()[0].platform})")
  c, exp = common.default_experiment(model=F.model)
  model = models.make_model(F.model, defaults.conv_impl())
  params = models.init_params(model, jax.random.key(0))
  for k in map(int, F.clients):
    base = None
    for n in map(int, F.devices):
      seconds, useful = time_rounds(model, params, exp, c, k, 8, n)
      base = base or seconds
      print(f"strong  clients/round={k:<5d} lanes=8 devices={n}  {seconds * 1e3:9.1f} ms/round  "
            f"speedup {base / seconds:.2f}x  ({seconds / useful * 1e3:.3f} ms/useful step)")
  base = None
  for n in map(int, F.devices):
    k = F.weak_clients_per_device * n
    seconds, useful = time_rounds(model, params, exp, c, k, n, n)
    base = base or seconds
    print(f"weak    clients/round={k:<5d} lanes={n} devices={n}  {seconds * 1e3:9.1f} ms/round  "
          f"efficiency {base / seconds:.2f}  ({seconds / useful * 1e3:.3f} ms/useful step)")


if __name__ == "__main__":
  app.run(main)
