"""Loading MNIST as numpy arrays: through tensorflow-datasets, or from raw IDX files.

Both sources return the same ``Mnist`` (uint8 images [N, 28, 28, 1], int32 labels), in the same
order: TFDS's, which the IDX route reproduces (``tfds_order``), so that ``data_source`` never
changes a result and a run started on one source resumes on the other. TFDS runs
in a child process (``tfds_worker``) that caches its arrays, so TensorFlow never enters the
training process (its import costs seconds and ~0.6 GB, and it would claim GPU memory).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from typing import NamedTuple

import numpy as np
from absl import logging

from fedprox_jax import cache, files
from fedprox_jax.data import partition
from fedprox_jax.data.federation import Federation, federated
from fedprox_jax.errors import ConfigError
from fedprox_jax.files import ordered_digest
from fedprox_jax.errors import DataError

_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the seed's torchvision Normalize constants
SOURCES = ("tfds", "idx")
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}


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


def load_mnist(source: str = "tfds", data_dir: str = "", download: bool = True,
               allow_modified: bool = False) -> Mnist:
  """MNIST from ``source``: 'tfds' (data_dir: a TFDS data dir; '' = $TFDS_DATA_DIR or TFDS's
  default) or 'idx' (data_dir: a directory holding the four IDX files, gzipped or not).
  ``allow_modified`` lets the TFDS path keep data that is not genuine MNIST; the caller checks
  what was read with ``check_genuine``."""
  if source == "tfds":
    return load_tfds(data_dir or None, download, allow_modified)
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
                  "--config.data_dir=DIR (e.g. ../shared/data/mnist); from Python or a "
                  "notebook, set the config's fields: c.data_source = 'idx', c.data_dir = DIR.")


# The TFDS worker's time limit (download and preparation; a local copy takes ~20 s).
# The one line of the worker's stderr meant for the user starts with this.
WORKER_ERROR_PREFIX = "fedprox_jax data error: "
TIMEOUT_ENV, DEFAULT_TIMEOUT_S = "FEDPROX_JAX_DATA_TIMEOUT", 1800.0
# A download that receives nothing for this long is stopped (TFDS reads 8 kB blocks: a mirror
# trickling a byte a second shows no progress at all).
STALL_ENV, DEFAULT_STALL_S = "FEDPROX_JAX_DATA_STALL", 120.0
PROGRESS_S = 10.0  # how often a download reports its bytes and rate
MNIST_DOWNLOAD_BYTES = 11_594_722  # the four .gz files


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


# ordered_digest() of genuine MNIST in the orders its sources give it: one sha256 pass (~0.15 s)
# checks every load; another order of the same examples is recognised by fingerprint().
GENUINE_ORDERS = {
    "2820b1d420c12e801da73fdd078cd67321128386b03468a17dd70333d2264360": "TFDS 3.0.1's order",
}


def is_genuine(mnist: Mnist) -> bool:
  """Whether ``mnist`` holds exactly the published MNIST examples (any order)."""
  return (ordered_digest(*mnist) in GENUINE_ORDERS
          or fingerprint(mnist) == MNIST_FINGERPRINT)


def check_genuine(mnist: Mnist, where: str, allow_modified: bool) -> bool:
  """Refuses data that is not genuine MNIST with one line, unless ``allow_modified`` (then a
  warning); returns whether it is genuine."""
  if is_genuine(mnist):
    return True
  what = (f"{where} is not genuine MNIST: its examples differ from the published files "
          f"({len(mnist.train_labels)} train and {len(mnist.test_labels)} test examples; a "
          "changed, damaged or partial copy)")
  if not allow_modified:
    raise DataError(f"{what}. Replace it with a fresh copy, or pass "
                    "--config.allow_modified_mnist=True to train on it anyway (recorded in "
                    "config.json as genuine_mnist=False)")
  logging.warning("%s: training on it, as allow_modified_mnist=True asks (config.json records "
                  "genuine_mnist=False)", what)
  return False


# The largest data file read (the array cache is ~55 MB, the raw training images 47 MB).
MAX_DATA_BYTES = 1 << 30


def _open_regular(path: str) -> io.BytesIO:
  """``path``'s bytes if it is a regular file (``files.read_regular``: a FIFO or a device would
  block or never end), as a file object."""
  try:
    return io.BytesIO(files.read_regular(path, MAX_DATA_BYTES, "data file"))
  except ValueError as e:
    raise DataError(f"{path} is not a readable data file: {e}") from None


def _read_cache(path: str, allow_modified: bool = False) -> Mnist | None:
  """The cached arrays if they are genuine MNIST in TFDS's order (or ``allow_modified``);
  None (rebuilt) otherwise."""
  try:
    with _open_regular(path) as raw, np.load(raw) as f:
      mnist = Mnist(*(f[k] for k in _ARRAY_KEYS))
    mnist = _checked(mnist, path)
  except FileNotFoundError:
    return None
  except (OSError, ValueError, KeyError, zipfile.BadZipFile, DataError, EOFError) as e:
    logging.warning("the array cache %s is damaged (%s): rebuilt from TFDS", path, e)
    return None
  if not allow_modified and ordered_digest(*mnist) not in GENUINE_ORDERS:
    logging.warning("the array cache %s is not genuine MNIST in TFDS's order (changed or "
                    "damaged): rebuilt from TFDS", path)
    return None
  return mnist


def load_tfds(data_dir: str | None, download: bool, allow_modified: bool = False) -> Mnist:
  """MNIST through tensorflow-datasets, in TFDS's example order.

  TFDS (and TensorFlow under it) runs in a child process that prepares the data once and
  caches it as one array file (``tfds_cache_path``); this process never imports TensorFlow.
  """
  if data_dir and not download and not os.path.isdir(data_dir):
    raise DataError(f"data_dir={data_dir!r} does not exist and download=False. "
                    + _offline_help(data_dir))
  resolved = tfds_data_dir(data_dir)
  cache_path = tfds_cache_path(resolved)
  mnist = _read_cache(cache_path, allow_modified)
  if mnist is not None:
    return mnist
  try:
    os.makedirs(os.path.dirname(cache_path), exist_ok=True)
  except OSError as e:
    raise DataError(f"the array cache {os.path.dirname(cache_path)} cannot be created ({e}): "
                    f"set {cache.CACHE_ENV} to a writable directory") from e
  cmd = [sys.executable, "-m", "fedprox_jax.data.tfds_worker", f"--data_dir={resolved}",
         f"--download={int(bool(download))}", f"--out={cache_path}",
         f"--allow_modified={int(bool(allow_modified))}"]
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
         "PYTHONPATH": os.pathsep.join(filter(None, [_PROJECT_ROOT, os.environ.get("PYTHONPATH")]))}
  returncode, stderr = _run_worker(cmd, env, resolved)
  if returncode != 0:
    lines = stderr.strip().splitlines()
    reported = [line[len(WORKER_ERROR_PREFIX):] for line in lines
                if line.startswith(WORKER_ERROR_PREFIX)]
    if reported:
      raise DataError(reported[-1])
    raise DataError(f"loading MNIST through tensorflow-datasets failed in its worker process "
                    f"(exit {returncode}): {lines[-1] if lines else 'no message'}. Use "
                    "--config.data_source=idx --config.data_dir=DIR to read the raw IDX files "
                    "instead.")
  mnist = _read_cache(cache_path, allow_modified)
  if mnist is None:
    raise DataError(f"the TFDS worker wrote no readable {cache_path}: check the disk it is on, "
                    f"or set {cache.CACHE_ENV} to another directory")
  return mnist


def _download_bytes(data_dir: str) -> int | None:
  """Bytes in TFDS's unfinished downloads under ``data_dir`` (the ``*.tmp.*`` directories
  under its ``downloads/``), or None while no download is in progress."""
  total, found = 0, False
  for root, _, names in os.walk(os.path.join(data_dir, "downloads")):
    if ".tmp." in root:
      found = True
      for name in names:
        with contextlib.suppress(OSError):
          total += os.stat(os.path.join(root, name)).st_size
  return total if found else None


def _run_worker(cmd: list, env: dict, data_dir: str) -> tuple[int, str]:
  """Runs the TFDS worker -> (exit code, stderr). While it downloads, says every
  ``PROGRESS_S`` how many bytes arrived and at what rate; stops it when no byte arrived for
  ``$FEDPROX_JAX_DATA_STALL`` s (a stalled mirror: TFDS itself would wait for ever) or when
  the whole preparation passes ``$FEDPROX_JAX_DATA_TIMEOUT`` s."""
  timeout = float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S)
  stall = float(os.environ.get(STALL_ENV) or DEFAULT_STALL_S)
  start = time.monotonic()
  with tempfile.TemporaryFile("w+") as err:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
    try:
      last_bytes, last_change, last_report, first = None, start, start, None
      while proc.poll() is None:
        time.sleep(0.5)
        now, got = time.monotonic(), _download_bytes(data_dir)
        if got is not None and first is None:
          first = (now, got)
          logging.info("downloading MNIST into %s", os.path.join(data_dir, "downloads"))
        if got != last_bytes:
          last_bytes, last_change = got, now
        elif got is not None and now - last_change > stall:
          raise DataError(
              f"downloading MNIST stalled: no data arrived for {stall:g} s ({got} bytes so "
              f"far, {_rate(got - first[1], now - first[0])}); the worker was stopped. "
              f"{OFFLINE_ADVICE} ({STALL_ENV}=SECONDS sets how long to wait.)")
        if got is not None and now - last_report >= PROGRESS_S:
          last_report = now
          logging.info("downloading MNIST: %.1f MB of ~%.1f MB so far, %s", got / 1e6,
                       MNIST_DOWNLOAD_BYTES / 1e6, _rate(got - first[1], now - first[0]))
        if now - start > timeout:
          raise DataError(
              f"preparing MNIST through tensorflow-datasets took more than {timeout:g} s "
              + (f"({last_bytes} bytes downloaded so far) " if last_bytes is not None else "")
              + f"and was stopped. {OFFLINE_ADVICE} ({TIMEOUT_ENV}=SECONDS sets the limit.)")
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
    err.seek(0)
    return proc.returncode, err.read()


def _rate(num_bytes: int, seconds: float) -> str:
  per_second = num_bytes / max(seconds, 1e-9)
  return f"{per_second / 1e3:.1f} kB/s" if per_second >= 100 else f"{per_second:.1f} bytes/s"


def _read_maybe_gz(directory: str, stem: str) -> tuple[bytes, str]:
  found = []
  for name in (stem, stem + ".gz"):
    path = os.path.join(directory, name)
    if os.path.exists(path):
      try:
        with _open_regular(path) as raw:
          found.append((gzip.open(raw).read() if name.endswith(".gz") else raw.read(), path))
      except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path} could not be read ({e}); the file is corrupt or truncated: "
                        "replace it with a fresh copy") from e
  if len(found) == 2 and found[0][0] != found[1][0]:
    raise DataError(f"{found[0][1]} and {found[1][1]} both exist and hold different data: "
                    "delete the one that is not the genuine file")
  if found:
    return found[0]
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


@functools.lru_cache(maxsize=4)
def tfds_order(num_examples: int, split: str) -> np.ndarray:
  """The order in which TFDS's MNIST builder stores a split's examples, as indices into the IDX
  file: it keys each example by its index in the file (``_generate_examples``) and writes them
  sorted by the md5 of the split's name followed by the key (tensorflow_datasets/core/
  hashing.py: the split name salts the hash). Tested: the IDX files in this order are TFDS
  3.0.1's MNIST exactly."""
  salted = hashlib.md5(split.encode())

  def key(index: int) -> int:
    h = salted.copy()
    h.update(str(index).encode())
    return int(h.hexdigest(), 16)
  return np.array(sorted(range(num_examples), key=key), np.int64)


