"""A sweep's results: results.csv (written and read back), the algorithms' names and order in
tables, and the summary table over (partition, seed) runs with its markdown.
"""

from __future__ import annotations

import csv
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
  order = lambda key: (federation_order(key[0]), key[2], algorithm_order(key[1]))
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


def federation_order(name: str):
  """synthetic_iid first, then by (alpha, beta): the paper's left-to-right order."""
  parts = name.split("_")[1:]
  return (0, 0.0, 0.0) if parts == ["iid"] else (1, *(float(p) for p in parts)) \
      if len(parts) == 2 else (2, name)
