"""TFDS -> one .npz array file, run in a child process by ``data.load_tfds``.

TFDS reads (and prepares) MNIST through TensorFlow, whose import costs seconds and ~0.6 GB of
RAM and which would claim GPU memory. Running it here, once per TFDS data dir, keeps
TensorFlow out of the training process: later runs read the cached arrays in milliseconds.

  python -m fedprox_jax.data.tfds_worker --data_dir=DIR --download=1 --out=FILE.npz

Exit 0: FILE.npz holds train/test images and labels in TFDS's order. Exit 3: the last line of
stderr is ``ERROR_PREFIX`` + one line for the user (what failed and what to do).
Environment: ``FEDPROX_JAX_MNIST_URL`` downloads the four IDX .gz files from that mirror instead
of TFDS's URL. Whatever the source, the prepared arrays must have genuine MNIST's fingerprint.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import urllib.parse

from fedprox_jax.data import mnist as data
from fedprox_jax import files  # numpy only: no TensorFlow until _import_tfds

ERROR_PREFIX = data.WORKER_ERROR_PREFIX
MIRROR_ENV = "FEDPROX_JAX_MNIST_URL"
CONNECT_TIMEOUT_S = 5.0
DOWNLOAD_RETRIES = 2  # TFDS's default (10, with back-off) takes minutes to give up offline


class WorkerError(Exception):
  """A failure with a message for the user."""


def check_reachable(url: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
  """Raises WorkerError within ~``timeout`` s when ``url``'s host cannot be connected to."""
  parts = urllib.parse.urlsplit(url)
  host = parts.hostname or ""
  port = parts.port or (443 if parts.scheme == "https" else 80)
  try:
    socket.create_connection((host, port), timeout=timeout).close()
  except OSError as e:
    raise WorkerError(
        f"its download host {host}:{port} cannot be reached ({type(e).__name__}: {e}): this "
        "machine looks offline. " + data.OFFLINE_ADVICE)


def _import_tfds():
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")  # this process never needs the GPU
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import dataset_builder  # noqa: F401  (lazy imports inside)
  except ImportError as e:
    raise WorkerError(_missing_package(e)) from e
  return tfds


def _missing_package(e: ImportError) -> str:
  return (f"tensorflow-datasets cannot run: {type(e).__name__}: {e} (a missing package, not a "
          "network problem). Install the project's requirements (pip install -r "
          "requirements.txt), or read the raw IDX files with --config.data_source=idx "
          "--config.data_dir=DIR.")


def _use_mirror(tfds, mirror: str) -> str:
  """Points TFDS's MNIST builder at ``mirror``. TFDS's registered checksums are of the original
  .gz files and a mirror may compress differently, so the content is checked instead (genuine
  MNIST's fingerprint, after preparation)."""
  mnist_cls = tfds.image_classification.MNIST
  mirror = mirror if mirror.endswith("/") else mirror + "/"
  mnist_cls.url_infos  # noqa: B018  TFDS's own checksum lookup runs, as in a download from Google
  mnist_cls.URL = mirror
  mnist_cls.url_infos = {}
  return mirror


def export(data_dir: str, download: bool, out: str, allow_modified: bool = False) -> None:
  tfds = _import_tfds()
  import numpy as np
  from tensorflow_datasets.core.download import downloader

  mirror = os.environ.get(MIRROR_ENV, "")
  url = _use_mirror(tfds, mirror) if mirror else tfds.image_classification.MNIST.URL
  damaged = (f"Delete {os.path.join(data_dir, 'mnist')} and run again to re-download it "
             "(--config.download=True), or point --config.data_dir at another copy.")
  try:
    builder = tfds.builder("mnist", data_dir=data_dir)
  except ImportError:
    raise
  except Exception as e:  # a damaged dataset_info.json / features.json
    raise WorkerError(f"the prepared MNIST in {data_dir} is damaged ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}). " + damaged) from e
  if not builder.is_prepared():
    leftovers = [os.path.join(root, f)
                 for root, _, files in os.walk(os.path.join(data_dir, "mnist")) for f in files]
    if leftovers and not download:
      raise WorkerError(f"{os.path.join(data_dir, 'mnist')} holds an incomplete or damaged MNIST "
                        f"({len(leftovers)} files, e.g. {leftovers[0]}; TFDS does not see a "
                        "prepared dataset there). " + damaged)
    if not download:
      raise WorkerError(f"MNIST is not in the TFDS data dir {data_dir} and download=False. "
                        "Set --config.download=True on a machine that is online, or point at "
                        "the data. " + data.OFFLINE_ADVICE)
    try:
      check_reachable(url)
    except WorkerError as e:
      raise WorkerError(f"MNIST is not in the TFDS data dir {data_dir}, and {e}") from e
    downloader.MAX_RETRIES = DOWNLOAD_RETRIES
    try:
      builder.download_and_prepare()
    except ImportError:
      raise  # a missing package, reported as such by main()
    except Exception as e:  # TFDS wraps network failures in many types
      text = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
      network = any(w in text for w in ("Connection", "Timeout", "resolve", "Max retries",
                                        "DownloadError", "HTTPError", "unreachable"))
      raise WorkerError(
          (f"downloading MNIST from {url} into {data_dir} failed ({text}). "
           + (data.OFFLINE_ADVICE if network else "This is not a network failure: the message "
              "above says what went wrong (a full disk, a permission, a damaged download dir "
              f"under {data_dir}/downloads)."))) from e
  try:
    train, test = tfds.as_numpy(builder.as_dataset(split=["train", "test"], batch_size=-1))
  except Exception as e:
    raise WorkerError(f"TFDS could not read its prepared MNIST in {data_dir} "
                      f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): the "
                      f"files are damaged. Delete {data_dir}/mnist and run again to re-download "
                      "it, or use another copy.") from e
  mnist = data.Mnist(train["image"].astype(np.uint8), train["label"].astype(np.int32),
                     test["image"].astype(np.uint8), test["label"].astype(np.int32))
  if not allow_modified and data.fingerprint(mnist) != data.MNIST_FINGERPRINT:
    raise WorkerError(f"the MNIST that TFDS prepared in {data_dir} is not genuine MNIST (its "
                      "examples differ from the published files"
                      + (f", downloaded from the mirror {url}" if mirror else "")
                      + f"). Delete {data_dir}/mnist and {data_dir}/downloads and run again.")
  # A reader never sees a half-written cache, and a name planted in the cache directory (a
  # symbolic link) is never written through.
  with files.atomic_write(out, "wb") as f:
    np.savez(f, **mnist._asdict())


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--download", type=int, choices=(0, 1), required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--allow_modified", type=int, choices=(0, 1), default=0)
  args = parser.parse_args(argv)
  try:
    export(args.data_dir, bool(args.download), args.out, bool(args.allow_modified))
  except ImportError as e:  # TFDS imports some of its dependencies lazily, deep in a call
    print(ERROR_PREFIX + _missing_package(e), file=sys.stderr)
    return 3
  except WorkerError as e:
    print(ERROR_PREFIX + str(e), file=sys.stderr)
    return 3
  return 0


if __name__ == "__main__":
  sys.exit(main())
