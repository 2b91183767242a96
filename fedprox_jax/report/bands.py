"""Bands: per-round mean ± std of test accuracy over runs that differ only in partition and seed.

  python -m fedprox_jax.report.bands OUT_DIR NAME WORKDIR [WORKDIR ...]
  python -m fedprox_jax.report.bands OUT_DIR NAME SWEEP_WORKDIR

Writes OUT_DIR/NAME.csv (round, mean, std with ddof 1, n, then one column per run, p{partition
seed}_s{seed}) and OUT_DIR/NAME.png, and prints the band's last round, the mean of its last 10
rounds and their spread over partitions and over seeds. Every run workdir must be a finished
run (summary.json) with the same config but for seed and partition_seed, and all must have
evaluated the same rounds; a sweep's workdir must hold one (algorithm, stragglers) cell.
"""

from __future__ import annotations

import csv
import os
import sys

import numpy as np

from fedprox_jax import outputs
from fedprox_jax.errors import UserError
from fedprox_jax.report import results as results_lib
from fedprox_jax.report import statistics
from fedprox_jax.schema import LAYOUT_FIELDS, NO_EFFECT_FIELDS

VARYING = ("seed", "partition_seed")  # what the runs of a band may differ in
IGNORED = VARYING + NO_EFFECT_FIELDS + LAYOUT_FIELDS


def _load_sweep(workdir: str) -> tuple:
  if not os.path.exists(os.path.join(workdir, "summary.json")):
    raise ValueError(f"{workdir} is not a finished sweep (no summary.json)")
  try:
    config = outputs.read_json(os.path.join(workdir, "config.json"))
    rows = results_lib.read_results_csv(os.path.join(workdir, "results.csv"))
  except (OSError, ValueError, UserError) as e:
    raise ValueError(f"{workdir} is damaged ({e}): restore its files") from e
  curves = results_lib.run_curves(rows)
  if len(curves) != 1:
    cells = ", ".join(f"{a} at {s:g}" for _, a, s in sorted(curves))
    raise ValueError(f"{workdir} holds {len(curves)} (algorithm, stragglers) cells ({cells}): a "
                     "band is one of them; run the sweep with one algorithm and one level")
  runs = next(iter(curves.values()))
  default = config.get("partition_seed") if isinstance(config, dict) else None
  rounds = {tuple(r) for r, _ in runs.values()}
  if len(rounds) != 1:
    raise ValueError(f"the runs of {workdir} evaluated different rounds")
  return list(rounds.pop()), {(default if p is None else p, s): list(m["test_accuracy"])
                              for (p, s), (_, m) in runs.items()}


def load_runs(workdirs: list) -> tuple:
  """(rounds, {(partition seed, seed): accuracies}) of finished runs whose configs differ only
  in seed and partition seed, or of the one cell of a finished sweep."""
  if len(workdirs) == 1 and os.path.exists(os.path.join(workdirs[0], "results.csv")):
    rounds, curves = _load_sweep(workdirs[0])
    if len(curves) < 2:
      raise ValueError(f"{workdirs[0]} holds one run: a band needs at least two")
    return rounds, curves
  if len(workdirs) < 2:
    raise ValueError("a band needs at least two runs (or one sweep's workdir)")
  configs, runs = [], []
  for w in workdirs:
    if not os.path.exists(os.path.join(w, "summary.json")):
      raise ValueError(f"{w} is not a finished run (no summary.json)")
    try:
      config = outputs.read_json(os.path.join(w, "config.json"))
      rows = outputs.read_jsonl(os.path.join(w, "metrics.jsonl"))
      if not isinstance(config, dict) or not all(k in config for k in VARYING):
        raise ValueError("config.json is not a run's config (an object with its seeds)")
      these = [r["round"] for r in rows]
      accuracies = [float(r["test_accuracy"]) for r in rows]
    except (OSError, ValueError, KeyError, TypeError, UserError) as e:
      raise ValueError(f"{w} is damaged ({type(e).__name__}: {e}): restore its files, or "
                       "leave it out of the band") from e
    runs.append((w, (config["partition_seed"], config["seed"]), these, accuracies))
    # Where the data came from and how the work was laid out do not change the curve.
    configs.append({k: v for k, v in config.items() if k not in IGNORED})
  # What differs first: two runs of other configs are not a band, whatever else they share.
  differing = sorted({k for c in configs for k in c if c.get(k) != configs[0].get(k)})
  if differing:
    raise ValueError("the runs differ in more than the seed and the partition: " + "; ".join(
        f"{k} ({', '.join(sorted({repr(c.get(k)) for c in configs}))})" for k in differing))
  curves, (first, _, rounds, _) = {}, runs[0]
  for w, run, these, accuracies in runs:
    if these != rounds:
      at = next((i for i, (a, b) in enumerate(zip(these, rounds)) if a != b),
                min(len(these), len(rounds)))
      raise ValueError(
          f"{w} and {first} evaluated rounds that differ ({len(these)} rows vs {len(rounds)}; "
          f"first at row {at + 1}: {_round_at(these, at)} vs {_round_at(rounds, at)}): a band "
          "needs runs that evaluated the same rounds (a truncated run?)")
    if run in curves:
      raise ValueError(f"two runs with partition_seed {run[0]} and seed {run[1]}: a band "
                       "needs each (partition, seed) once")
    curves[run] = accuracies
  return rounds, curves


