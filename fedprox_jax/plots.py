"""A sweep's results table, summary and Figure-1-style plot; re-drawable from a workdir.

  python -m fedprox_jax.plots WORKDIR     # re-draws figure1.png and summary.md from results.csv
"""

from __future__ import annotations

import csv
import os
import sys
from collections import defaultdict

import numpy as np

FIELDS = ("experiment", "algorithm", "stragglers", "seed", "mu", "round", "test_accuracy",
          "test_loss", "train_loss", "dissimilarity", "num_stragglers", "wall_time")
LABELS = {"fedavg": "FedAvg", "fedprox_mu0": "FedProx (mu=0)", "fedprox": "FedProx (mu>0)"}
COLORS = {"fedavg": "tab:green", "fedprox_mu0": "tab:blue", "fedprox": "tab:red"}
THRESHOLDS = (0.8, 0.9)


def write_results_csv(path: str, specs, results: dict) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
    writer.writeheader()
    for s in specs:
      for row in results[s.name]:
        writer.writerow({"experiment": s.name, "algorithm": s.algorithm,
                         "stragglers": s.stragglers_fraction, "seed": s.seed, "mu": s.mu,
                         **{k: row.get(k, "") for k in FIELDS if k in row}})


def read_results_csv(path: str) -> list:
  with open(path) as f:
    rows = list(csv.DictReader(f))
  for r in rows:
    for k in ("stragglers", "mu", "test_accuracy", "test_loss", "train_loss", "dissimilarity",
              "wall_time"):
      r[k] = float(r[k]) if r.get(k) not in (None, "") else float("nan")
    r["seed"], r["round"] = int(r["seed"]), int(r["round"])
  return rows


def _curves(rows):
  """{(algorithm, stragglers): {seed: (rounds, {metric: values})}}."""
  by = defaultdict(lambda: defaultdict(list))
  for r in rows:
    by[(r["algorithm"], r["stragglers"])][r["seed"]].append(r)
  out = {}
  for key, seeds in by.items():
    out[key] = {}
    for seed, rs in seeds.items():
      rs = sorted(rs, key=lambda r: r["round"])
      out[key][seed] = ([r["round"] for r in rs],
                        {m: np.array([r[m] for r in rs]) for m in
                         ("test_accuracy", "train_loss", "dissimilarity")})
  return out


def summary_table(rows) -> list:
  """Per (algorithm, stragglers): final/best accuracy mean and std over seeds, rounds to 80/90 %."""
  table = []
  for (algorithm, stragglers), seeds in sorted(_curves(rows).items(),
                                               key=lambda kv: (kv[0][1], list(LABELS).index(kv[0][0])
                                                               if kv[0][0] in LABELS else 9)):
    final = np.array([m["test_accuracy"][-1] for _, m in seeds.values()])
    best = np.array([m["test_accuracy"].max() for _, m in seeds.values()])
    entry = {"algorithm": algorithm, "stragglers": stragglers, "seeds": len(seeds),
             "final_accuracy_mean": float(final.mean()), "final_accuracy_std": float(final.std()),
             "best_accuracy_mean": float(best.mean()), "best_accuracy_std": float(best.std())}
    for th in THRESHOLDS:
      reached = [rounds[int(np.argmax(m["test_accuracy"] >= th))]
                 for rounds, m in seeds.values() if (m["test_accuracy"] >= th).any()]
      entry[f"rounds_to_{int(th * 100)}"] = float(np.mean(reached)) if reached else None
      entry[f"seeds_reaching_{int(th * 100)}"] = len(reached)
    table.append(entry)
  return table


def format_markdown(table) -> str:
  lines = ["| stragglers | algorithm | final accuracy | best accuracy | rounds to 80 % | "
           "rounds to 90 % |", "|---:|---|---|---|---|---|"]
  for e in table:
    def reach(th):
      r = e[f"rounds_to_{th}"]
      return "never" if r is None else f"{r:.0f} ({e[f'seeds_reaching_{th}']}/{e['seeds']} seeds)"
    lines.append(f"| {e['stragglers']:g} | {LABELS.get(e['algorithm'], e['algorithm'])} | "
                 f"{e['final_accuracy_mean']:.4f} ± {e['final_accuracy_std']:.4f} | "
                 f"{e['best_accuracy_mean']:.4f} ± {e['best_accuracy_std']:.4f} | "
                 f"{reach(80)} | {reach(90)} |")
  return "\n".join(lines) + "\n"


def plot_figure1(rows, path: str, title: str = "") -> None:
  """Columns = straggler levels; rows = training loss, test accuracy (and dissimilarity);
  one line per algorithm (mean over seeds), the seeds' min-max band shaded."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  curves = _curves(rows)
  levels = sorted({s for _, s in curves})
  metrics = ["train_loss", "test_accuracy"]
  if any(not np.isnan(r["dissimilarity"]) for r in rows):
    metrics.append("dissimilarity")
  fig, axes = plt.subplots(len(metrics), len(levels), figsize=(4.2 * len(levels),
                                                                3.2 * len(metrics)),
                           squeeze=False, sharex=True)
  for col, level in enumerate(levels):
    for algorithm in LABELS:
      if (algorithm, level) not in curves:
        continue
      seeds = curves[(algorithm, level)]
      rounds = next(iter(seeds.values()))[0]
      for row, metric in enumerate(metrics):
        values = np.stack([m[metric] for _, m in seeds.values()])
        ax = axes[row, col]
        ax.plot(rounds, values.mean(0), color=COLORS[algorithm], label=LABELS[algorithm])
        ax.fill_between(rounds, values.min(0), values.max(0), color=COLORS[algorithm], alpha=0.2)
    axes[0, col].set_title(f"{level:.0%} stragglers")
    axes[-1, col].set_xlabel("round")
  names = {"train_loss": "training loss", "test_accuracy": "test accuracy",
           "dissimilarity": "gradient dissimilarity"}
  for row, metric in enumerate(metrics):
    axes[row, 0].set_ylabel(names[metric])
    for ax in axes[row]:
      ax.grid(alpha=0.3)
  axes[0, 0].legend()
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def redraw(workdir: str, title: str = "") -> list:
  """Writes summary.md and figure1.png of ``workdir`` from its results.csv; returns the table."""
  rows = read_results_csv(os.path.join(workdir, "results.csv"))
  table = summary_table(rows)
  with open(os.path.join(workdir, "summary.md"), "w") as f:
    f.write(format_markdown(table))
  plot_figure1(rows, os.path.join(workdir, "figure1.png"), title)
  return table


def write_sweep_outputs(workdir: str, specs, results: dict, title: str = "") -> list:
  write_results_csv(os.path.join(workdir, "results.csv"), specs, results)
  return redraw(workdir, title)


def main(argv):
  if len(argv) != 2 or not os.path.exists(os.path.join(argv[1], "results.csv")):
    print("usage: python -m fedprox_jax.plots WORKDIR   (a finished sweep's workdir, which "
          "holds results.csv)", file=sys.stderr)
    return 2
  table = redraw(argv[1])
  print(format_markdown(table))
  print(f"wrote {os.path.join(argv[1], 'figure1.png')} and summary.md")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
