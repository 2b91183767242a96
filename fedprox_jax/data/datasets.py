"""Data sets by name (``config.data``): each is a module with two functions, registered here.

* ``load(c, source=None, genuine=None) -> (source, genuine)``: the raw examples, read once (a
  sweep reuses them for every partition); a caller's own ``source`` is taken as it is.
  ``genuine``: whether they are the published data set (None where that does not apply),
  recorded in config.json.
* ``federation(c, source) -> Federation``: the clients' training data, the test set and the
  class count for config ``c`` (its partition, protocol, seeds), as host arrays.

and optionally the rules that hinge on the data set (config validation and sweeps read them
instead of naming a data set): ``check(c)``, its own fields' validation (raises ConfigError);
``federations(c, item)``, a data set that comes partitioned into named federations (the
paper's synthetic ones): a sweep's ``sweep.federations`` item -> (its name, the config fields
that make it), ``item=None`` the config's own; without it the data set is split by
``config.partition`` and a sweep takes ``sweep.splits``; ``identical_clients(c)``: every
client draws from one distribution (the adaptive-mu rule starts at 1 there);
``one_per_program_on_cpu``: a CPU sweep runs it one experiment per program; ``own_fields``:
the config fields only it reads (set for another data set, they are refused, not ignored).

Adding a data set is its module, one ``register`` line and its test; the run layer and the
round never name one.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from fedprox_jax.data import femnist, mnist, sent140, shakespeare, synthetic
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
  check: Callable | None = None
  federations: Callable | None = None
  identical_clients: Callable = lambda c: False
  one_per_program_on_cpu: bool = False
  own_fields: tuple = ()  # config fields only it reads: refused set for another data set


REGISTRY = Registry("a data set")


def register(dataset: Dataset) -> Dataset:
  return REGISTRY.add(dataset)


def get(name: str) -> Dataset:
  return REGISTRY.lookup(name)


register(Dataset("mnist", mnist.load, mnist.federation,
                 "MNIST (TFDS or the raw IDX files), split over clients by config.partition",
                 num_classes=mnist.NUM_CLASSES, check=mnist.check))
register(Dataset("synthetic", synthetic.load, synthetic.federation,
                 "the paper's Synthetic(alpha, beta) and Synthetic-IID federations",
                 num_classes=synthetic.NUM_CLASSES, check=synthetic.check,
                 federations=synthetic.federations,
                 identical_clients=lambda c: bool(c.synthetic.iid),
                 # a program's round lasts as long as its largest device's work
                 one_per_program_on_cpu=True))
register(Dataset("femnist", femnist.load, femnist.federation,
                 "FEMNIST as the paper uses it, from a LEAF folder (config.data_dir)",
                 num_classes=femnist.NUM_CLASSES, check=femnist.check))
register(Dataset("shakespeare", shakespeare.load, shakespeare.federation,
                 "LEAF's Shakespeare (next character, 80-letter alphabet), from a LEAF folder",
                 num_classes=shakespeare.NUM_LETTERS, check=shakespeare.check))
register(Dataset("sent140", sent140.load, sent140.federation,
                 "Sent140 as the paper uses it (first 25 words, frozen GloVe vectors: "
                 "config.embeddings), from a LEAF folder",
                 num_classes=sent140.NUM_CLASSES, check=sent140.check,
                 own_fields=("embeddings",)))
