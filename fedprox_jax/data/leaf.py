"""LEAF's federated JSON layout, as the paper's data zips and LEAF's scripts write it, read into a
``Federation``: a folder with ``train/`` and ``test/``, each holding one or more ``*.json`` files
of ``{"users": [...], "num_samples": [...], "user_data": {user: {"x": [...], "y": [...]}}}``
(optionally ``"hierarchies"``).

What real files hold, and what is done with it:

* several files per split: read in name order and merged (a user in two files of one split is
  refused: which copy is meant?);
* ``user_data`` entries of users that ``users`` does not list (LEAF's sampling leaves dropped
  users' entries behind, empty): an empty one is dropped, one with examples kept as a client,
  as the authors' ``read_data`` (which takes the users from ``user_data``) does; both counted
  in the statistics;
* labels written as floats (``3.0``): taken as the integer they are; ``2.5`` is refused;
* a ``hierarchies`` list whose length no longer matches ``users``: not used, counted;
* ``num_samples`` is checked against each listed user's examples, and ``x`` against ``y``;
* the clients are the users with training examples, in sorted order (the authors' code sorts
  them); a user with test examples only is not a client (the authors' code never evaluates it),
  counted. Each client's test examples join the one pooled test set (the paper's accuracy is the
  sum of the clients' correct predictions over all their test examples).

A file that cannot be read as that layout is one line naming the file (and the user).
``encode`` turns one split's raw ``x`` and ``y`` lists into arrays: the data set's own rule
(``data/femnist.py``: pixels; ``data/shakespeare.py``: characters as token ids).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import NamedTuple

import numpy as np

from fedprox_jax import files
from fedprox_jax.data import partition
from fedprox_jax.data.federation import Federation, federated
from fedprox_jax.errors import ConfigError, DataError

MAX_FILE_BYTES = 8 << 30  # a LEAF split file: Shakespeare's train split is ~0.5 GB


def _read_split(directory: str, split: str) -> tuple:
  """({user: (x, y)}, counts) of every ``*.json`` file of ``directory``/``split``."""
  folder = os.path.join(directory, split)
  try:
    names = sorted(n for n in os.listdir(folder) if n.endswith(".json"))
  except OSError as e:
    raise DataError(f"cannot read {folder} ({e.strerror or e}): --config.data_dir must be a "
                    "folder holding LEAF's train/ and test/ folders (docs/guide.md#leaf)") from None
  if not names:
    raise DataError(f"{folder} holds no .json file: --config.data_dir must be a folder holding "
                    "LEAF's train/ and test/ folders of .json files (docs/guide.md#leaf)")
  users, where = {}, {}
  counts = {"files": [], "unlisted_users_dropped": 0, "unlisted_users_kept": 0,
            "hierarchies_mismatched": 0}
  for name in names:
    path = os.path.join(folder, name)
    try:
      raw = files.read_regular(path, MAX_FILE_BYTES, "LEAF file")
      content = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
      raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}): LEAF's files "
                      "are UTF-8 JSON; restore the file from the data set's archive") from None
    except (OSError, ValueError, RecursionError) as e:
      raise DataError(f"{path} is not readable JSON ({type(e).__name__}: {e}): restore the "
                      "file from the data set's archive") from None
    if not isinstance(content, dict) or not isinstance(content.get("user_data"), dict):
      raise DataError(f"{path} has no 'user_data' object: not a LEAF file (it must hold users, "
                      "num_samples and user_data)")
    listed = content.get("users", [])
    num_samples = content.get("num_samples", [])
    if not isinstance(listed, list) or not isinstance(num_samples, list) or (
        len(listed) != len(num_samples)):
      raise DataError(f"{path}: 'users' and 'num_samples' must be lists of one length (they "
                      f"hold {len(listed) if isinstance(listed, list) else 'no list'} and "
                      f"{len(num_samples) if isinstance(num_samples, list) else 'no list'})")
    if "hierarchies" in content and len(content["hierarchies"]) != len(listed):
      counts["hierarchies_mismatched"] += 1
    expected = dict(zip(map(str, listed), num_samples))
    for user, entry in content["user_data"].items():
      if not isinstance(entry, dict) or not isinstance(entry.get("x"), list) or (
          not isinstance(entry.get("y"), list)):
        raise DataError(f"{path}: user {user!r} has no 'x' and 'y' lists")
      x, y = entry["x"], entry["y"]
      if len(x) != len(y):
        raise DataError(f"{path}: user {user!r} has {len(x)} examples but {len(y)} labels")
      if user not in expected:
        if not x:
          counts["unlisted_users_dropped"] += 1
          continue
        counts["unlisted_users_kept"] += 1
      elif expected[user] != len(x):
        raise DataError(f"{path}: user {user!r} has {len(x)} examples, and num_samples says "
                        f"{expected[user]}: the file is inconsistent; restore it from the data "
                        "set's archive")
      if user in users:
        raise DataError(f"user {user!r} is in both {where[user]} and {path}: one split must "
                        "hold each user once")
      users[user], where[user] = (x, y), path
    missing = sorted(set(expected) - set(content["user_data"]))
    if missing:
      raise DataError(f"{path}: user {missing[0]!r} is listed in 'users' but has no "
                      "'user_data' entry")
    counts["files"].append({"name": f"{split}/{name}", "bytes": len(raw),
                            "sha256": hashlib.sha256(raw).hexdigest()})
  return users, counts


def labels_of(y: list, where: str, num_classes: int) -> np.ndarray:
  """``y`` as int32 class ids: integers (or floats that are integers) from 0 to
  ``num_classes - 1``, or one line naming ``where``."""
  try:
    values = np.asarray(y, np.float64)
  except (TypeError, ValueError):
    raise DataError(f"{where}: labels must be numbers") from None
  if values.ndim != 1 or np.any(values != np.round(values)):
    raise DataError(f"{where}: labels must be whole numbers (a label is {values.ravel()[0]!r})")
  bad = (values < 0) | (values >= num_classes)
  if np.any(bad):
    raise DataError(f"{where}: label {values[bad][0]:g} is outside the data set's "
                    f"{num_classes} classes (0 to {num_classes - 1})")
  return values.astype(np.int32)


class Users(NamedTuple):
  """A LEAF folder's raw users: {user: (x list, y list)} of each split, and what was read."""
  directory: str
  train: dict
  test: dict
  counts: dict


