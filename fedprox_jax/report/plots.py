"""A sweep's results table, summary and Figure-1-style plot; re-drawable from a workdir.

  python -m fedprox_jax.report.plots WORKDIR     # re-draws a sweep's figures and summary.md from results.csv
"""

from __future__ import annotations

import csv
import os
import sys
from collections import defaultdict

import numpy as np

from fedprox_jax import outputs
from fedprox_jax.core.algorithms import FIXED_MU_PREFIX  # fedprox_mu<value>: FedProx with that mu
from fedprox_jax.errors import UserError
from fedprox_jax.report import statistics

FIELDS = ("experiment", "federation", "partition", "algorithm", "stragglers", "seed", "mu",
          "round",
          "test_accuracy",
          "test_loss", "global_train_loss", "local_train_loss", "dissimilarity", "b_dissimilarity", "gamma_mean", "gamma_max",
          "num_stragglers",
          "diverged_at_round", "wall_time")
FLOAT_FIELDS = ("stragglers", "mu", "test_accuracy", "test_loss", "global_train_loss",
                "local_train_loss", "dissimilarity", "b_dissimilarity", "gamma_mean",
                "gamma_max", "wall_time")
LABELS = {"fedavg": "FedAvg", "fedprox_mu0": "FedProx (mu=0)", "fedprox": "FedProx (mu>0)",
          "fedprox_adaptive": "FedProx (adaptive mu)"}
COLORS = {"fedavg": "tab:green", "fedprox_mu0": "tab:blue", "fedprox": "tab:red",
          "fedprox_adaptive": "tab:purple"}
MORE_COLORS = ("tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")


# The successors (core/algorithms.py), after FedProx's columns.
SUCCESSOR_LABELS = {"scaffold": "SCAFFOLD", "fednova": "FedNova", "fedavgm": "FedAvgM",
                    "fedadam": "FedAdam", "fedyogi": "FedYogi", "fedadagrad": "FedAdagrad"}


def label(algorithm: str) -> str:
  if algorithm in LABELS:
    return LABELS[algorithm]
  if algorithm in SUCCESSOR_LABELS:
    return SUCCESSOR_LABELS[algorithm]
  if algorithm.startswith(FIXED_MU_PREFIX):
    return f"FedProx (mu={algorithm[len(FIXED_MU_PREFIX):]})"
  return algorithm


def algorithm_order(algorithm: str) -> tuple:
  """The named algorithms in LABELS' order, then the fixed-mu ones by mu, the successors, then
  the rest."""
  if algorithm in LABELS:
    return (0, list(LABELS).index(algorithm), "")
  if algorithm in SUCCESSOR_LABELS:
    return (2, list(SUCCESSOR_LABELS).index(algorithm), "")
  try:
    return (1, float(algorithm[len(FIXED_MU_PREFIX):]), "")
  except ValueError:
    return (3, 0.0, algorithm)
# Dashed: without stragglers FedAvg and FedProx (mu=0) are the same run, and their lines coincide.
STYLES = {"fedprox_mu0": "--"}
THRESHOLDS = (0.8, 0.9)


def write_results_csv(path: str, specs, results: dict, diverged: dict) -> None:
  """One row per (experiment, evaluated round). An experiment that diverged has its finite
  rows, then one row at the round it diverged at with no metrics; ``diverged_at_round`` is set
  on all its rows (empty for the others)."""
  with outputs.atomic_write(path) as f:
    writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
    writer.writeheader()
    for s in specs:
      # mu: the experiment's (an adaptive one's first); each row's own mu replaces it.
      spec = {"experiment": s.name, "federation": s.federation, "partition": s.partition,
              "algorithm": s.algorithm, "stragglers": s.stragglers_fraction, "seed": s.seed,
              "mu": s.mu}
      for row in results[s.name]:
        writer.writerow({**spec, "diverged_at_round": diverged.get(s.name, ""),
                         **{k: "" if row[k] is None else row[k] for k in FIELDS if k in row}})
      if s.name in diverged:
        writer.writerow({**spec, "round": diverged[s.name],
                         "diverged_at_round": diverged[s.name]})


def read_results_csv(path: str) -> list:
  try:
    with open(path) as f:
      rows = list(csv.DictReader(f))
    for r in rows:
      for k in FLOAT_FIELDS:
        r[k] = float(r[k]) if r.get(k) not in (None, "") else float("nan")
      r["seed"], r["round"] = int(r["seed"]), int(r["round"])
      r["diverged_at_round"] = int(r["diverged_at_round"]) if r.get("diverged_at_round") else None
      r["federation"] = r.get("federation") or ""  # results.csv of MNIST sweeps before it
      # (results.csv before 2026-12-02 had no partition column: one partition, the config's)
      r["partition"] = int(r["partition"]) if r.get("partition") not in (None, "") else None
      if not r["algorithm"] or not r["experiment"]:
        raise ValueError("a row without its experiment or algorithm")
  except (KeyError, ValueError, TypeError, csv.Error) as e:
    raise UserError(f"{path} is damaged ({type(e).__name__}: {e}): re-run the sweep into a new "
                    "workdir, or restore the file") from e
  if not rows:
    raise UserError(f"{path} holds no results: re-run the sweep into a new workdir")
  return rows