def load_idx_dir(directory: str) -> Mnist:
  """MNIST from the four IDX files in ``directory`` (gzipped or not), in TFDS's order."""
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
  for split in ("train", "test"):  # TFDS's order; unequal counts are refused by _checked
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    if len(images) == len(labels):
      order = tfds_order(len(labels), split)
      arrays[f"{split}_images"], arrays[f"{split}_labels"] = images[order], labels[order]
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


# The data set entry (``data/datasets.py``): the raw examples once, then a federation per
# partition.

NUM_CLASSES = 10
# The paper's Table (MNIST, 1000 devices): printed next to our partition's statistics.
PAPER_STATS = {"clients": 1000, "examples": 69035, "mean": 69, "std": 106}


def check(c) -> None:
  """MNIST's own fields."""
  if c.data_source not in SOURCES:
    raise ConfigError(f"config.data_source={c.data_source!r}: use one of {SOURCES}")


def load(c, source: Mnist | None = None, genuine: bool | None = None) -> tuple:
  """(MNIST, whether it is genuine) for config ``c``: loaded as ``c`` says (and refused
  unless genuine or allow_modified_mnist) when ``source`` is None; the caller's own arrays
  are recorded as they are (``genuine``: already known)."""
  if source is None:
    source = load_mnist(c.data_source, c.data_dir, c.download, c.allow_modified_mnist)
    return source, check_genuine(
        source, f"the MNIST read from {c.data_dir or 'the default TFDS data dir'} "
        f"(data_source={c.data_source})", c.allow_modified_mnist)
  return source, is_genuine(source) if genuine is None else genuine


