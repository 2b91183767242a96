"""NIID-Bench's partitions against their source's rules (Xtra-Computing/NIID-Bench utils.py
``partition_data``): label sets for #C = k, Dirichlet shares, minimum sizes, determinism."""

import numpy as np
import pytest

from fedprox_jax.data import partition


def _labels(per_class=500, seed=0):
  return np.random.default_rng(seed).permutation(np.repeat(np.arange(10), per_class))


def _check_complete(p, n):
  assert sorted(p.order.tolist()) == list(range(n)), "every example in exactly one client"
  np.testing.assert_array_equal(p.offsets, np.concatenate([[0], np.cumsum(p.sizes)[:-1]]))


@pytest.mark.parametrize("k", [1, 2, 3, 10])
def test_label_count_label_sets(k):
  labels = _labels()
  p = partition.label_count_partition(labels, num_clients=20, labels_per_client=k, seed=3)
  _check_complete(p, len(labels))
  held = [set(labels[p.order[o:o + n]].tolist()) for o, n in zip(p.offsets, p.sizes)]
  holders = np.zeros(10, int)
  for i, h in enumerate(held):
    assert len(h) == k and i % 10 in h, (i, h)  # client i holds label i mod 10 and k - 1 more
    for label in h:
      holders[label] += 1
  # Each label split equally (array_split) over its holders.
  for label in range(10):
    sizes = [int(np.sum(labels[p.order[o:o + n]] == label))
             for o, n, h in zip(p.offsets, p.sizes, held) if label in h]
    assert len(sizes) == holders[label] and max(sizes) - min(sizes) <= 1


def test_dirichlet_label_minimum_balance_and_skew():
  labels = _labels()
  p = partition.dirichlet_label_partition(labels, num_clients=10, beta=0.5, seed=1)
  _check_complete(p, len(labels))
  assert p.sizes.min() >= partition.NIID_BENCH_MIN_SIZE
  counts = np.stack([np.bincount(labels[p.order[o:o + n]], minlength=10)
                     for o, n in zip(p.offsets, p.sizes)])
  # beta = 0.5 is skewed: some client's largest label is most of its data.
  assert (counts.max(axis=1) / counts.sum(axis=1)).max() > 0.5
  # A large beta approaches an even split of every label.
  even = partition.dirichlet_label_partition(labels, num_clients=10, beta=1e4, seed=1)
  counts = np.stack([np.bincount(labels[even.order[o:o + n]], minlength=10)
                     for o, n in zip(even.offsets, even.sizes)])
  assert np.abs(counts - 50).max() <= 5


def test_dirichlet_label_follows_the_source_procedure():
  """The source's loop, written again from utils.py with the same generator: same clients."""
  labels, num_clients, beta, seed = _labels(100), 7, 0.3, 5
  rng = np.random.default_rng(seed)
  n = len(labels)
  min_size = 0
  while min_size < 10:
    idx_batch = [[] for _ in range(num_clients)]
    for k in range(10):
      idx_k = np.where(labels == k)[0]
      rng.shuffle(idx_k)
      proportions = rng.dirichlet(np.repeat(beta, num_clients))
      proportions = np.array([p * (len(idx_j) < n / num_clients)
                              for p, idx_j in zip(proportions, idx_batch)])
      proportions = proportions / proportions.sum()
      proportions = (np.cumsum(proportions) * len(idx_k)).astype(int)[:-1]
      idx_batch = [idx_j + idx.tolist() for idx_j, idx in zip(idx_batch, np.split(idx_k, proportions))]
      min_size = min(len(idx_j) for idx_j in idx_batch)
  for j in range(num_clients):
    rng.shuffle(idx_batch[j])
  p = partition.dirichlet_label_partition(labels, num_clients, beta, seed)
  for j in range(num_clients):
    np.testing.assert_array_equal(p.order[p.offsets[j]:p.offsets[j] + p.sizes[j]], idx_batch[j])


