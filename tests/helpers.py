"""Test helpers: small generated data (no MNIST needed), tiny configs, row comparisons."""

import gzip
import os

import sys

import jax
import jax.numpy as jnp
import numpy as np

from fedprox_jax.federated_data import FederatedData
from fedprox_jax.data.mnist import IDX_FILES

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


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
from configs import mnist as mnist_config  # noqa: E402
from fedprox_jax.data import mnist as data_lib  # noqa: E402
from fedprox_jax.run import config as config_lib  # noqa: E402


def tiny_mnist(num_train=2000, num_test=200, seed=0):
  """An MNIST-shaped dataset whose digits are learnable (class means plus noise)."""
  rng = np.random.default_rng(seed)
  labels = (np.arange(num_train) % 10).astype(np.int32)
  means = rng.integers(0, 256, (10, 28, 28, 1))
  noise = lambda n: rng.integers(-40, 40, (n, 28, 28, 1))
  train = np.clip(means[labels] + noise(num_train), 0, 255).astype(np.uint8)
  test_labels = (np.arange(num_test) % 10).astype(np.int32)
  test = np.clip(means[test_labels] + noise(num_test), 0, 255).astype(np.uint8)
  return data_lib.Mnist(train, labels, test, test_labels)


def tiny_run_config(**overrides):
  """A single run of a few seconds: logistic regression, 20 clients, 5 per round."""
  c = mnist_config.get_config("fedprox")
  c.update(dict(model="mlr", num_clients=20, clients_per_round=5, num_rounds=6, local_epochs=2,
                checkpoint_every=2, stragglers_fraction=0.5, tensorboard=False))
  c.update(overrides)
  return c


def tiny_sweep_config(variant="figure1_paper", **overrides):
  """A sweep of 8 experiments (2 algorithms x 2 straggler levels x 2 seeds), 3 rounds."""
  c = mnist_config.get_config(variant)
  c.update(dict(model="mlr", num_clients=20, clients_per_round=5, num_rounds=3,
                local_epochs=2, min_per_client=10))
  c.sweep.update(dict(algorithms="fedavg,fedprox", stragglers="0.5,0.9", seeds=2))
  c.update(overrides)
  return config_lib.resolve(c)  # protocol values filled in, as sweep.run does


def assert_same_rows(a: list, b: list, keys, rtol=0.0, atol=0.0, rounds=None):
  """Rows of two runs agree on ``keys`` round by round; never passes on empty results."""
  assert len(a) == len(b) > 0, (len(a), len(b))
  assert [r["round"] for r in a] == [r["round"] for r in b]
  if rounds is not None:
    assert [r["round"] for r in a] == list(rounds)
  for x, y in zip(a, b):
    for k in keys:
      if x[k] is None or y[k] is None:
        assert x[k] is None and y[k] is None, (k, x[k], y[k])
      else:
        np.testing.assert_allclose(x[k], y[k], rtol=rtol, atol=atol, err_msg=f"{k} round {x['round']}")


def read_rows(path, drop=("wall_time",)):
  """A JSON-lines file's rows without the fields that differ between identical runs."""
  import json
  with open(path) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in f]


def start_launch(args):
  """launch.py with ``args`` in a child process (CPU), its stdout and stderr piped."""
  import subprocess
  return subprocess.Popen([sys.executable, os.path.join(ROOT, "launch.py"), *args], cwd=ROOT,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def wait_for_lines(proc, path, count, timeout=300):
  """Waits until file ``path`` holds ``count`` lines; fails if ``proc`` ends first or time runs
  out."""
  import time
  deadline = time.time() + timeout
  while not (os.path.exists(path) and open(path).read().count("\n") >= count):
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    assert time.time() < deadline, f"{path}: not {count} lines within {timeout} s"
    time.sleep(0.02)
