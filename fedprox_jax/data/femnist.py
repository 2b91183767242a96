"""FEMNIST as the paper uses it (the authors' ``nist``: LEAF's FEMNIST sampled non-IID, then
repartitioned by their ``data/nist/data/my_sample.py`` to 200 writers holding 3 of 10 lowercase
classes each): a LEAF folder (``leaf.read``) of 28 x 28 images as 784 pixel values in [0, 1],
kept as they are (the authors' multinomial logistic regression reads them raw), with labels
below 26, the output size of the authors' model (``main.py``: ``'nist.mclr': (26,)``).

``--config.data_dir=DIR``, DIR holding ``train/`` and ``test/`` (docs/guide.md#leaf).
"""

from __future__ import annotations

import numpy as np

from fedprox_jax.data import leaf
from fedprox_jax.errors import DataError

NUM_CLASSES = 26
PIXELS = 28 * 28


def encode(x: list, y: list, where: str) -> tuple:
  """One user's raw lists -> (float32 images [n, 28, 28, 1], int32 labels)."""
  try:
    pixels = np.asarray(x, np.float32)
  except (TypeError, ValueError):
    raise DataError(f"{where}: each example must be a list of {PIXELS} pixel values (28 x 28), "
                    "numbers all") from None
  if pixels.ndim != 2 or pixels.shape[1] != PIXELS:
    raise DataError(f"{where}: each example must be a list of {PIXELS} pixel values (28 x 28); "
                    f"they have shape {pixels.shape[1:]}")
  if not np.all(np.isfinite(pixels)):
    raise DataError(f"{where}: a pixel value is not a finite number")
  return pixels.reshape(-1, 28, 28, 1), leaf.labels_of(y, where, NUM_CLASSES)


def check(c) -> None:
  """A LEAF folder comes partitioned: the fields that split a data set do not apply."""
  leaf.check_partitioned(c)


load = leaf.loader("femnist", lambda c: leaf.read(c.data_dir, encode, NUM_CLASSES))
federation = leaf.as_read
