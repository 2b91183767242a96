"""Seed bands: per-round mean ± std of test accuracy over single runs that differ only in seed.

  python -m fedprox_jax.report.bands OUT_DIR NAME WORKDIR [WORKDIR ...]

Writes OUT_DIR/NAME.csv (round, mean, std, n, then one column per seed) and OUT_DIR/NAME.png.
Every workdir must be a finished run (summary.json) with the same config except the seed, and
all must have evaluated the same rounds.
"""

from __future__ import annotations

import csv
import os
import sys

import numpy as np

from fedprox_jax import outputs
from fedprox_jax.errors import UserError
from fedprox_jax.schema import LAYOUT_FIELDS, NO_EFFECT_FIELDS

IGNORED = ("seed",) + NO_EFFECT_FIELDS + LAYOUT_FIELDS


def load_runs(workdirs: list) -> tuple:
  """(rounds, {seed: accuracies}) of finished runs whose configs differ only in the seed."""
  if len(workdirs) < 2:
    raise ValueError("a band needs at least two runs")
  configs, curves, rounds = [], {}, None
  for w in workdirs:
    if not os.path.exists(os.path.join(w, "summary.json")):
      raise ValueError(f"{w} is not a finished run (no summary.json)")
    try:
      config = outputs.read_json(os.path.join(w, "config.json"))
      rows = outputs.read_jsonl(os.path.join(w, "metrics.jsonl"))
      if not isinstance(config, dict) or "seed" not in config:
        raise ValueError("config.json is not a run's config (an object with its seed)")
      these = [r["round"] for r in rows]
      accuracies = [float(r["test_accuracy"]) for r in rows]
    except (OSError, ValueError, KeyError, TypeError, UserError) as e:
      raise ValueError(f"{w} is damaged ({type(e).__name__}: {e}): restore its files, or "
                       "leave it out of the band") from e
    if rounds is not None and these != rounds:
      raise ValueError(f"{w} evaluated rounds {these[:3]}..., the others {rounds[:3]}...")
    rounds = these
    if config["seed"] in curves:
      raise ValueError(f"two runs with seed {config['seed']}")
    curves[config["seed"]] = accuracies
    # Where the data came from and how the work was laid out do not change the curve.
    configs.append({k: v for k, v in config.items() if k not in IGNORED})
  differing = sorted({k for c in configs for k in c if c.get(k) != configs[0].get(k)})
  if differing:
    raise ValueError(f"the runs differ in more than the seed: {', '.join(differing)}")
  return rounds, curves


def write_band(out_dir: str, name: str, workdirs: list, title: str = "") -> np.ndarray:
  """Writes NAME.csv and NAME.png; returns [rounds, 3] of (round, mean, std)."""
  rounds, curves = load_runs(workdirs)
  seeds = sorted(curves)
  acc = np.array([curves[s] for s in seeds])
  mean, std = acc.mean(axis=0), acc.std(axis=0, ddof=1)
  os.makedirs(out_dir, exist_ok=True)
  with outputs.atomic_write(os.path.join(out_dir, f"{name}.csv")) as f:
    w = csv.writer(f)
    w.writerow(["round", "mean_test_accuracy", "std_test_accuracy", "n"]
               + [f"seed{s}" for s in seeds])
    for i, t in enumerate(rounds):
      w.writerow([t, f"{mean[i]:.6f}", f"{std[i]:.6f}", len(seeds)]
                 + [f"{acc[j, i]:.6f}" for j in range(len(seeds))])
  fig = outputs.new_figure(figsize=(6, 4))
  ax = fig.subplots()
  ax.plot(rounds, mean, color="tab:red", label=f"mean of {len(seeds)} seeds")
  ax.fill_between(rounds, mean - std, mean + std, color="tab:red", alpha=0.25, label="± 1 std")
  ax.set(xlabel="round", ylabel="test accuracy", title=title or name, ylim=(0, 1))
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  outputs.save_figure(fig, os.path.join(out_dir, f"{name}.png"))
  return np.stack([rounds, mean, std], axis=1)


def main(argv) -> int:
  if len(argv) == 2 and argv[1] in ("-h", "--help"):
    print(__doc__.strip())
    return 0
  if len(argv) < 4:
    print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
    return 2
  try:
    band = write_band(argv[1], argv[2], argv[3:])
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for t, m, s in band:
    print(f"round {int(t):4d}  {m:.4f} ± {s:.4f}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
