"""Test helpers: small generated federated data (no MNIST needed)."""

import jax
import jax.numpy as jnp
import numpy as np

from fedprox_jax.client import FederatedData

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
