"""Sent140 as the paper uses it (LEAF's Sentiment140, sampled with ``-s niid --sf 0.3 -k 30 -tf
0.8 -t sample``: 772 users): a LEAF folder (``leaf.read_users``) whose ``x`` are tweet records
(the text at index 4) and ``y`` the sentiment, '4' positive and '0' negative (the authors'
``process_y``: 1 if '4' else 0).

Each tweet becomes its first 25 words (``split_line``: ``[\\w']+|[.,!?;]``, the authors'
``line_to_indices``), each word its frozen 300-d GloVe vector, the unknown word and the padding
of shorter tweets the zero vector (LEAF's ``get_embs.py`` appends that row for them). The vectors
are looked up once here, so the examples are [25, 300] float32 features and nothing can train
the embedding (the authors' ``tf.Variable(..., trainable=False)``); only the words the folder
uses are kept of the embeddings file.

``--config.embeddings=PATH``: LEAF's ``embs.json`` ({"vocab": [...], "emba": [[300 floats],
..., the unknown word's]}) or a GloVe ``.txt`` (``glove.6B.300d.txt``: a word and its floats per
line), read as UTF-8.
"""

from __future__ import annotations

import json
import os
import re
import stat

import numpy as np

from fedprox_jax import files
from fedprox_jax.data import leaf
from fedprox_jax.data.federation import Federation
from fedprox_jax.errors import ConfigError, DataError

MAX_WORDS = 25
NUM_CLASSES = 2
_WORDS = re.compile(r"[\w']+|[.,!?;]")
POSITIVE, NEGATIVE = {"4", 4, 4.0}, {"0", 0, 0.0}


def split_line(line: str) -> list:
  return _WORDS.findall(line)


def _text(record, where: str) -> str:
  if not isinstance(record, list) or len(record) < 5 or not isinstance(record[4], str):
    raise DataError(f"{where}: each example must be a tweet record, a list with the text at "
                    "index 4 (LEAF's Sent140 layout)")
  return record[4]


MAX_EMBEDDINGS_BYTES = 8 << 30  # LEAF's embs.json of GloVe 6B 300d is ~1.5 GB


def _open_regular(path: str):
  """``path`` opened as UTF-8 text if it is a regular file: a FIFO is never waited on (opened
  non-blocking, then refused) and a device is never read without end."""
  fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
  if not stat.S_ISREG(os.fstat(fd).st_mode):
    os.close(fd)
    raise ValueError("it is not a regular file (a FIFO, a device or a directory)")
  return os.fdopen(fd, encoding="utf-8")


def read_embeddings(path: str, words: set) -> dict:
  """{word: its float32 vector} of the embeddings file ``path``, for ``words`` only."""
  vectors = {}
  try:
    if path.endswith(".json"):
      content = json.loads(files.read_regular(path, MAX_EMBEDDINGS_BYTES, "embeddings file"))
      for word, vector in zip(content["vocab"], content["emba"]):
        if word in words:
          vectors[word] = vector
    else:
      with _open_regular(path) as f:
        for line in f:
          word, _, rest = line.rstrip("\n").partition(" ")
          if word in words:
            vectors[word] = rest.split(" ")
    vectors = {w: np.asarray(v, np.float32) for w, v in vectors.items()}
  except OSError as e:
    raise DataError(f"cannot read the embeddings {path!r} ({e.strerror or e}): pass "
                    "--config.embeddings=PATH, LEAF's embs.json or glove.6B.300d.txt") from None
  except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as e:
    raise DataError(f"the embeddings {path!r} are not LEAF's embs.json nor a GloVe .txt "
                    f"({type(e).__name__}: {e})") from None
  sizes = {v.shape for v in vectors.values()}
  if len(sizes) > 1 or any(len(s) != 1 for s in sizes):
    raise DataError(f"the embeddings {path!r} hold vectors of sizes {sorted(sizes)}: one size, "
                    "one vector per word")
  return vectors


def encoder(users: leaf.Users, embeddings: str):
  """The ``encode`` of ``users``' tweets with the vectors of ``embeddings``."""
  words = {w for split in (users.train, users.test) for x, _ in split.values()
           for record in x if isinstance(record, list) and len(record) > 4
           and isinstance(record[4], str) for w in split_line(record[4])[:MAX_WORDS]}
  vectors = read_embeddings(embeddings, words)
  if not vectors:
    raise DataError(f"the embeddings {embeddings!r} hold none of the folder's words: pass "
                    "GloVe's (glove.6B.300d.txt) or LEAF's embs.json")
  size = len(next(iter(vectors.values())))
  unknown = np.zeros(size, np.float32)

  def encode(x: list, y: list, where: str) -> tuple:
    features = np.zeros((len(x), MAX_WORDS, size), np.float32)
    for i, record in enumerate(x):
      for j, word in enumerate(split_line(_text(record, where))[:MAX_WORDS]):
        features[i, j] = vectors.get(word, unknown)
    labels = []
    for value in y:
      if value in POSITIVE:
        labels.append(1)
      elif value in NEGATIVE:
        labels.append(0)
      else:
        raise DataError(f"{where}: the sentiment {value!r} is neither '4' (positive) nor '0' "
                        "(negative)")
    return features, np.asarray(labels, np.int32)
  return encode


def check(c) -> None:
  leaf.check_partitioned(c)
  if not c.embeddings:
    raise ConfigError("config.embeddings='': data='sent140' looks its words up in GloVe's "
                      "300-d vectors: pass --config.embeddings=PATH, LEAF's embs.json or "
                      "glove.6B.300d.txt (docs/guide.md#leaf)")


def _read(c) -> Federation:
  users = leaf.read_users(c.data_dir)
  return leaf.federation_of(users, encoder(users, c.embeddings), NUM_CLASSES)


load = leaf.loader("sent140", _read)
federation = leaf.as_read