def _round_at(rounds: list, i: int) -> str:
  return f"round {rounds[i]}" if i < len(rounds) else "no row"


def band_summary(rounds, curves: dict) -> dict:
  """The last round's and the last 10 rounds' mean accuracy over the runs
  (``statistics.spread``)."""
  return {"final_accuracy": statistics.spread({r: v[-1] for r, v in curves.items()}),
          "last10_accuracy": statistics.spread(
              {r: statistics.last_rounds_mean(rounds, v) for r, v in curves.items()})}


def write_band(out_dir: str, name: str, workdirs: list, title: str = "") -> tuple:
  """Writes NAME.csv and NAME.png; returns ([rounds, 3] of (round, mean, std), band_summary)."""
  rounds, curves = load_runs(workdirs)
  runs = sorted(curves)
  acc = np.array([curves[r] for r in runs])
  mean, std = acc.mean(axis=0), acc.std(axis=0, ddof=statistics.DDOF)
  summary = band_summary(rounds, curves)
  os.makedirs(out_dir, exist_ok=True)
  with outputs.atomic_write(os.path.join(out_dir, f"{name}.csv")) as f:
    w = csv.writer(f)
    w.writerow(["round", "mean_test_accuracy", f"std_test_accuracy_ddof{statistics.DDOF}", "n"]
               + [f"p{p}_s{s}" for p, s in runs])
    for i, t in enumerate(rounds):
      w.writerow([t, f"{mean[i]:.6f}", f"{std[i]:.6f}", len(runs)]
                 + [f"{acc[j, i]:.6f}" for j in range(len(runs))])
  f = summary["final_accuracy"]
  fig = outputs.new_figure(figsize=(6, 4))
  ax = fig.subplots()
  ax.plot(rounds, mean, color="tab:red",
          label=f"mean of {statistics.describe_runs(f['partitions'], f['seeds'], f['n'])}")
  ax.fill_between(rounds, mean - std, mean + std, color="tab:red", alpha=0.25,
                  label=f"± 1 std (ddof {statistics.DDOF})")
  ax.set(xlabel="round", ylabel="test accuracy", title=title or name, ylim=(0, 1))
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  outputs.save_figure(fig, os.path.join(out_dir, f"{name}.png"))
  return np.stack([rounds, mean, std], axis=1), summary


def format_summary(summary: dict) -> str:
  f, last = summary["final_accuracy"], summary["last10_accuracy"]
  part = lambda v: "–" if v is None else f"{v:.4f}"
  return (f"{statistics.describe_runs(f['partitions'], f['seeds'], f['n'])}, mean ± std "
          f"(ddof {statistics.DDOF}): last round {statistics.format_band(f)}; mean of the last "
          f"{statistics.LAST_ROUNDS} rounds {statistics.format_band(last)} (std over partitions "
          f"{part(last['std_over_partitions'])}, over seeds {part(last['std_over_seeds'])})")


def main(argv) -> int:
  if len(argv) == 2 and argv[1] in ("-h", "--help"):
    print(__doc__.strip())
    return 0
  if len(argv) < 4:
    print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
    return 2
  try:
    band, summary = write_band(argv[1], argv[2], argv[3:])
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for t, m, s in band:
    print(f"round {int(t):4d}  {m:.4f} ± {s:.4f}")
  print(format_summary(summary))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
