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
from fedprox_jax.federated_data import FederatedData


class Federation(NamedTuple):
  train: FederatedData  # host (numpy) or device arrays; x float32, y int32
  test_x: np.ndarray
  test_y: np.ndarray    # int32 in 0 .. num_classes - 1
  num_classes: int
  # The partition's statistics (``partition.partition_stats``), the test set's size, the
  # largest client's training examples (``max_train``) and ``data_sha256``: the digest of the
  # examples in their order, which a resume compares.
  stats: dict

  @property
  def input_shape(self) -> tuple:
    return tuple(self.train.x.shape[1:])


def federated(x: np.ndarray, labels: np.ndarray, split: partition.Partition) -> FederatedData:
  """The examples of ``split``'s clients, client after client."""
  return FederatedData(x=x[split.order], y=labels[split.order].astype(np.int32),
                       offsets=split.offsets, sizes=split.sizes)


def _checked_arrays(x, y, test_x, test_y, num_classes: int) -> tuple:
  """The arrays as the engine takes them (x float32, y int32), or one line saying what is
  wrong with them."""
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
  return (x.astype(np.float32), y.astype(np.int32), test_x.astype(np.float32),
          test_y.astype(np.int32))


def _stats(split: partition.Partition, train: FederatedData, y, test_x, test_y,
           num_classes: int) -> dict:
  return {**partition.partition_stats(split, y, num_classes),
          "test_examples": int(len(test_y)), "train_examples": int(train.sizes.sum()),
          "max_train": int(train.sizes.max()),
          "data_sha256": files.ordered_digest(train.x, train.y, train.sizes, test_x, test_y)}


def from_client_ids(x, y, client_ids, test_x, test_y, num_classes: int) -> Federation:
  """Arrays whose examples name their client (``client_ids``: integers, each client's
  examples kept in their order; clients numbered by their ids' sorted order) and a test set."""
  x, y, test_x, test_y = _checked_arrays(x, y, test_x, test_y, num_classes)
  client_ids = np.asarray(client_ids)
  if client_ids.shape != (len(x),):
    raise DataError(f"{len(client_ids)} client ids for {len(x)} training examples: give one "
                      "per example")
  _, index = np.unique(client_ids, return_inverse=True)
  order = np.argsort(index, kind="stable")
  split = partition.from_sizes(np.bincount(index))._replace(order=order)
  train = federated(x, y, split)
  return Federation(train, test_x, test_y, num_classes,
                    _stats(split, train, y, test_x, test_y, num_classes))


def from_arrays(c, x, y, test_x, test_y, num_classes: int) -> Federation:
  """Arrays without clients, split over ``c.num_clients`` by the partition config ``c`` names
  (``partition.split``: power_law, iid, labeldir, label_count, quantity), and a test set."""
  x, y, test_x, test_y = _checked_arrays(x, y, test_x, test_y, num_classes)
  split = partition.split(c, y, num_classes)
  train = federated(x, y, split)
  return Federation(train, test_x, test_y, num_classes,
                    _stats(split, train, y, test_x, test_y, num_classes))