def run_curves(rows):
  """{(federation, algorithm, stragglers): {(partition, seed): (rounds, {metric: values})}} of
  the experiments that did not diverge."""
  by = defaultdict(lambda: defaultdict(list))
  for r in rows:
    if r["diverged_at_round"] is None:
      by[(r["federation"], r["algorithm"], r["stragglers"])][(r["partition"], r["seed"])].append(r)
  out = {}
  for key, runs in by.items():
    out[key] = {}
    for run, rs in runs.items():
      rs = sorted(rs, key=lambda r: r["round"])
      out[key][run] = ([r["round"] for r in rs],
                       {m: np.array([r[m] for r in rs]) for m in
                        ("test_accuracy", "global_train_loss", "dissimilarity", "mu")})
  return out


def _diverged_runs(rows) -> dict:
  """{(federation, algorithm, stragglers): number of (partition, seed) runs that diverged}."""
  seen = {(r["federation"], r["algorithm"], r["stragglers"], r["partition"], r["seed"])
          for r in rows if r["diverged_at_round"] is not None}
  counts = defaultdict(int)
  for *key, _, _ in seen:
    counts[tuple(key)] += 1
  return counts


BASELINE = "fedavg"  # what the gains are measured against, run by run
# The table's per-run numbers: name -> (rounds, metrics) -> value.
RUN_STATISTICS = {
    "final_accuracy": lambda rounds, m: float(m["test_accuracy"][-1]),
    "last10_accuracy": lambda rounds, m: statistics.last_rounds_mean(rounds, m["test_accuracy"]),
    "best_accuracy": lambda rounds, m: float(m["test_accuracy"].max()),
    "final_train_loss": lambda rounds, m: float(m["global_train_loss"][-1]),
}


def summary_table(rows) -> list:
  """Per (federation, algorithm, stragglers), over its (partition, seed) runs that did not
  diverge (``statistics.spread``: mean, sample std with ddof 1, the std over partitions and
  over seeds): final accuracy, the mean accuracy of the last 10 rounds, best accuracy, final
  global training loss; the gain of the last-10 mean over FedAvg's, paired by (partition,
  seed); the mean rounds to 80/90 % over the runs that reach it; and how many runs diverged."""
  curves, diverged = run_curves(rows), _diverged_runs(rows)
  order = lambda key: (_federation_order(key[0]), key[2], algorithm_order(key[1]))
  table = []
  for key in sorted(set(curves) | set(diverged), key=order):
    federation, algorithm, stragglers = key
    runs = curves.get(key, {})
    entry = {"federation": federation, "algorithm": algorithm, "stragglers": stragglers,
             "runs": len(runs), "runs_diverged": diverged.get(key, 0)}
    for name, statistic in RUN_STATISTICS.items():
      values = {run: statistic(rounds, m) for run, (rounds, m) in runs.items()}
      if values and not all(np.isnan(v) for v in values.values()):  # NaN: not logged
        entry[name] = statistics.spread(values)
    baseline = curves.get((federation, BASELINE, stragglers), {})
    paired = sorted(set(runs) & set(baseline))
    if algorithm != BASELINE and paired:
      # The same partition and seed: the same clients, stragglers and data orders each round.
      last10 = RUN_STATISTICS["last10_accuracy"]
      entry["last10_gain_over_fedavg"] = statistics.spread(
          {run: last10(*runs[run]) - last10(*baseline[run]) for run in paired})
    for th in THRESHOLDS:
      reached = [r for r in (statistics.rounds_to_target(rounds, m["test_accuracy"], th)
                             for rounds, m in runs.values()) if r is not None]
      entry[f"rounds_to_{int(th * 100)}"] = float(np.mean(reached)) if reached else None
      entry[f"runs_reaching_{int(th * 100)}"] = len(reached)
    table.append(entry)
  return table


