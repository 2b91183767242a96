"""Splitting a labelled training set over clients: the seed's power-law non-IID rule, IID, and
NIID-Bench's label and quantity skews (Li, Diao, Chen, He 2022, ``partition_data`` of
Xtra-Computing/NIID-Bench ``utils.py``; Flower's ``baselines/niid_bench``).

A partition is an ``order`` over the training examples in which every client's examples are
contiguous, plus per-client ``offsets``/``sizes`` into it: the engine's (offset, size) ranges.
Examples no client holds (the power-law rule leaves a remainder) are not in ``order``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from fedprox_jax.errors import ConfigError

NUM_CLASSES = 10  # MNIST's: the default of the rules written for it
# How the training set is split over clients, by config.partition (``split``).
PARTITIONS = ("power_law", "iid", "labeldir", "label_count", "quantity")


class Partition(NamedTuple):
  order: np.ndarray    # [total] indices into the training set, client after client
  offsets: np.ndarray  # [num_clients] int32
  sizes: np.ndarray    # [num_clients] int32


def _from_client_lists(client_indices: list) -> Partition:
  sizes = np.array([len(c) for c in client_indices], np.int32)
  offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
  order = np.concatenate(client_indices).astype(np.int64)
  return Partition(order=order, offsets=offsets, sizes=sizes)


def from_sizes(sizes) -> Partition:
  """Examples already stored client after client (``sizes`` each): the identity order."""
  sizes = np.asarray(sizes, np.int32)
  offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
  return Partition(order=np.arange(int(sizes.sum()), dtype=np.int64), offsets=offsets,
                   sizes=sizes)


def power_law_partition(labels: np.ndarray, num_clients: int, labels_per_client: int = 2,
                        min_per_client: int = 10, sigma: float = 2.0,
                        seed: int = 42, num_classes: int = NUM_CLASSES) -> Partition:
  """The seed baseline's (Flower fedprox) non-IID split.

  Sort by label; client u holds labels (u + j) mod K (K = num_classes) for j <
  labels_per_client. Each client first gets min_per_client // labels_per_client examples of
  each of its labels; the rest of each class is split over the (client, label-slot) pairs holding it with log-normal(0, sigma)
  weights, truncated to whole examples. Examples are taken in order from each class's pool.
  """
  labels = np.asarray(labels)
  if not 1 <= labels_per_client <= num_classes:
    raise ValueError(f"labels_per_client={labels_per_client} must be between 1 and {num_classes}")
  if num_clients < 1 or num_clients % num_classes:
    raise ValueError(f"num_clients={num_clients} must be a positive multiple of {num_classes} "
                     "for the power-law split (each label is held by equally many clients); "
                     "use iid=True for other counts")
  per_label = min_per_client // labels_per_client
  if per_label < 1:
    raise ValueError(f"min_per_client={min_per_client} must be >= labels_per_client="
                     f"{labels_per_client} (each client needs at least one example per label)")
  by_label = np.argsort(labels, kind="stable")
  counts = np.bincount(labels, minlength=num_classes)
  holders = num_clients * labels_per_client // num_classes  # (client, slot) pairs per class
  needed = holders * per_label
  if np.any(counts < needed):
    raise ValueError(
        f"the power-law split needs {needed} examples of every label for its minimum "
        f"({num_clients} clients x {per_label} per label); the smallest label has "
        f"{counts.min()}. Lower num_clients or min_per_client.")
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  cursor = starts.copy()
  clients = [[] for _ in range(num_clients)]
  for u in range(num_clients):
    for j in range(labels_per_client):
      c = (u + j) % num_classes
      clients[u].append(by_label[cursor[c]:cursor[c] + per_label])
      cursor[c] += per_label
  rng = np.random.RandomState(seed)
  weights = rng.lognormal(0.0, sigma, (num_classes, num_clients // num_classes, labels_per_client))
  remaining = (counts - needed).reshape(-1, 1, 1)
  shares = remaining * weights / weights.sum(axis=(1, 2), keepdims=True)
  for u in range(num_clients):
    for j in range(labels_per_client):
      c = (u + j) % num_classes
      take = int(shares[c, u // num_classes, j])
      clients[u].append(by_label[cursor[c]:cursor[c] + take])
      cursor[c] += take
  return _from_client_lists([np.concatenate(c) for c in clients])


def hold_out(partition: Partition, fraction: float, seed: int) -> Partition:
  """Each client keeps n - int(n / (1 / fraction)) of its examples, a seeded random subset in
  random order; the rest is held out (the Flower baseline's per-client validation split,
  ``len_val = int(len(dataset) / (1 / val_ratio))``, which never trains). fraction 0 keeps all.
  Which examples are held out differs from Flower's (torch's generator); how many does not."""
  if fraction == 0:
    return partition
  rng = np.random.RandomState(seed)
  kept = []
  for o, n in zip(partition.offsets, partition.sizes):
    n_val = int(n / (1 / fraction))
    kept.append(rng.permutation(partition.order[o:o + n])[:max(n - n_val, 1)])
  return _from_client_lists(kept)


def split_each_client(partition: Partition, train_fraction: float, seed: int) -> tuple:
  """(train, test) partitions: each client's examples shuffled (seeded), its first
  int(train_fraction * n) train, the rest are its test examples (the authors' 90/10 split)."""
  rng = np.random.RandomState(seed)
  train, test = [], []
  for o, n in zip(partition.offsets, partition.sizes):
    own = rng.permutation(partition.order[o:o + n])
    n_train = int(train_fraction * n)
    train.append(own[:n_train])
    test.append(own[n_train:])
  return _from_client_lists(train), _from_client_lists(test)


def iid_partition(num_examples: int, num_clients: int, seed: int = 42) -> Partition:
  """A random split into equal parts (the first num_examples % num_clients clients get one more)."""
  if not 1 <= num_clients <= num_examples:
    raise ValueError(f"num_clients={num_clients} must be between 1 and the number of training "
                     f"examples ({num_examples})")
  perm = np.random.RandomState(seed).permutation(num_examples)
  return _from_client_lists(np.array_split(perm, num_clients))


# NIID-Bench's partitions, by their names there: homo (IID), noniid-labeldir (Dirichlet over each
# label's clients), noniid-#label<k> (k labels per client), iid-diff-quantity (Dirichlet sizes).
NIID_BENCH_MIN_SIZE = 10  # the minimum client size both Dirichlet rules redraw until they reach


def _seeded(seed: int) -> np.random.Generator:
  # One generator for every draw (NIID-Bench seeds numpy's global one and Python's `random`;
  # Flower's port uses np.random.default_rng(seed), as here).
  return np.random.default_rng(seed)


def dirichlet_label_partition(labels: np.ndarray, num_clients: int, beta: float,
                              seed: int = 42, min_size: int = NIID_BENCH_MIN_SIZE) -> Partition:
  """NIID-Bench's ``noniid-labeldir``: for each label, its examples (shuffled) are split over
  the clients by shares ~ Dirichlet(beta); a client already holding N / num_clients examples
  gets no share of the next labels (their "balance" rule); the whole draw is repeated until
  every client holds at least ``min_size`` examples. Each client's examples are shuffled."""
  labels = np.asarray(labels)
  if not (beta > 0 and np.isfinite(beta)):
    raise ValueError(f"dirichlet_beta={beta} must be a finite number > 0 (smaller: more skew; "
                     "NIID-Bench uses 0.5)")
  n = len(labels)
  if num_clients < 1 or num_clients * min_size > n:
    raise ValueError(f"num_clients={num_clients} must be from 1 to {n // min_size}: every "
                     f"client needs at least {min_size} of the {n} examples")
  rng = _seeded(seed)
  for _ in range(1000):
    clients = [[] for _ in range(num_clients)]
    for k in range(int(labels.max()) + 1):
      idx_k = np.flatnonzero(labels == k)
      rng.shuffle(idx_k)
      shares = rng.dirichlet(np.repeat(beta, num_clients))
      shares = shares * np.array([len(c) < n / num_clients for c in clients])
      shares = shares / shares.sum()
      cuts = (np.cumsum(shares) * len(idx_k)).astype(int)[:-1]
      clients = [c + part.tolist() for c, part in zip(clients, np.split(idx_k, cuts))]
    if min(len(c) for c in clients) >= min_size:
      break
  else:
    raise ValueError(f"the Dirichlet(beta={beta}) label split gave some of the {num_clients} "
                     f"clients fewer than {min_size} examples in 1000 draws: raise "
                     "dirichlet_beta or lower num_clients")
  for c in clients:
    rng.shuffle(c)
  return _from_client_lists([np.asarray(c, np.int64) for c in clients])


def label_count_partition(labels: np.ndarray, num_clients: int, labels_per_client: int,
                          seed: int = 42) -> Partition:
  """NIID-Bench's ``noniid-#label<k>`` (#C = k): client i holds label i mod K and k - 1 more
  drawn uniformly without repeats; each label's examples (shuffled) are split equally
  (``np.array_split``) over the clients holding it. k = K: every label split over all clients."""
  labels = np.asarray(labels)
  num_classes = int(labels.max()) + 1
  if not 1 <= labels_per_client <= num_classes:
    raise ValueError(f"labels_per_client={labels_per_client} must be from 1 to the "
                     f"{num_classes} classes")
  if num_clients < 1:
    raise ValueError(f"num_clients={num_clients} must be >= 1")
  rng = _seeded(seed)
  if labels_per_client == num_classes:
    held = [list(range(num_classes)) for _ in range(num_clients)]
  else:
    held = []
    for i in range(num_clients):
      current = [i % num_classes]
      while len(current) < labels_per_client:
        label = int(rng.integers(num_classes))
        if label not in current:
          current.append(label)
      held.append(current)
  clients = [[] for _ in range(num_clients)]
  for k in range(num_classes):
    idx_k = np.flatnonzero(labels == k)
    rng.shuffle(idx_k)
    holders = [j for j in range(num_clients) if k in held[j]]
    if not holders:
      continue  # NIID-Bench leaves such a label unused too
    for j, part in zip(holders, np.array_split(idx_k, len(holders))):
      clients[j].append(part)
  empty = [j for j, c in enumerate(clients) if sum(len(p) for p in c) == 0]
  if empty:
    raise ValueError(f"labels_per_client={labels_per_client} over {num_clients} clients leaves "
                     f"client {empty[0]} no example (a label has more holders than examples): "
                     "lower num_clients")
  return _from_client_lists([np.concatenate(c) for c in clients])


def dirichlet_quantity_partition(num_examples: int, num_clients: int, beta: float,
                                 seed: int = 42, min_size: int = NIID_BENCH_MIN_SIZE
                                 ) -> Partition:
  """NIID-Bench's ``iid-diff-quantity``: the examples shuffled, client sizes in shares ~
  Dirichlet(beta), redrawn until every share is at least ``min_size`` examples."""
  if not (beta > 0 and np.isfinite(beta)):
    raise ValueError(f"dirichlet_beta={beta} must be a finite number > 0 (smaller: more skew; "
                     "NIID-Bench uses 0.5)")
  if num_clients < 1 or num_clients * min_size > num_examples:
    raise ValueError(f"num_clients={num_clients} must be from 1 to {num_examples // min_size}: "
                     f"every client needs at least {min_size} of the {num_examples} examples")
  rng = _seeded(seed)
  order = rng.permutation(num_examples)
  for _ in range(1000):
    shares = rng.dirichlet(np.repeat(beta, num_clients))
    shares = shares / shares.sum()
    if np.min(shares * num_examples) >= min_size:
      break
  else:
    raise ValueError(f"the Dirichlet(beta={beta}) quantity split gave some of the "
                     f"{num_clients} clients fewer than {min_size} examples in 1000 draws: "
                     "raise dirichlet_beta or lower num_clients")
  cuts = (np.cumsum(shares) * num_examples).astype(int)[:-1]
  return _from_client_lists(np.split(order, cuts))


def split(c, labels: np.ndarray, num_classes: int = NUM_CLASSES) -> Partition:
  """The partition ``c.partition`` names (with its fields of config ``c``) of ``labels``, one
  clear line when it cannot be drawn."""
  try:
    if c.partition == "iid":
      return iid_partition(len(labels), c.num_clients, c.partition_seed)
    if c.partition == "labeldir":
      return dirichlet_label_partition(labels, c.num_clients, c.dirichlet_beta,
                                       c.partition_seed)
    if c.partition == "label_count":
      return label_count_partition(labels, c.num_clients, c.labels_per_client,
                                   c.partition_seed)
    if c.partition == "quantity":
      return dirichlet_quantity_partition(len(labels), c.num_clients, c.dirichlet_beta,
                                          c.partition_seed)
    return power_law_partition(labels, c.num_clients, c.labels_per_client, c.min_per_client,
                               c.lognormal_sigma, c.partition_seed, num_classes)
  except ValueError as e:
    raise ConfigError(f"cannot partition {len(labels)} training examples: {e}") from e


def partition_stats(partition: Partition, labels: np.ndarray,
                    num_classes: int = NUM_CLASSES) -> dict:
  """The statistics the paper tabulates, plus how many labels each client holds."""
  sizes = partition.sizes
  counts = np.stack([np.bincount(labels[partition.order[o:o + n]], minlength=num_classes)
                     for o, n in zip(partition.offsets, sizes)])
  labels_held = (counts > 0).sum(axis=1)
  # Each client's examples per label (NIID-Bench's traindata_cls_counts), for small federations.
  per_client = {"label_counts": counts.tolist()} if len(sizes) <= 100 else {}
  return {**per_client,
      "clients": int(len(sizes)), "examples": int(sizes.sum()), "mean": float(sizes.mean()),
      "std": float(sizes.std()), "min": int(sizes.min()), "median": float(np.median(sizes)),
      "max": int(sizes.max()), "labels_per_client_min": int(min(labels_held)),
      "labels_per_client_max": int(max(labels_held)),
  }


def format_stats(stats: dict) -> str:
  return (f"{stats['clients']} clients, {stats['examples']} examples; per client mean "
          f"{stats['mean']:.1f}, std {stats['std']:.1f}, min {stats['min']}, median "
          f"{stats['median']:.0f}, max {stats['max']}; labels per client "
          f"{stats['labels_per_client_min']}-{stats['labels_per_client_max']}")
