"""Shakespeare as the paper uses it (LEAF's: each speaking role of each play a client; an
example is 80 characters, its label the next one): a LEAF folder (``leaf.read``) whose ``x`` are
80-character strings and ``y`` single characters, both as ids over LEAF's 80-letter alphabet
(the authors' ``language_utils.ALL_LETTERS``), the next-character classes the same 80.

``--config.data_dir=DIR``, DIR holding ``train/`` and ``test/`` (docs/guide.md#leaf).
"""

from __future__ import annotations

import numpy as np

from fedprox_jax.data import leaf
from fedprox_jax.errors import DataError

ALL_LETTERS = ("\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}")
NUM_LETTERS = len(ALL_LETTERS)  # 80: the vocabulary and the classes
SEQUENCE_LENGTH = 80
_IDS = {letter: i for i, letter in enumerate(ALL_LETTERS)}


def _ids(text, where: str) -> list:
  if not isinstance(text, str):
    raise DataError(f"{where}: examples and labels must be text (a {type(text).__name__} is not)")
  unknown = [ch for ch in text if ch not in _IDS]
  if unknown:
    # The authors' code maps it to -1, which no embedding holds.
    raise DataError(f"{where}: the character {unknown[0]!r} is not in LEAF's 80-letter "
                    "alphabet (LEAF's preprocessing keeps only those)")
  return [_IDS[ch] for ch in text]


def encode(x: list, y: list, where: str) -> tuple:
  """One user's raw lists -> (int32 ids [n, 80], int32 next-character ids [n])."""
  sequences = [_ids(text, where) for text in x]
  lengths = {len(s) for s in sequences}
  if lengths != {SEQUENCE_LENGTH}:
    raise DataError(f"{where}: every example must be {SEQUENCE_LENGTH} characters (one has "
                    f"{min(lengths - {SEQUENCE_LENGTH})})")
  labels = [_ids(ch, where) for ch in y]
  if any(len(ch) != 1 for ch in labels):
    raise DataError(f"{where}: every label must be one character")
  return np.asarray(sequences, np.int32), np.asarray(labels, np.int32)[:, 0]


def check(c) -> None:
  leaf.check_partitioned(c)


load = leaf.loader("shakespeare", lambda c: leaf.read(c.data_dir, encode, NUM_LETTERS,
                                                        vocab_size=NUM_LETTERS))
federation = leaf.as_read