def test_dirichlet_quantity_sizes():
  p = partition.dirichlet_quantity_partition(5000, num_clients=10, beta=0.5, seed=2)
  _check_complete(p, 5000)
  assert p.sizes.min() >= 10 and p.sizes.max() > 2 * p.sizes.min()  # skewed sizes
  rng = np.random.default_rng(2)
  order = rng.permutation(5000)
  while True:
    shares = rng.dirichlet(np.repeat(0.5, 10))
    if np.min(shares / shares.sum() * 5000) >= 10:
      break
  expected = np.split(order, (np.cumsum(shares / shares.sum()) * 5000).astype(int)[:-1])
  np.testing.assert_array_equal(p.sizes, [len(e) for e in expected])
  np.testing.assert_array_equal(p.order, np.concatenate(expected))


@pytest.mark.parametrize("make", [
    lambda s: partition.dirichlet_label_partition(_labels(), 10, 0.5, s),
    lambda s: partition.label_count_partition(_labels(), 10, 2, s),
    lambda s: partition.dirichlet_quantity_partition(5000, 10, 0.5, s)])
def test_deterministic_per_seed(make):
  a, b, c = make(4), make(4), make(5)
  np.testing.assert_array_equal(a.order, b.order)
  np.testing.assert_array_equal(a.sizes, b.sizes)
  assert not np.array_equal(a.order, c.order)


@pytest.mark.parametrize("call, message", [
    (lambda: partition.dirichlet_label_partition(_labels(), 10, 0.0), "dirichlet_beta=0.0"),
    (lambda: partition.dirichlet_quantity_partition(5000, 10, -1.0), "dirichlet_beta=-1.0"),
    (lambda: partition.label_count_partition(_labels(), 10, 11), "labels_per_client=11"),
    (lambda: partition.dirichlet_label_partition(_labels(1), 10, 0.5), "num_clients=10"),
])
def test_bad_inputs(call, message):
  with pytest.raises(ValueError, match=message):
    call()


def test_stats_count_labels_per_client():
  labels = _labels()
  p = partition.label_count_partition(labels, 10, 3, seed=0)
  stats = partition.partition_stats(p, labels)
  assert stats["labels_per_client_min"] == stats["labels_per_client_max"] == 3
  counts = np.array(stats["label_counts"])
  assert counts.shape == (10, 10) and counts.sum() == len(labels)
  assert ((counts > 0).sum(axis=1) == 3).all()


def test_splits_are_a_sweep_axis_of_data_sets():
  """sweep.splits: each split a data set of its own (its partition fields), in the names, and
  bad splits one line each."""
  from configs import niid_bench
  from fedprox_jax.errors import ConfigError
  from fedprox_jax.run import config as config_lib, grid as grid_lib
  c = config_lib.resolve(niid_bench.get_config("reduced"))
  grid = grid_lib.experiment_grid(c)
  assert len(grid) == 5 * 4 * 3
  assert {p.federation for p in grid} == {"iid", "labeldir0.5", "label1", "label2", "label3"}
  assert grid[0].name == "iid_fedavg_s0_seed0_p0"
  label2 = grid_lib.data_config(c, config_lib.split_fields("label2"), 1)
  assert (label2.partition, label2.labels_per_client, label2.partition_seed) == (
      "label_count", 2, 1)
  quantity = grid_lib.data_config(c, config_lib.split_fields("quantity0.3"), 0)
  assert (quantity.partition, quantity.dirichlet_beta) == ("quantity", 0.3)
  for bad, match in (("label11", "k must be from 1 to 10"), ("labeldir0", "beta must be"),
                     ("dirichlet", "is not a split"), ("labelx", "is not a split")):
    c = niid_bench.get_config("reduced")
    c.sweep.splits = bad
    with pytest.raises(ConfigError, match=match):
      config_lib.resolve(c)