def read_users(directory: str) -> Users:
  train, train_counts = _read_split(directory, "train")
  test, test_counts = _read_split(directory, "test")
  counts = {"files": train_counts["files"] + test_counts["files"],
            "test_only_users": len(set(test) - set(train)),
            **{k: train_counts[k] + test_counts[k] for k in (
                "unlisted_users_dropped", "unlisted_users_kept", "hierarchies_mismatched")}}
  return Users(directory, train, test, counts)


def read(directory: str, encode, num_classes: int, vocab_size: int = 0) -> Federation:
  """The federation of LEAF folder ``directory``: ``encode(x, y, where) -> (x, y)`` turns one
  user's raw lists into arrays (x float32 features or int32 token ids below ``vocab_size``, y
  int32 classes below ``num_classes``)."""
  return federation_of(read_users(directory), encode, num_classes, vocab_size)


def federation_of(users: Users, encode, num_classes: int, vocab_size: int = 0) -> Federation:
  """``read``'s federation of users already read (a data set whose encoding depends on what
  the users hold reads them first: ``data/sent140.py``)."""
  directory, train, test = users.directory, users.train, users.test
  clients = sorted(u for u, (x, _) in train.items() if x)
  empty = sorted(u for u in train if u not in clients)
  if empty:
    raise DataError(f"user {empty[0]!r} of {directory}/train has no training examples: an "
                    "empty user cannot be a client; restore the file from the data set's archive")
  if not clients:
    raise DataError(f"{directory}/train holds no user: not a LEAF data set")
  xs, ys, test_xs, test_ys, sizes = [], [], [], [], []
  for user in clients:
    x, y = encode(*train[user], f"{directory}/train, user {user!r}")
    xs.append(x), ys.append(y), sizes.append(len(y))
    if user in test and test[user][0]:
      x, y = encode(*test[user], f"{directory}/test, user {user!r}")
      test_xs.append(x), test_ys.append(y)
  if not test_xs:
    raise DataError(f"{directory}/test holds no example of the training users: the test split "
                    "must hold the same users (LEAF's -t sample split)")
  shapes = {x.shape[1:] for x in xs + test_xs}
  if len(shapes) != 1:
    raise DataError(f"{directory}: the users' examples have shapes {sorted(shapes)}: they must "
                    "have one shape")
  x, y = np.concatenate(xs), np.concatenate(ys)
  test_x, test_y = np.concatenate(test_xs), np.concatenate(test_ys)
  split = partition.from_sizes(np.asarray(sizes))
  data = federated(x, y, split)
  stats = {**partition.partition_stats(split, y, num_classes),
           "test_examples": int(len(test_y)), "train_examples": int(len(y)),
           "max_train": int(max(sizes)),
           "leaf": users.counts,
           "data_sha256": files.ordered_digest(data.x, data.y, data.sizes, test_x, test_y)}
  return Federation(data, test_x, test_y, num_classes, stats, vocab_size)


def check_partitioned(c) -> None:
  """The config of a data set that comes as a LEAF folder: its folder is named, the fields
  that split a data set (which it would ignore) are left at their defaults, and the protocol
  is the authors' (the seed's is Flower's MNIST: its held-out split and batch weights)."""
  def require(ok, field, value, what):
    if not ok:
      raise ConfigError(f"config.{field}={value!r}: {what}")
  require(bool(c.data_dir), "data_dir", c.data_dir, f"data={c.data!r} reads a LEAF folder: "
          "pass --config.data_dir=DIR, DIR holding train/ and test/ (docs/guide.md#leaf)")
  require(c.protocol == "paper", "protocol", c.protocol, f"data={c.data!r} follows the "
          "authors' code: use --config.protocol=paper (the seed's protocol is Flower's MNIST)")
  for field, default in (("partition", "power_law"), ("iid", False), ("train_subset", 0)):
    require(c[field] == default, field, c[field], f"does not apply to data={c.data!r}: a LEAF "
            "folder comes partitioned into its users; leave it unset")


def loader(name: str, read_folder):
  """A LEAF data set's ``load``: ``read_folder(c)``'s federation (read once), or the caller's
  own ``Federation`` (``source=``)."""
  def load(c, source=None, genuine=None) -> tuple:
    del genuine  # a LEAF folder has no published digest to compare with
    if source is None:
      source = read_folder(c)
    elif not isinstance(source, Federation):
      raise ConfigError(f"source= for data={name!r} must be a Federation (leaf.read's)")
    return source, None
  return load


def as_read(c, source) -> Federation:
  """A LEAF data set's ``federation``: its clients and splits are the folder's."""
  del c
  return source