def format_markdown(table) -> str:
  with_federation = any(e["federation"] for e in table)
  lead = "| federation " if with_federation else ""
  lines = [lead + "| stragglers | algorithm | runs | final accuracy | mean of last 10 rounds | "
           "std of it over partitions | over seeds | minus FedAvg's (paired) | best accuracy | "
           "final training loss | rounds to 80 % | rounds to 90 % |",
           ("|---" if with_federation else "")
           + "|---:|---|---:|---|---|---|---|---|---|---|---|---|"]
  runs = set()
  for e in table:
    start = (f"| {e['federation']} " if with_federation else "") + (
        f"| {e['stragglers']:g} | {label(e['algorithm'])} | ")
    diverged = f" ({e['runs_diverged']} diverged)" if e["runs_diverged"] else ""
    if not e["runs"]:
      lines.append(start + f"0{diverged} | diverged | | | | | | | | |")
      continue
    runs.add((e["final_accuracy"]["partitions"], e["final_accuracy"]["seeds"], e["runs"]))

    def reach(th):
      r = e[f"rounds_to_{th}"]
      return "never" if r is None else f"{r:.0f} ({e[f'runs_reaching_{th}']}/{e['runs']} runs)"

    def part(name):
      v = e["last10_accuracy"][name]
      return "–" if v is None else f"{v:.4f}"
    band = lambda name: statistics.format_band(e[name])
    gain = e.get("last10_gain_over_fedavg")
    gain = "–" if gain is None else (f"{'+' if gain['mean'] >= 0 else ''}"
                                     f"{statistics.format_band(gain)}")
    lines.append(start + f"{e['runs']}{diverged} | {band('final_accuracy')} | "
                 f"{band('last10_accuracy')} | {part('std_over_partitions')} | "
                 f"{part('std_over_seeds')} | {gain} | {band('best_accuracy')} | "
                 f"{band('final_train_loss') if 'final_train_loss' in e else '–'} | "
                 f"{reach(80)} | {reach(90)} |")
  over = "; ".join(statistics.describe_runs(*r) for r in sorted(runs))
  notes = [f"Mean ± sample std (ddof {statistics.DDOF}) over the runs that did not diverge"
           + (f": {over}" if over else "") + ". The mean of the last 10 rounds averages the "
           "evaluations in the last 10 rounds of each run; its spread is split into the std of "
           "the per-partition means and the pooled std over seeds within a partition (– where "
           "there is one partition, or one seed per partition). Minus FedAvg's: the difference of "
           "the last-10 means run by run (the same partition and seed: the same clients, "
           "stragglers and data orders), mean ± std. Rounds to 80/90 %: the mean over the runs "
           "that reach it."]
  return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


METRIC_NAMES = {"global_train_loss": "training loss (global model)",
                "test_accuracy": "test accuracy", "dissimilarity": "gradient dissimilarity",
                "mu": "mu"}


def _draw_panels(curves, columns, path: str, title: str, metrics: list) -> None:
  """One column per (label, federation, stragglers) of ``columns``; one row per metric; one line
  per algorithm (mean over its runs: partitions x seeds), the runs' min-max band shaded."""
  fig = outputs.new_figure(figsize=(4.2 * len(columns), 3.2 * len(metrics)))
  axes = fig.subplots(len(metrics), len(columns), squeeze=False, sharex=True)
  algorithms = sorted({a for _, a, _ in curves}, key=algorithm_order)
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
        ax.plot(rounds, values.mean(0), color=colors[algorithm], label=label(algorithm),
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
  curves = run_curves(rows)
  if not curves:
    return []  # every experiment diverged: nothing to draw
  metrics = ["test_accuracy"]
  if any(not np.isnan(r["global_train_loss"]) for r in rows):  # sweep.global_train_loss
    metrics.insert(0, "global_train_loss")
  if any(not np.isnan(r["dissimilarity"]) for r in rows):
    metrics.append("dissimilarity")
  if any(r["algorithm"] == "fedprox_adaptive" for r in rows):
    metrics.append("mu")
  federations = sorted({f for f, _, _ in curves}, key=_federation_order)
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


def _federation_order(name: str):
  """synthetic_iid first, then by (alpha, beta): the paper's left-to-right order."""
  parts = name.split("_")[1:]
  return (0, 0.0, 0.0) if parts == ["iid"] else (1, *(float(p) for p in parts)) \
      if len(parts) == 2 else (2, name)


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
  rows = read_results_csv(os.path.join(workdir, "results.csv"))
  c = _saved_config(workdir) if not title else {}
  if c:
    title = sweep_title(c)
  table = summary_table(rows)
  with outputs.atomic_write(os.path.join(workdir, "summary.md")) as f:
    f.write(format_markdown(table))
  plot_sweep(rows, workdir, title)
  return table


def write_sweep_outputs(workdir: str, specs, results: dict, diverged: dict,
                        title: str = "") -> list:
  write_results_csv(os.path.join(workdir, "results.csv"), specs, results, diverged)
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
      print(format_markdown(table))
      rows = read_results_csv(os.path.join(workdir, "results.csv"))
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
