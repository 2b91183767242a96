"""A synthetic sweep's experiments as one vmapped program vs one by one.

  python benchmarks/synthetic_sweep.py [--federation=1_1] [--experiments=9] [--rounds=5]
      [--repeats=3] [--concurrent=0]

The first ``--experiments`` experiments of configs/synthetic.py:heterogeneity on one federation
(algorithms x stragglers x seeds, the paper's settings: E = 20, B = 10, 10 of 30 devices per
round, evaluation every round) run ``--rounds`` rounds, alternately as one program, one by one,
and one by one with programs side by side in threads (``--concurrent``; 0 = one per core, as a
CPU sweep runs them), all compiled before timing. Prints seconds per round of all the
experiments, the ratios, and the 5-seed grid's time (180 experiments x 200 rounds)
extrapolated from the fastest path.
"""

import os
import statistics
import sys
import time

import jax
from absl import app, flags

import common  # puts the project on sys.path
from configs import synthetic as synthetic_config
from fedprox_jax.run import defaults, experiment, loop, sweep
from fedprox_jax.run import grid as grid_lib, program as program_lib
from fedprox_jax.run import config as config_lib
from fedprox_jax.data import synthetic

flags.DEFINE_string("federation", "1_1", "iid or ALPHA_BETA")
flags.DEFINE_integer("experiments", 9, "experiments timed")
flags.DEFINE_integer("rounds", 5, "rounds per timing")
flags.DEFINE_integer("repeats", 3, "alternating repeats (medians)")
flags.DEFINE_integer("concurrent", 0, "programs side by side (0 = the sweep's CPU default)")
F = flags.FLAGS


def main(argv):
  del argv
  c = synthetic_config.get_config("heterogeneity")
  c.sweep.seeds = -(-F.experiments // 9)
  c.sweep.federations = F.federation
  c = config_lib.resolve(c)
  federation = synthetic.parse_name(F.federation)
  setup = experiment.prepare(grid_lib.data_config(c, federation, c.partition_seed), None,
                             lanes_over_devices=False)
  setup.config.num_rounds = F.rounds
  specs = grid_lib.experiment_grid(c)[:F.experiments]
  every_round = loop.Schedule(F.rounds, eval_every=1, checkpoint_every=F.rounds)
  side_by_side = F.concurrent or defaults.concurrent_programs(1, "cpu")
  paths = {
      "one program": lambda: program_lib.run_program(setup, specs, every_round, setup.mesh),
      "one by one": lambda: [program_lib.run_program(setup, [s], every_round, setup.mesh) for s in specs],
      f"one by one, {side_by_side} side by side": lambda: sweep._run_side_by_side(
          lambda i, stop: program_lib.run_program(setup, [specs[i]], every_round, setup.mesh),
          len(specs), side_by_side),
  }
  times = {name: [] for name in paths}
  for fn in paths.values():
    fn()  # compile
  for _ in range(F.repeats):
    for name, fn in paths.items():
      start = time.perf_counter()
      fn()
      times[name].append((time.perf_counter() - start) / F.rounds)
  med = {name: statistics.median(t) for name, t in times.items()}
  print(f"command: python {' '.join(sys.argv)}")
  print(f"cpu: {common.cpu_model()} ({os.cpu_count()} cores); backend={jax.default_backend()} "
        f"jax={jax.__version__}; {time.strftime('%Y-%m-%d')}; federation "
        f"{synthetic.name(*federation)}, {len(specs)} experiments, {F.rounds} rounds x "
        f"{F.repeats} alternating repeats (medians); largest device "
        f"{setup.data.stats['max_train']} training examples")
  print("| path | s per round (all experiments) | per experiment-round |")
  print("|---|---:|---:|")
  for name, t in med.items():
    print(f"| {name} | {t:.3f} | {t / len(specs) * 1e3:.1f} ms |")
  for name in med:
    if name != "one by one":
      ratio = med["one by one"] / med[name]
      print(f"{name} vs one by one: {ratio:.2f}x faster" if ratio >= 1 else
            f"{name} is {1 / ratio:.2f}x slower than one by one")
  best = min(med.values()) / len(specs)
  print(f"extrapolated 5-seed grid (180 experiments x 200 rounds) at the fastest path's rate on "
        f"this federation: {best * 180 * 200 / 60:.0f} min")


if __name__ == "__main__":
  app.run(main)
