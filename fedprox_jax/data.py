"""Loading MNIST as numpy arrays: through tensorflow-datasets, or from raw IDX files.

Both sources return the same ``Mnist`` (uint8 images [N, 28, 28, 1], int32 labels). TFDS is
imported only when used, and TensorFlow is kept off the GPUs first so JAX keeps their memory.
"""

from __future__ import annotations

import gzip
import os
from typing import NamedTuple

import numpy as np

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the seed's torchvision Normalize constants
SOURCES = ("tfds", "idx")
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}


class DataError(Exception):
  """A data problem the user can fix; the message says how."""


class Mnist(NamedTuple):
  train_images: np.ndarray  # uint8 [60000, 28, 28, 1] for MNIST
  train_labels: np.ndarray  # int32 [60000], values 0..9
  test_images: np.ndarray   # uint8 [10000, 28, 28, 1]
  test_labels: np.ndarray   # int32 [10000]


def normalize(images: np.ndarray) -> np.ndarray:
  """uint8 -> float32 scaled to [0, 1] and standardised like the seed: (x - 0.1307) / 0.3081."""
  return ((images.astype(np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD).astype(np.float32)


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


def _offline_help(where: str) -> str:
  return (f"MNIST was not found in {where} and could not be downloaded. Either point TFDS at a "
          "prepared copy (--config.data_dir=DIR or the TFDS_DATA_DIR environment variable, e.g. "
          "../shared/data/tensorflow_datasets), or read the raw IDX files with "
          "--config.data_source=idx --config.data_dir=DIR (e.g. ../shared/data/mnist), or "
          "allow the download with --config.download=True on a machine that is online.")


def load_tfds(data_dir: str | None, download: bool) -> Mnist:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")  # TF would otherwise reserve the GPU's memory
  except ImportError:
    pass
  import tensorflow_datasets as tfds

  where = data_dir or os.environ.get("TFDS_DATA_DIR") or "TFDS's default data dir"
  if data_dir and not os.path.isdir(data_dir):
    raise DataError(f"data_dir={data_dir!r} does not exist. " + _offline_help(where))
  try:
    splits = tfds.as_numpy(tfds.load("mnist", split=["train", "test"], batch_size=-1,
                                     data_dir=data_dir, download=download))
  except Exception as e:  # TFDS raises many types (AssertionError, DatasetNotFoundError, IO...)
    raise DataError(_offline_help(where) + f" (TFDS said: {type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''})") from e
  (train, test) = splits
  return _checked(Mnist(train["image"].astype(np.uint8), train["label"].astype(np.int32),
                        test["image"].astype(np.uint8), test["label"].astype(np.int32)),
                  f"TFDS ({where})")


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
    if len(images) != len(labels):
      raise DataError(f"{where}: {len(images)} {split} images but {len(labels)} labels")
    if len(labels) == 0:
      raise DataError(f"{where}: the {split} split is empty")
    if labels.min() < 0 or labels.max() > 9:
      raise DataError(f"{where}: {split} labels outside 0..9")
  return mnist
