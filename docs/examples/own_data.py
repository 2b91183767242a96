"""A worked example: a data set of your own, registered from outside the package
(docs/extending.md).

Your arrays in one ``.npz`` file: ``x`` (training examples, any shape), ``y`` (integer labels),
``client_id`` (which client holds each training example), ``test_x``, ``test_y``, and
``num_classes``; optionally ``vocab_size``, where ``x`` holds integer token ids below it
(sequences for a model that takes tokens: docs/examples/token_model.py). Each client keeps
its examples in their order; clients are numbered by their ids' sorted order. Without ``client_id`` the examples are split over ``num_clients`` by
``config.partition`` (iid, labeldir, ...), as MNIST is.

From the command line (this file is the config; it registers the data set first):

    python launch.py --config=docs/examples/own_data.py --config.data_dir=my_data.npz \
        --config.num_clients=12 --config.clients_per_round=4

(``num_clients`` must be your file's number of clients: a run refuses any other in one line.)
From Python: import this file, then ``single.run(get_config(), workdir)`` with
``data_dir`` set, or hand your arrays over directly: ``single.run(c, workdir,
source=dict(np.load(path)))``.
"""

import numpy as np

from configs import mnist
from fedprox_jax.data import datasets, federation
from fedprox_jax.errors import DataError


def load(c, source=None, genuine=None):
  """The arrays of ``c.data_dir`` (an .npz file), or the caller's own (a dict of arrays)."""
  del genuine  # there is no published original to compare with
  if source is None:
    try:
      with np.load(c.data_dir) as f:
        source = dict(f)
    except (OSError, ValueError) as e:
      raise DataError(f"cannot read {c.data_dir!r} as an .npz file ({e}): pass "
                      "--config.data_dir=FILE.npz") from None
  missing = {"x", "y", "test_x", "test_y", "num_classes"} - set(source)
  if missing:
    raise DataError(f"{c.data_dir or 'the arrays'} lack {', '.join(sorted(missing))}")
  return source, None


def build(c, source) -> federation.Federation:
  num_classes = int(source["num_classes"])
  vocab_size = int(source.get("vocab_size", 0))  # 0: x holds features, not token ids
  if "client_id" in source:
    if c.partition != "power_law":  # the config's default: a split the data does not take
      raise DataError(f"{c.data_dir or 'the arrays'} name each example's client: "
                      f"config.partition={c.partition!r} does not apply; leave it unset")
    return federation.from_client_ids(source["x"], source["y"], source["client_id"],
                                      source["test_x"], source["test_y"], num_classes,
                                      vocab_size)
  return federation.from_arrays(c, source["x"], source["y"], source["test_x"],
                                source["test_y"], num_classes, vocab_size)


if "own_npz" not in datasets.REGISTRY:  # a second import of this file registers nothing
  datasets.register(datasets.Dataset("own_npz", load, build, "arrays from an .npz file"))


def get_config(variant: str = "fedprox"):
  """configs/mnist.py's ``variant`` on this data set, with the logistic regression."""
  c = mnist.get_config(variant)
  c.update(dict(data="own_npz", model="mlr", data_dir=""))
  return c
