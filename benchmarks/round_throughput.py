"""Times one round of equal-sized clients: vmapped (packed lanes) vs the looped reference.

  python benchmarks/round_throughput.py [--model=cnn] [--clients=10] [--client_size=50]
      [--local_epochs=1] [--lanes=0,1,2,5,10] [--repeats=5] [--conv_impl=auto]

Prints the median seconds per round after compilation, for the looped reference and for the
vectorized round at each lane count (0 = the backend's default), and the speed ratios.
"""

import statistics
import sys
import time

import jax
import numpy as np
from absl import app, flags

import common  # noqa: F401  (puts the project on sys.path)
from fedprox_jax.core import models, reference, rounds
from fedprox_jax.federated_data import FederatedData
from fedprox_jax.run import defaults, protocols

FLAGS = flags.DEFINE_string("model", "cnn", "cnn | mlr")
flags.DEFINE_integer("clients", 10, "clients per round (all of them are sampled)")
flags.DEFINE_integer("client_size", 50, "examples per client")
flags.DEFINE_integer("local_epochs", 1, "local epochs")
flags.DEFINE_integer("batch_size", 10, "batch size")
flags.DEFINE_list("lanes", ["0", "1", "2", "5", "10"], "lane counts to time (0 = backend default)")
flags.DEFINE_integer("repeats", 5, "timed rounds per path (median reported)")
flags.DEFINE_string("conv_impl", "auto", "auto | im2col | xla")
F = flags.FLAGS


def interleaved_medians(fns: dict, repeats: int) -> dict:
  """Median seconds per call of each fn; calls are interleaved so machine drift hits all alike."""
  for fn in fns.values():
    jax.block_until_ready(fn(0))  # compile + warm up
  times = {name: [] for name in fns}
  for r in range(1, repeats + 1):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(r))
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def main(argv):
  del argv
  k, n = F.clients, F.client_size
  rng = np.random.default_rng(0)
  data = FederatedData(
      x=jax.numpy.asarray(rng.normal(size=(k * n, 28, 28, 1)).astype(np.float32)),
      y=jax.numpy.asarray(rng.integers(0, 10, k * n).astype(np.int32)),
      offsets=jax.numpy.arange(0, k * n, n, dtype=np.int32),
      sizes=jax.numpy.full(k, n, np.int32))
  model = models.make_model(F.model, defaults.conv_impl() if F.conv_impl == "auto" else F.conv_impl)
  params = models.init_params(model, jax.random.key(0))
  hp = rounds.HParams.create(lr=0.03, mu=1.0, stragglers_fraction=0.0, drop_stragglers=False,
                             clients_per_round=F.clients)
  key = jax.random.key(1)
  steps = k * F.local_epochs * -(-n // F.batch_size)
  print(f"command: python {' '.join(sys.argv)}")
  print(f"backend={jax.default_backend()} device={jax.devices()[0].device_kind} "
        f"jax={jax.__version__} model={F.model} conv_impl={getattr(model, 'conv_impl', '-')} "
        f"clients={k} client_size={n} local_epochs={F.local_epochs} batch={F.batch_size} "
        f"client_steps={steps}")

  def spec_with(lanes):
    # The seed protocol's rules (no stragglers here, so only the weighting matters).
    rules = protocols.protocol_values("seed")
    return rounds.RoundSpec(clients_per_round=k, local_epochs=F.local_epochs,
                            batch_size=F.batch_size, max_client_size=n, num_lanes=lanes,
                            sampling=rules["sampling"], straggler_rule=rules["straggler_rule"],
                            weighting=rules["weighting"])

  fns = {"looped": lambda r: reference.looped_round(model.apply, spec_with(1), params, data, hp,
                                                 jax.random.fold_in(key, r))}
  for lanes in dict.fromkeys(int(v) or defaults.num_lanes(k) for v in F.lanes):
    round_fn = rounds.make_round_fn(model.apply, spec_with(lanes))
    fns[lanes] = (lambda f: lambda r: f(params, data, hp, jax.random.fold_in(key, r)))(round_fn)
  medians = interleaved_medians(fns, F.repeats)
  looped = medians.pop("looped")
  print(f"looped:                {looped * 1e3:8.1f} ms/round")
  for lanes, seconds in medians.items():
    default = " (default)" if lanes == defaults.num_lanes(k) else ""
    print(f"vectorized lanes={lanes:<4d} {seconds * 1e3:8.1f} ms/round   "
          f"speedup over looped: {looped / seconds:.2f}x{default}")

if __name__ == "__main__":
  app.run(main)
