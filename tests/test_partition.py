"""Partition invariants, determinism, the seed's exact statistics, and impossible requests."""

import gzip
import os

import numpy as np
import pytest

from fedprox_jax.data import partition
from helpers import SHARED_DATA


def _labels(per_class=600, seed=0):
  return np.random.default_rng(seed).permutation(np.repeat(np.arange(10), per_class))


def _check_covering(p, num_examples, complete):
  assert len(np.unique(p.order)) == len(p.order), "a training example is in two clients"
  assert p.order.min() >= 0 and p.order.max() < num_examples
  if complete:
    assert len(p.order) == num_examples
  np.testing.assert_array_equal(p.offsets, np.concatenate([[0], np.cumsum(p.sizes)[:-1]]))
  assert p.sizes.sum() == len(p.order)


def test_power_law_invariants():
  labels = _labels()
  p = partition.power_law_partition(labels, num_clients=100, labels_per_client=2,
                                    min_per_client=10, seed=1)
  _check_covering(p, len(labels), complete=False)
  assert np.all(p.sizes >= 10)
  for u, (o, n) in enumerate(zip(p.offsets, p.sizes)):
    held = set(labels[p.order[o:o + n]].tolist())
    assert held == {u % 10, (u + 1) % 10}
  assert p.sizes.max() > 5 * np.median(p.sizes), "sizes should follow a heavy-tailed law"
  # Only the truncation remainder (< 1 example per (client, slot) pair) is left out.
  assert len(labels) - p.sizes.sum() < 100 * 2


def test_power_law_is_deterministic_per_seed():
  labels = _labels()
  a = partition.power_law_partition(labels, 100, seed=3)
  b = partition.power_law_partition(labels, 100, seed=3)
  c = partition.power_law_partition(labels, 100, seed=4)
  np.testing.assert_array_equal(a.order, b.order)
  np.testing.assert_array_equal(a.sizes, b.sizes)
  assert not np.array_equal(a.sizes, c.sizes)


def test_iid_partition_is_an_equal_random_split():
  p = partition.iid_partition(1003, 10, seed=0)
  _check_covering(p, 1003, complete=True)
  assert set(p.sizes.tolist()) == {100, 101}
  assert not np.array_equal(p.order, np.arange(1003))
  np.testing.assert_array_equal(p.order, partition.iid_partition(1003, 10, seed=0).order)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_clients=100, labels_per_client=11), "labels_per_client=11 must be between 1 and 10"),
    (dict(num_clients=105), "must be a positive multiple of 10"),
    (dict(num_clients=100, labels_per_client=4, min_per_client=3), "min_per_client=3 must be >="),
    (dict(num_clients=2000), "needs 2000 examples of every label"),
])
def test_power_law_rejects_impossible_requests(kwargs, match):
  with pytest.raises(ValueError, match=match):
    partition.power_law_partition(_labels(per_class=100), **kwargs)


def test_iid_rejects_more_clients_than_examples():
  with pytest.raises(ValueError, match="num_clients=11 must be between 1 and"):
    partition.iid_partition(10, 11)


@pytest.mark.skipif(not os.path.isdir(SHARED_DATA), reason=f"MNIST not found at {SHARED_DATA}")
def test_seed_partition_statistics_on_mnist():
  """The seed baseline's published numbers for 1000 clients, numpy seed 42."""
  with gzip.open(os.path.join(SHARED_DATA, "mnist", "train-labels-idx1-ubyte.gz")) as f:
    labels = np.frombuffer(f.read()[8:], np.uint8)
  p = partition.power_law_partition(labels, 1000, seed=42)
  stats = partition.partition_stats(p, labels)
  assert stats["examples"] == 59083 and stats["min"] == 10 and stats["max"] == 3746
  assert round(stats["mean"]) == 59 and round(stats["std"]) == 173 and stats["median"] == 21
  assert stats["labels_per_client_min"] == stats["labels_per_client_max"] == 2
