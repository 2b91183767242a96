"""The statistics a results table reports over runs that differ in partition and seed.

A result is conditioned on the partition as much as on the training seed (both sources draw a
new partition every run), so every spread here is over (partition, seed) runs, and is split
into the part that comes from the partitions and the part that comes from the seeds. Every
std is the sample std, ddof = 1 (``DDOF``); with one run there is none (None).
"""

from __future__ import annotations

import numpy as np

DDOF = 1
# Flower's published FedProx numbers are the mean test accuracy over rounds 91-100 of 100: one
# evaluation of an oscillating curve is a snapshot, the mean of the last 10 rounds is not.
LAST_ROUNDS = 10


def last_rounds_mean(rounds, values, window: int = LAST_ROUNDS) -> float:
  """Mean of ``values`` at the evaluated ``rounds`` in (last round - window, last round]."""
  rounds, values = np.asarray(rounds), np.asarray(values, np.float64)
  if not len(rounds):
    raise ValueError("no evaluated rounds")
  return float(values[rounds > rounds[-1] - window].mean())


def rounds_to_target(rounds, values, target: float) -> int | None:
  """The first evaluated round whose value is >= ``target``; None if none is."""
  reached = np.flatnonzero(np.asarray(values) >= target)
  return int(np.asarray(rounds)[reached[0]]) if len(reached) else None


def _std(values) -> float | None:
  return float(np.std(values, ddof=DDOF)) if len(values) > DDOF else None


def spread(by_run: dict) -> dict:
  """{(partition, seed): value} -> mean and std over all runs, and the two parts of the spread:

  * ``std_over_partitions``: the std of the per-partition means (each over its seeds); None
    with one partition.
  * ``std_over_seeds``: the pooled within-partition std, sqrt of the mean over partitions with
    two or more seeds of their variance over seeds; None when no partition has two seeds.
  """
  if not by_run:
    raise ValueError("no runs")
  values = np.array(list(by_run.values()), np.float64)
  per_partition = {}
  for (partition, _), v in by_run.items():
    per_partition.setdefault(partition, []).append(v)
  within = [np.var(v, ddof=DDOF) for v in per_partition.values() if len(v) > DDOF]
  return {"n": len(values), "mean": float(values.mean()), "std": _std(values),
          "partitions": len(per_partition),
          "seeds": len({seed for _, seed in by_run}),
          "std_over_partitions": _std([np.mean(v) for v in per_partition.values()]),
          "std_over_seeds": float(np.sqrt(np.mean(within))) if within else None}


def format_band(entry: dict, digits: int = 4) -> str:
  """'mean ± std' (the mean alone with one run)."""
  if entry["std"] is None:
    return f"{entry['mean']:.{digits}f}"
  return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def describe_runs(partitions: int, seeds: int, n: int) -> str:
  """What a table's runs are, e.g. '10 runs (10 partitions x 1 seed each)'."""
  plural = lambda k, word: f"{k} {word}{'s' * (k != 1)}"
  if partitions * seeds == n:
    return f"{plural(n, 'run')} ({plural(partitions, 'partition')} x {plural(seeds, 'seed')})"
  if partitions == seeds == n:
    return f"{plural(n, 'run')} ({n} partitions, each with a seed of its own)"
  return f"{plural(n, 'run')} over {plural(partitions, 'partition')} and {plural(seeds, 'seed')}"