def federation(c, mnist: Mnist) -> Federation:
  """The clients' training data and the test set of ``c.protocol``, as host arrays.

  * 'seed' (the Flower baseline): the 60k training set is partitioned; each client holds out
    int(n / (1 / client_val_fraction)) examples that never train (Flower's unused validation
    split); the 10k test set is the server's centralised test set; pixels normalised with
    mean 0.1307, std 0.3081.
  * 'paper' (the authors' code): train and test pooled (70k), each pixel standardised with the
    pooled mean and std (+0.001), partitioned, each client's examples shuffled and split
    90 % train / 10 % test; the test set is all clients' test splits together.
  """
  if c.protocol == "paper":
    images = np.concatenate([mnist.train_images, mnist.test_images])
    labels = np.concatenate([mnist.train_labels, mnist.test_labels])
    if c.train_subset:
      images, labels = images[:c.train_subset], labels[:c.train_subset]
    split = partition.split(c, labels, NUM_CLASSES)
    train_split, test_split = partition.split_each_client(split, 0.9, c.partition_seed)
    if train_split.sizes.min() < 1:
      raise ConfigError("protocol='paper' gives a client no training example after its 90/10 "
                        "split: raise min_per_client to at least 2")
    x = standardize_pooled(images)
    train, test_order = federated(x, labels, train_split), test_split.order
    stats = {**partition.partition_stats(split, labels, NUM_CLASSES), "paper": PAPER_STATS,
             "test_examples": len(test_order)}
    test_images, test_labels = images[test_order], labels[test_order]
    test_x = x[test_order]
  else:
    images, labels = mnist.train_images, mnist.train_labels
    if c.train_subset:
      images, labels = images[:c.train_subset], labels[:c.train_subset]
    split = partition.split(c, labels, NUM_CLASSES)
    train_split = partition.hold_out(split, c.client_val_fraction, c.partition_seed)
    train = federated(images, labels, train_split)
    train = train._replace(x=normalize(train.x))
    test_images, test_labels = mnist.test_images, mnist.test_labels
    test_x = normalize(test_images)
    stats = {**partition.partition_stats(split, labels, NUM_CLASSES),
             "test_examples": len(test_labels),
             "held_out_examples": int(split.sizes.sum() - train_split.sizes.sum())}
  stats.update(train_examples=int(train.sizes.sum()), max_train=int(train.sizes.max()),
               data_sha256=ordered_digest(images[train_split.order], train.y, train.sizes,
                                          test_images, test_labels))
  return Federation(train, test_x, np.asarray(test_labels, np.int32), NUM_CLASSES, stats)
