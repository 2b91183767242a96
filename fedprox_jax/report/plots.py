"""A sweep's Figure-1-style figures and summary.md, a run's metrics.png; re-drawable from a
workdir (the tables: ``report/results.py``).

  python -m fedprox_jax.report.plots WORKDIR     # re-draws a sweep's figures and summary.md from results.csv
"""

from __future__ import annotations

import os
import sys

import numpy as np

from fedprox_jax import outputs
from fedprox_jax.errors import UserError
from fedprox_jax.report import results as results_lib

COLORS = {"fedavg": "tab:green", "fedprox_mu0": "tab:blue", "fedprox": "tab:red",
          "fedprox_adaptive": "tab:purple"}
MORE_COLORS = ("tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")
# Dashed: without stragglers FedAvg and FedProx (mu=0) are the same run, and their lines coincide.
STYLES = {"fedprox_mu0": "--"}

METRIC_NAMES = {"global_train_loss": "training loss (global model)",
                "test_accuracy": "test accuracy", "dissimilarity": "gradient dissimilarity",
                "mu": "mu"}


def _draw_panels(curves, columns, path: str, title: str, metrics: list) -> None:
  """One column per (label, federation, stragglers) of ``columns``; one row per metric; one line
  per algorithm (mean over its runs: partitions x seeds), the runs' min-max band shaded."""
  fig = outputs.new_figure(figsize=(4.2 * len(columns), 3.2 * len(metrics)))
  axes = fig.subplots(len(metrics), len(columns), squeeze=False, sharex=True)
  algorithms = sorted({a for _, a, _ in curves}, key=results_lib.algorithm_order)
  colors = dict(COLORS)
  for extra, color in zip([a for a in algorithms if a not in COLORS], MORE_COLORS * 9):
    colors[extra] = color
  for col, (title_of_column, federation, level) in enumerate(columns):
    for algorithm in algorithms:
      runs = curves.get((federation, algorithm, level))
      if not runs:
        continue
      rounds = next(iter(runs.values()))[0]
      for row, metric in enumerate(metrics):
        values = np.stack([m[metric] for _, m in runs.values()])
        ax = axes[row, col]
        ax.plot(rounds, values.mean(0), color=colors[algorithm], label=results_lib.label(algorithm),
                linestyle=STYLES.get(algorithm, "-"))
        ax.fill_between(rounds, values.min(0), values.max(0), color=colors[algorithm], alpha=0.2)
    axes[0, col].set_title(title_of_column)
    axes[-1, col].set_xlabel("round")
  for row, metric in enumerate(metrics):
    axes[row, 0].set_ylabel(METRIC_NAMES[metric])
    for ax in axes[row]:
      ax.grid(alpha=0.3)
  axes[0, 0].legend()
  fig.suptitle(title)
  fig.tight_layout()
  outputs.save_figure(fig, path)


def figure_paths(rows, workdir: str) -> list:
  """The figures a sweep's rows make: figure1.png (one federation: a column per straggler
  level, as the paper's Figure 1), else heterogeneity_stragglers{level}.png (a column per
  federation, as its Figure 2), one per level."""
  federations = sorted({r["federation"] for r in rows})
  if len(federations) <= 1:
    return [os.path.join(workdir, "figure1.png")]
  return [os.path.join(workdir, f"heterogeneity_stragglers{level:g}.png")
          for level in sorted({r["stragglers"] for r in rows})]


def plot_sweep(rows, workdir: str, title: str = "") -> list:
  """Draws ``figure_paths(rows, workdir)``; returns them."""
  curves = results_lib.run_curves(rows)
  if not curves:
    return []  # every experiment diverged: nothing to draw
  metrics = ["test_accuracy"]
  if any(not np.isnan(r["global_train_loss"]) for r in rows):  # sweep.global_train_loss
    metrics.insert(0, "global_train_loss")
  if any(not np.isnan(r["dissimilarity"]) for r in rows):
    metrics.append("dissimilarity")
  if any(r["algorithm"] == "fedprox_adaptive" for r in rows):
    metrics.append("mu")
  federations = sorted({f for f, _, _ in curves}, key=results_lib.federation_order)
  levels = sorted({s for _, _, s in curves})
  paths = figure_paths(rows, workdir)
  if len(federations) <= 1:
    fed = federations[0]
    _draw_panels(curves, [(f"{level:.0%} stragglers", fed, level) for level in levels],
                 paths[0], ": ".join(filter(None, [fed, title])), metrics)
    return paths
  for path, level in zip(paths, levels):
    _draw_panels(curves, [(f, f, level) for f in federations], path,
                 "; ".join(filter(None, [title, f"{level:.0%} stragglers"])), metrics)
  return paths


def _with_gaps(rounds, values, step: int):
  """NaN between rows more than ``step`` rounds apart, so a line never bridges missing rounds."""
  xs, ys = [], []
  for i, (x, y) in enumerate(zip(rounds, values)):
    if i and x - rounds[i - 1] > step:
      xs.append(np.nan)
      ys.append(np.nan)
    xs.append(x)
    ys.append(np.nan if y is None else y)
  return xs, ys


