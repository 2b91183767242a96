"""How skewed a power-law partition is, over many partition seeds (no training).

  python benchmarks/partition_skew.py [--seeds=1000] [--sigmas=2,1.5]

For each protocol's training pool (seed: the 60k training images; paper: the 70k pooled, as the
authors partition them) and each log-normal sigma, the std of the 1000 clients' sizes over
partition seeds 0 .. seeds - 1: its 5th / 50th / 95th percentiles, where the default
partition_seed 42 falls, and the paper's table (std 106 on MNIST). The partition is the one
the runs use (``data/partition.power_law_partition``), before any hold-out or 90/10 split.
"""

import os
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import DEFAULT_DATA_DIR, header  # noqa: E402
from fedprox_jax.data import mnist as data_lib  # noqa: E402
from fedprox_jax.data import partition  # noqa: E402
from fedprox_jax.data.mnist import PAPER_STATS  # noqa: E402

F = flags.FLAGS
flags.DEFINE_integer("seeds", 1000, "partition seeds 0 .. seeds - 1")
flags.DEFINE_string("sigmas", "2,1.5", "comma-separated log-normal sigmas")
flags.DEFINE_string("data_dir", DEFAULT_DATA_DIR, "the four MNIST IDX files")


def size_stds(labels, sigma: float, seeds: int) -> np.ndarray:
  return np.array([partition.power_law_partition(labels, 1000, 2, 10, sigma, seed).sizes.std()
                   for seed in range(seeds)])


def main(argv):
  del argv
  mnist = data_lib.load_mnist("idx", F.data_dir)
  pools = {"seed (60k)": mnist.train_labels,
           "paper (70k)": np.concatenate([mnist.train_labels, mnist.test_labels])}
  print(header())
  print(f"std of the 1000 client sizes over partition seeds 0..{F.seeds - 1}; the paper's "
        f"table: std {PAPER_STATS['std']}")
  print("| pool | sigma | 5th pct | median | 95th pct | seed 42 (its percentile) | seeds with "
        "std <= 106 |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  for name, labels in pools.items():
    for sigma in (float(s) for s in F.sigmas.split(",")):
      stds = size_stds(labels, sigma, F.seeds)
      at_42 = float(partition.power_law_partition(labels, 1000, 2, 10, sigma, 42).sizes.std())
      p5, p50, p95 = np.percentile(stds, [5, 50, 95])
      print(f"| {name} | {sigma:g} | {p5:.0f} | {p50:.0f} | {p95:.0f} | {at_42:.0f} "
            f"({np.mean(stds < at_42):.0%}) | {np.sum(stds <= PAPER_STATS['std'])} |")


if __name__ == "__main__":
  app.run(main)
