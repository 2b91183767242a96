"""Test helpers: small generated federated data (no MNIST needed)."""

import gzip
import os

import jax
import jax.numpy as jnp
import numpy as np

from fedprox_jax.client import FederatedData
from fedprox_jax.data import IDX_FILES

# Heterogeneous client sizes; batch size 4 divides none of the larger ones.
HETERO_SIZES = (1, 7, 10, 23, 95)


def make_federated_data(sizes, seed=0, image_shape=(28, 28, 1)):
  rng = np.random.default_rng(seed)
  sizes = np.asarray(sizes, np.int32)
  n = int(sizes.sum())
  x = rng.normal(size=(n,) + tuple(image_shape)).astype(np.float32)
  y = rng.integers(0, 10, n).astype(np.int32)
  offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
  return FederatedData(jnp.asarray(x), jnp.asarray(y), jnp.asarray(offsets), jnp.asarray(sizes))


def tree_max_abs_diff(a, b):
  return max(float(jnp.max(jnp.abs(u - v))) for u, v in
             zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


SHARED_DATA = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


def write_idx_dir(directory, num_train, num_test, gz=True, seed=0):
  """Writes four small MNIST-format IDX files (generated digits) into ``directory``."""
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  arrays = {
      "train_images": rng.integers(0, 256, (num_train, 28, 28)).astype(np.uint8),
      "train_labels": (np.arange(num_train) % 10).astype(np.uint8),
      "test_images": rng.integers(0, 256, (num_test, 28, 28)).astype(np.uint8),
      "test_labels": (np.arange(num_test) % 10).astype(np.uint8),
  }
  for key, stem in IDX_FILES.items():
    a = arrays[key]
    raw = bytes([0, 0, 0x08, a.ndim]) + b"".join(d.to_bytes(4, "big") for d in a.shape) + a.tobytes()
    path = os.path.join(str(directory), stem + (".gz" if gz else ""))
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
      f.write(raw)
  return arrays
