"""A federated data set, the value every data set's loader builds and everything after it runs:
each client's training examples (client c owns ``train.x[offsets[c] : offsets[c] + sizes[c]]``),
the test set, and what the model and the checks need to know of it.

A data set of your own is a module with ``load`` and ``federation`` registered in
``data/datasets.py``'s registry; ``from_client_ids`` (arrays whose examples name their client)
and ``from_arrays`` (arrays split by any of the partitions) build its Federation
(docs/extending.md).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from fedprox_jax import files
from fedprox_jax.data import partition
from fedprox_jax.errors import DataError
from fedprox_jax.federated_data import FederatedData, InputSpec


class Federation(NamedTuple):
  # Host (numpy) or device arrays; y int32; x float32 features, or int32 token ids in
  # 0 .. vocab_size - 1 where vocab_size > 0.
  train: FederatedData
  test_x: np.ndarray
  test_y: np.ndarray    # int32 in 0 .. num_classes - 1
  num_classes: int
  # The partition's statistics (``partition.partition_stats``), the test set's size, the
  # largest client's training examples (``max_train``) and ``data_sha256``: the digest of the
  # examples in their order, which a resume compares.
  stats: dict
  vocab_size: int = 0   # > 0: the inputs are token ids (a model with token_inputs takes them)

  @property
  def input_shape(self) -> tuple:
    return tuple(self.train.x.shape[1:])

  @property
  def input_spec(self) -> InputSpec:
    """One example's shape and dtype (no batch axis): what a model is built and initialised
    for (``models.init_params``)."""
    return InputSpec(self.input_shape, np.dtype(self.train.x.dtype).name, self.vocab_size)


def federated(x: np.ndarray, labels: np.ndarray, split: partition.Partition) -> FederatedData:
  """The examples of ``split``'s clients, client after client."""
  return FederatedData(x=x[split.order], y=labels[split.order].astype(np.int32),
                       offsets=split.offsets, sizes=split.sizes)


def _checked_arrays(x, y, test_x, test_y, num_classes: int, vocab_size: int = 0) -> tuple:
  """The arrays as the engine takes them (y int32; x float32, or int32 token ids with
  ``vocab_size``), or one line saying what is wrong with them."""
  x, test_x = np.asarray(x), np.asarray(test_x)
  y, test_y = np.asarray(y), np.asarray(test_y)
  if len(x) != len(y) or len(test_x) != len(test_y):
    raise DataError(f"{len(x)} training examples with {len(y)} labels, {len(test_x)} test "
                      f"examples with {len(test_y)} labels: give one label per example")
  if x.shape[1:] != test_x.shape[1:]:
    raise DataError(f"training examples of shape {x.shape[1:]} and test examples of shape "
                      f"{test_x.shape[1:]}: they must have one shape")
  for name, labels in (("training", y), ("test", test_y)):
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or (
        len(labels) and (labels.min() < 0 or labels.max() >= num_classes)):
      raise DataError(f"the {name} labels must be integers from 0 to {num_classes - 1} "
                        f"(num_classes={num_classes}), one per example")
  if vocab_size:
    for name, tokens in (("training", x), ("test", test_x)):
      if not np.issubdtype(tokens.dtype, np.integer) or (
          tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size)):
        raise DataError(f"the {name} inputs must be token ids, integers from 0 to "
                        f"{vocab_size - 1} (vocab_size={vocab_size})")
    inputs = np.int32
  else:  # features (images as pixel values included)
    inputs = np.float32
  return (x.astype(inputs), y.astype(np.int32), test_x.astype(inputs), test_y.astype(np.int32))


def _stats(split: partition.Partition, train: FederatedData, y, test_x, test_y,
           num_classes: int) -> dict:
  return {**partition.partition_stats(split, y, num_classes),
          "test_examples": int(len(test_y)), "train_examples": int(train.sizes.sum()),
          "max_train": int(train.sizes.max()),
          "data_sha256": files.ordered_digest(train.x, train.y, train.sizes, test_x, test_y)}


def from_client_ids(x, y, client_ids, test_x, test_y, num_classes: int,
                    vocab_size: int = 0) -> Federation:
  """Arrays whose examples name their client (``client_ids``: integers, each client's
  examples kept in their order; clients numbered by their ids' sorted order) and a test set.
  ``vocab_size`` > 0: x holds token ids below it (kept as int32), else features (float32)."""
  x, y, test_x, test_y = _checked_arrays(x, y, test_x, test_y, num_classes, vocab_size)
  client_ids = np.asarray(client_ids)
  if client_ids.shape != (len(x),):
    raise DataError(f"{len(client_ids)} client ids for {len(x)} training examples: give one "
                      "per example")
  _, index = np.unique(client_ids, return_inverse=True)
  order = np.argsort(index, kind="stable")
  split = partition.from_sizes(np.bincount(index))._replace(order=order)
  train = federated(x, y, split)
  return Federation(train, test_x, test_y, num_classes,
                    _stats(split, train, y, test_x, test_y, num_classes), vocab_size)


def from_arrays(c, x, y, test_x, test_y, num_classes: int, vocab_size: int = 0) -> Federation:
  """Arrays without clients, split over ``c.num_clients`` by the partition config ``c`` names
  (``partition.split``: power_law, iid, labeldir, label_count, quantity), and a test set;
  ``vocab_size`` as ``from_client_ids``'s."""
  x, y, test_x, test_y = _checked_arrays(x, y, test_x, test_y, num_classes, vocab_size)
  split = partition.split(c, y, num_classes)
  train = federated(x, y, split)
  return Federation(train, test_x, test_y, num_classes,
                    _stats(split, train, y, test_x, test_y, num_classes), vocab_size)
