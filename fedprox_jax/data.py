"""Loading MNIST as numpy arrays: through tensorflow-datasets, or from raw IDX files.

Both sources return the same ``Mnist`` (uint8 images [N, 28, 28, 1], int32 labels). TFDS runs
in a child process (``tfds_worker``) that caches its arrays, so TensorFlow never enters the
training process (its import costs seconds and ~0.6 GB, and it would claim GPU memory).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
import zipfile
from typing import NamedTuple

import numpy as np

from fedprox_jax import cache
from fedprox_jax.errors import UserError

_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the seed's torchvision Normalize constants
SOURCES = ("tfds", "idx")
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}


class DataError(UserError):
  """A data problem the user can fix; the message says how."""


class Mnist(NamedTuple):
  train_images: np.ndarray  # uint8 [60000, 28, 28, 1] for MNIST
  train_labels: np.ndarray  # int32 [60000], values 0..9
  test_images: np.ndarray   # uint8 [10000, 28, 28, 1]
  test_labels: np.ndarray   # int32 [10000]


def fingerprint(mnist: Mnist) -> str:
  """An order-independent digest of all (image, label) pairs of both splits: equal for the same
  examples in any order (TFDS stores MNIST in another order than the IDX files)."""
  digest = hashlib.sha256()
  for split in ("train", "test"):
    images = np.ascontiguousarray(getattr(mnist, f"{split}_images"), np.uint8)
    labels = np.asarray(getattr(mnist, f"{split}_labels")).astype(np.uint8)
    rows = np.concatenate([images.reshape(len(images), -1), labels[:, None]], axis=1)
    per_example = sorted(hashlib.sha1(row.tobytes()).digest() for row in rows)
    digest.update(split.encode() + b"".join(per_example))
  return digest.hexdigest()


# normalize()'s value of each of the 256 pixel values, computed as the seed's transform does.
_NORMALIZED = ((np.arange(256, dtype=np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD).astype(np.float32)


def normalize(images: np.ndarray) -> np.ndarray:
  """uint8 -> float32 scaled to [0, 1] and standardised like the seed: (x / 255 - 0.1307) /
  0.3081 (a table lookup: ~10x faster than the arithmetic on 47M pixels, same values)."""
  return _NORMALIZED[np.asarray(images, np.uint8)]


def standardize_pooled(images: np.ndarray) -> np.ndarray:
  """The authors' preprocessing: each pixel standardised with the mean and std of ``images``
  (train and test pooled), std + 0.001."""
  pixels = images.astype(np.float32)
  return (pixels - pixels.mean(axis=0)) / (pixels.std(axis=0) + 0.001)


def ordered_digest(*arrays: np.ndarray) -> str:
  """sha256 of ``arrays`` in their order: equal only for the same examples in the same order
  (a resumed run checks it trains on exactly the data it started with)."""
  digest = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(a)
    digest.update(str((a.dtype, a.shape)).encode() + a.tobytes())
  return digest.hexdigest()


def load_mnist(source: str = "tfds", data_dir: str = "", download: bool = True) -> Mnist:
  """MNIST from ``source``: 'tfds' (data_dir: a TFDS data dir; '' = $TFDS_DATA_DIR or TFDS's
  default) or 'idx' (data_dir: a directory holding the four IDX files, gzipped or not)."""
  if source == "tfds":
    return load_tfds(data_dir or None, download)
  if source == "idx":
    if not data_dir:
      raise DataError("data_source='idx' needs data_dir: the directory holding the four MNIST "
                      "IDX files (e.g. --config.data_dir=../shared/data/mnist)")
    return load_idx_dir(data_dir)
  raise DataError(f"data_source={source!r} is not one of {SOURCES}")


# What to do without internet; every "no MNIST here" message ends with it.
OFFLINE_ADVICE = ("Without internet, point TFDS at a prepared copy (--config.data_dir=DIR or the "
                  "TFDS_DATA_DIR environment variable, e.g. ../shared/data/tensorflow_datasets), "
                  "or read the raw IDX files with --config.data_source=idx "
                  "--config.data_dir=DIR (e.g. ../shared/data/mnist).")


def _offline_help(where: str) -> str:
  return f"MNIST was not found in {where}. {OFFLINE_ADVICE}"


# fingerprint() of genuine MNIST (LeCun et al.'s 60k + 10k examples).
MNIST_FINGERPRINT = "62c0f60c287fd0d87e197bfd49a1e29b1486ce17cf75e31d9d5c1afa9ba01622"
_ARRAY_KEYS = ("train_images", "train_labels", "test_images", "test_labels")


def tfds_data_dir(data_dir: str | None = None) -> str:
  """The TFDS data dir TFDS itself would use: data_dir, else $TFDS_DATA_DIR, else
  ~/tensorflow_datasets; absolute."""
  chosen = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.join("~", "tensorflow_datasets")
  return os.path.abspath(os.path.expanduser(chosen))


def tfds_cache_path(data_dir: str) -> str:
  """The array file caching MNIST of TFDS data dir ``data_dir`` (one per data dir)."""
  tag = hashlib.sha1(data_dir.encode()).hexdigest()[:12]
  return os.path.join(cache.cache_dir(), f"mnist-tfds-{tag}.npz")


def _read_cache(path: str) -> Mnist | None:
  try:
    with np.load(path) as f:
      mnist = Mnist(*(f[k] for k in _ARRAY_KEYS))
    return _checked(mnist, path)
  except (OSError, ValueError, KeyError, zipfile.BadZipFile, DataError, EOFError):
    return None  # missing or damaged: rebuilt from TFDS


def load_tfds(data_dir: str | None, download: bool) -> Mnist:
  """MNIST through tensorflow-datasets, in TFDS's example order.

  TFDS (and TensorFlow under it) runs in a child process that prepares the data once and
  caches it as one array file (``tfds_cache_path``); this process never imports TensorFlow.
  """
  if data_dir and not download and not os.path.isdir(data_dir):
    raise DataError(f"data_dir={data_dir!r} does not exist and download=False. "
                    + _offline_help(data_dir))
  resolved = tfds_data_dir(data_dir)
  cache_path = tfds_cache_path(resolved)
  mnist = _read_cache(cache_path)
  if mnist is not None:
    return mnist
  try:
    os.makedirs(os.path.dirname(cache_path), exist_ok=True)
  except OSError as e:
    raise DataError(f"the array cache {os.path.dirname(cache_path)} cannot be created ({e}): "
                    f"set {cache.CACHE_ENV} to a writable directory") from e
  from fedprox_jax import tfds_worker  # no TensorFlow import here: the child does that
  cmd = [sys.executable, "-m", "fedprox_jax.tfds_worker", f"--data_dir={resolved}",
         f"--download={int(bool(download))}", f"--out={cache_path}"]
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
         "PYTHONPATH": os.pathsep.join(filter(None, [_PROJECT_ROOT, os.environ.get("PYTHONPATH")]))}
  proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  if proc.returncode != 0:
    lines = proc.stderr.strip().splitlines()
    reported = [line[len(tfds_worker.ERROR_PREFIX):] for line in lines
                if line.startswith(tfds_worker.ERROR_PREFIX)]
    if reported:
      raise DataError(reported[-1])
    raise DataError(f"loading MNIST through tensorflow-datasets failed in its worker process "
                    f"(exit {proc.returncode}): {lines[-1] if lines else 'no message'}. Use "
                    "--config.data_source=idx --config.data_dir=DIR to read the raw IDX files "
                    "instead.")
  mnist = _read_cache(cache_path)
  if mnist is None:
    raise DataError(f"the TFDS worker wrote no readable {cache_path}: check the disk it is on, "
                    f"or set {cache.CACHE_ENV} to another directory")
  return mnist


def _read_maybe_gz(directory: str, stem: str) -> tuple[bytes, str]:
  for name in (stem, stem + ".gz"):
    path = os.path.join(directory, name)
    if os.path.exists(path):
      try:
        if name.endswith(".gz"):
          with gzip.open(path, "rb") as f:
            return f.read(), path
        with open(path, "rb") as f:
          return f.read(), path
      except (OSError, EOFError) as e:
        raise DataError(f"{path} could not be read ({e}); the file is corrupt or truncated: "
                        "replace it with a fresh copy") from e
  raise DataError(f"{directory} has no {stem} (or {stem}.gz). data_source='idx' needs the four "
                  f"MNIST files {', '.join(IDX_FILES.values())} (gzipped or not).")


def parse_idx(raw: bytes, name: str = "IDX data") -> np.ndarray:
  """Parses an IDX file of unsigned bytes (MNIST's format), validating its header and length."""
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
    raise DataError(f"{name} is not an IDX file (bad magic number)")
  if raw[2] != 0x08:
    raise DataError(f"{name}: element type 0x{raw[2]:02x} is not unsigned byte (0x08)")
  ndim = raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataError(f"{name} is truncated inside its header")
  shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  expected = header + int(np.prod(shape))
  if len(raw) != expected:
    raise DataError(f"{name} holds {len(raw)} bytes but its header {shape} needs {expected}: "
                    "the file is truncated or corrupt")
  return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def load_idx_dir(directory: str) -> Mnist:
  if not os.path.isdir(directory):
    raise DataError(f"data_dir={directory!r} is not a directory. " + _offline_help(directory))
  arrays = {}
  for key, stem in IDX_FILES.items():
    raw, path = _read_maybe_gz(directory, stem)
    arrays[key] = parse_idx(raw, path)
  for split in ("train", "test"):
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    if images.ndim != 3 or images.shape[1:] != (28, 28):
      raise DataError(f"{split} images in {directory} have shape {images.shape}, not (N, 28, 28)")
    if labels.ndim != 1:
      raise DataError(f"{split} labels in {directory} have shape {labels.shape}, not (N,)")
  return _checked(Mnist(arrays["train_images"][..., None], arrays["train_labels"].astype(np.int32),
                        arrays["test_images"][..., None], arrays["test_labels"].astype(np.int32)),
                  directory)


def _checked(mnist: Mnist, where: str) -> Mnist:
  for split in ("train", "test"):
    images, labels = getattr(mnist, f"{split}_images"), getattr(mnist, f"{split}_labels")
    if images.ndim != 4 or images.shape[1:] != (28, 28, 1) or images.dtype != np.uint8:
      raise DataError(f"{where}: {split} images are {images.dtype} {images.shape}, not uint8 "
                      "(N, 28, 28, 1)")
    if len(images) != len(labels):
      raise DataError(f"{where}: {len(images)} {split} images but {len(labels)} labels")
    if len(labels) == 0:
      raise DataError(f"{where}: the {split} split is empty")
    if labels.min() < 0 or labels.max() > 9:
      raise DataError(f"{where}: {split} labels outside 0..9")
  return mnist
