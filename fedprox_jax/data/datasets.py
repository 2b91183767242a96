"""Data sets by name (``config.data``): each is a module with two functions, registered here.

* ``load(c, source=None, genuine=None) -> (source, genuine)``: the raw examples, read once (a
  sweep reuses them for every partition); a caller's own ``source`` is taken as it is.
  ``genuine``: whether they are the published data set (None where that does not apply),
  recorded in config.json.
* ``federation(c, source) -> Federation``: the clients' training data, the test set and the
  class count for config ``c`` (its partition, protocol, seeds), as host arrays.

Adding a data set is its module, one ``register`` line and its test; the run layer and the
round never name one.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from fedprox_jax.data import mnist, synthetic
from fedprox_jax.registry import Registry


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  load: Callable
  federation: Callable
  description: str = ""
  # Its classes where they are known before reading it (config checks labels_per_client and
  # the splits against them at once); None: known from the data (checked when partitioning).
  num_classes: int | None = None


REGISTRY = Registry("a data set")


def register(dataset: Dataset) -> Dataset:
  return REGISTRY.add(dataset)


def get(name: str) -> Dataset:
  return REGISTRY.lookup(name)


register(Dataset("mnist", mnist.load, mnist.federation,
                 "MNIST (TFDS or the raw IDX files), split over clients by config.partition",
                 num_classes=mnist.NUM_CLASSES))
register(Dataset("synthetic", synthetic.load, synthetic.federation,
                 "the paper's Synthetic(alpha, beta) and Synthetic-IID federations",
                 num_classes=synthetic.NUM_CLASSES))