def plot_metrics(rows: list, path: str, title: str = "", eval_every: int = 1) -> None:
  """A single run's test accuracy and losses vs round, as a PNG (gaps where rounds are
  missing or the local loss is undefined because every client was dropped)."""
  rounds = [r["round"] for r in rows]
  # Rows come every eval_every rounds (and at the last round, which is closer).
  line = lambda key: _with_gaps(rounds, [r.get(key) for r in rows], eval_every)
  fig = outputs.new_figure(figsize=(10, 4))
  ax_acc, ax_loss = fig.subplots(1, 2)
  ax_acc.plot(*line("test_accuracy"), marker="." if len(rows) < 30 else None)
  ax_acc.set(xlabel="round", ylabel="test accuracy", ylim=(0, 1))
  ax_loss.plot(*line("test_loss"), label="test loss (global model)")
  ax_loss.plot(*line("local_train_loss"), label="local train loss (sampled clients)")
  ax_loss.set(xlabel="round", ylabel="cross-entropy")
  ax_loss.legend()
  for ax in (ax_acc, ax_loss):
    ax.grid(alpha=0.3)
  fig.suptitle(title)
  fig.tight_layout()
  outputs.save_figure(fig, path)


def sweep_title(c: dict) -> str:
  """A sweep's figure title from its config (as a dict)."""
  if c.get("data", "mnist") == "synthetic":
    return f"synthetic federations, {c['model']}, mu={c['sweep']['mu']}"
  return f"{c['model']}, protocol={c['protocol']}, mu={c['sweep']['mu']}"


def _saved_config(workdir: str) -> dict:
  """The workdir's config.json for the figures' titles; {} (with a warning) when it is
  missing or damaged: the figures do not need it."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return {}
  try:
    c = outputs.read_json(path)
    if not isinstance(c, dict):
      raise ValueError(f"it holds a JSON {type(c).__name__}, not an object")
    sweep_title(c)  # the fields a title needs
    return c
  except (OSError, ValueError, KeyError, TypeError) as e:
    print(f"warning: {path} is damaged ({type(e).__name__}: {e}): figures drawn without its "
          "title", file=sys.stderr)
    return {}


def redraw(workdir: str, title: str = "") -> list:
  """Writes summary.md and the figures of ``workdir`` from its results.csv; returns the table.
  The title defaults to the one of the sweep's config.json."""
  rows = results_lib.read_results_csv(os.path.join(workdir, "results.csv"))
  c = _saved_config(workdir) if not title else {}
  if c:
    title = sweep_title(c)
  table = results_lib.summary_table(rows)
  with outputs.atomic_write(os.path.join(workdir, "summary.md")) as f:
    f.write(results_lib.format_markdown(table))
  plot_sweep(rows, workdir, title)
  return table


def write_sweep_outputs(workdir: str, specs, results: dict, diverged: dict,
                        title: str = "") -> list:
  results_lib.write_results_csv(os.path.join(workdir, "results.csv"), specs, results, diverged)
  return redraw(workdir, title)


def redraw_run(workdir: str) -> str:
  """Re-draws a single run's metrics.png from its metrics.jsonl; returns the PNG's path."""
  c = _saved_config(workdir)
  try:
    rows = outputs.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    rows = [{**r, "round": int(r["round"]), "test_accuracy": float(r["test_accuracy"])}
            for r in rows]
  except (KeyError, TypeError, ValueError) as e:
    raise UserError(f"{workdir}/metrics.jsonl is damaged ({type(e).__name__}: {e})") from e
  if not rows:
    raise UserError(f"{workdir}/metrics.jsonl holds no rows yet")
  path = os.path.join(workdir, "metrics.png")
  plot_metrics(rows, path, f"{c.get('variant', '')}: {c.get('model', '')}, mu={c.get('mu')}, "
               f"stragglers={c.get('stragglers_fraction')}", c.get("eval_every", 1))
  return path


def main(argv):
  usage = ("usage: python -m fedprox_jax.report.plots WORKDIR   (a sweep's workdir, which holds "
           "results.csv, or a run's, which holds metrics.jsonl)")
  if len(argv) == 2 and argv[1] in ("-h", "--help"):
    print(__doc__.strip() + "\n\n" + usage)
    return 0
  if len(argv) != 2 or argv[1].startswith("-"):
    print(usage, file=sys.stderr)
    return 2
  workdir = argv[1]
  if not os.path.isdir(workdir):
    print(f"error: {workdir} is not a directory. " + usage, file=sys.stderr)
    return 2
  try:
    unfinished = (os.path.exists(os.path.join(workdir, "rows.jsonl"))
                  and not os.path.exists(os.path.join(workdir, "summary.json")))
    if unfinished:  # a killed sweep: results.csv is written at its end
      print(f"error: {workdir} holds an unfinished sweep: resume it (the same command with "
            f"--workdir={workdir}); its figures are drawn when it ends", file=sys.stderr)
      return 2
    if os.path.exists(os.path.join(workdir, "results.csv")):
      table = redraw(workdir)
      print(results_lib.format_markdown(table))
      rows = results_lib.read_results_csv(os.path.join(workdir, "results.csv"))
      print(f"wrote {', '.join(figure_paths(rows, workdir))} and summary.md")
    elif os.path.exists(os.path.join(workdir, "metrics.jsonl")):
      print(f"wrote {redraw_run(workdir)}")
    elif os.path.exists(os.path.join(workdir, "config.json")):
      print(f"error: {workdir} holds an unfinished sweep with no rows yet: resume it (the same "
            f"command with --workdir={workdir}), then draw its figures", file=sys.stderr)
      return 2
    else:
      print(f"error: {workdir} holds neither results.csv nor metrics.jsonl. " + usage,
            file=sys.stderr)
      return 2
  except (UserError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
