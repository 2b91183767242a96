"""The paper's synthetic federations: Synthetic(alpha, beta) and Synthetic-IID.

As the authors' generators (litian96/FedProx data/synthetic_*/generate_synthetic.py and
data/synthetic_iid/generate_iid.py), draw for draw from one numpy ``RandomState(seed)`` where
they use numpy's unseeded global stream, so ``generate(alpha, beta, iid, seed)`` is their
dataset for ``np.random.seed(seed)`` (tests/test_synthetic.py replays their loop):

* device k holds ``lognormal(4, 2)`` (truncated to an integer) + 50 examples;
* Synthetic(alpha, beta): u_k ~ N(0, alpha) and B_k ~ N(0, beta) (numpy's scale: alpha and beta
  are standard deviations), the device's model W_k ~ N(u_k, 1) [60 x 10] and b_k ~ N(u_k, 1),
  its feature mean v_k ~ N(B_k, 1) [60];
* Synthetic-IID: one model W, b ~ N(0, 1) shared by all devices, v_k = 0;
* x ~ N(v_k, Sigma), Sigma diagonal with Sigma_jj = j^-1.2; y = argmax(softmax(W_k x + b_k)).

Each device's examples are then shuffled and split 90 % train / 10 % test (``int(0.9 n)``
train, the authors' rule; their shuffle used Python's unseeded ``random``, ours the seed).
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

import numpy as np

from fedprox_jax import files
from fedprox_jax.core import models
from fedprox_jax.data import partition
from fedprox_jax.errors import ConfigError
from fedprox_jax.data.federation import Federation, federated

NUM_DEVICES = 30
NUM_FEATURES = 60
NUM_CLASSES = 10


class Generated(NamedTuple):
  x: np.ndarray        # [N, 60] float32, device after device
  y: np.ndarray        # [N] int32
  sizes: np.ndarray    # [num_devices] int32 examples per device
  weights: np.ndarray  # [num_devices, 60, 10] each device's labelling model W_k
  biases: np.ndarray   # [num_devices, 10] b_k
  means: np.ndarray    # [num_devices, 60] v_k, the device's feature mean


def feature_variances(num_features: int = NUM_FEATURES) -> np.ndarray:
  """The diagonal of Sigma: j^-1.2 for j = 1..num_features."""
  return np.power(np.arange(1, num_features + 1, dtype=np.float64), -1.2)


def _labels(x, w, b):
  """argmax of the softmax of x w + b, row by row as the authors compute it."""
  logits = x @ w + b
  e = np.exp(logits)
  return np.argmax(e / e.sum(axis=1, keepdims=True), axis=1)


def generate(alpha: float, beta: float, iid: bool, seed: int,
             num_devices: int = NUM_DEVICES) -> Generated:
  """The federation of (alpha, beta) (ignored when ``iid``) for numpy seed ``seed``."""
  if alpha < 0 or beta < 0:
    raise ValueError(f"alpha={alpha} and beta={beta} must be >= 0 (standard deviations)")
  rng = np.random.RandomState(seed)
  d, c = NUM_FEATURES, NUM_CLASSES
  sizes = rng.lognormal(4, 2, num_devices).astype(int) + 50
  cov = np.diag(feature_variances(d))
  if iid:
    means = np.zeros((num_devices, d))
    w, b = rng.normal(0, 1, (d, c)), rng.normal(0, 1, c)
    weights, biases = np.repeat(w[None], num_devices, 0), np.repeat(b[None], num_devices, 0)
  else:
    mean_w = rng.normal(0, alpha, num_devices)  # u_k (the authors' mean_b is the same array)
    mean_x_centres = rng.normal(0, beta, num_devices)  # B_k
    means = np.stack([rng.normal(mean_x_centres[k], 1, d) for k in range(num_devices)])
    weights, biases = np.zeros((num_devices, d, c)), np.zeros((num_devices, c))
  xs, ys = [], []
  for k in range(num_devices):
    if not iid:  # drawn device by device, interleaved with its examples, as the authors do
      weights[k] = rng.normal(mean_w[k], 1, (d, c))
      biases[k] = rng.normal(mean_w[k], 1, c)
    x = rng.multivariate_normal(means[k], cov, sizes[k])
    xs.append(x)
    ys.append(_labels(x, weights[k], biases[k]))
  return Generated(x=np.concatenate(xs).astype(np.float32),
                    y=np.concatenate(ys).astype(np.int32), sizes=sizes.astype(np.int32),
                    weights=weights, biases=biases, means=means)


# A federation's name, as the authors' data directories: synthetic_iid, synthetic_A_B.
_NAME = re.compile(r"^(?:synthetic_)?(?:(iid)|([0-9.]+)_([0-9.]+))$")


def parse_name(name: str) -> tuple:
  """'iid' or 'A_B' (optionally prefixed 'synthetic_') -> (alpha, beta, iid)."""
  m = _NAME.match(name.strip())
  try:
    if m and m.group(1):
      return 0.0, 0.0, True
    if m:
      return float(m.group(2)), float(m.group(3)), False
  except ValueError:
    pass
  raise ValueError(f"{name!r} is not a synthetic federation: use iid or ALPHA_BETA with "
                   "ALPHA, BETA >= 0 (e.g. iid, 0_0, 0.5_0.5, 1_1)")


def name(alpha: float, beta: float, iid: bool) -> str:
  return "synthetic_iid" if iid else f"synthetic_{alpha:g}_{beta:g}"


# The data set entry (``data/datasets.py``).

def check(c) -> None:
  """The synthetic fields, and the fields of a split data set that do not apply here."""
  def require(ok, field, value, what):
    if not ok:
      raise ConfigError(f"config.{field}={value!r}: {what}")
  for field in ("alpha", "beta"):
    require(c.synthetic[field] >= 0 and math.isfinite(c.synthetic[field]), f"synthetic.{field}",
            c.synthetic[field], "must be a finite number >= 0 (a standard deviation)")
  require(not models.get(c.model).image_inputs, "model", c.model, "data='synthetic' has "
          f"{NUM_FEATURES} features, not images: use --config.model=mlr (the paper's model for it)")
  require(c.protocol == "paper", "protocol", c.protocol, "data='synthetic' follows the "
          "authors' code: use --config.protocol=paper (the seed's protocol is Flower's MNIST)")
  require(c.train_subset == 0, "train_subset", c.train_subset, "applies to data='mnist' only")
  require(not c.iid, "iid", c.iid, "applies to data='mnist' only: Synthetic-IID is "
          "--config.synthetic.iid=True")
  require(c.partition == "power_law", "partition", c.partition, "applies to data='mnist' "
          "only (a synthetic federation comes partitioned)")


def federations(c, item: str | None) -> tuple:
  """(name, config fields) of the federation ``item`` of sweep.federations (iid, ALPHA_BETA),
  or of the config's own (``item=None``)."""
  if item is None:
    s = c.synthetic
    alpha, beta, iid = s.alpha, s.beta, s.iid
  else:
    alpha, beta, iid = parse_name(item)
  return name(alpha, beta, iid), {"synthetic": {"alpha": alpha, "beta": beta, "iid": iid}}


def load(c, source=None, genuine=None) -> tuple:
  """Nothing to read: each federation is generated from its seed (``federation``)."""
  del c, source, genuine
  return None, None


def federation(c, source=None) -> Federation:
  """The paper's federation (c.synthetic, partition_seed) over num_clients devices, each split
  90 % train / 10 % test as the authors do; the test set is all devices' test splits."""
  del source
  s = c.synthetic
  fed = generate(s.alpha, s.beta, s.iid, c.partition_seed, c.num_clients)
  split = partition.from_sizes(fed.sizes)
  train_split, test_split = partition.split_each_client(split, 0.9, c.partition_seed)
  train = federated(fed.x, fed.y, train_split)
  test_x, test_y = fed.x[test_split.order], fed.y[test_split.order]
  stats = {**partition.partition_stats(split, fed.y, NUM_CLASSES),
           "federation": name(s.alpha, s.beta, s.iid),
           "test_examples": len(test_y), "train_examples": int(train.sizes.sum()),
           "max_train": int(train.sizes.max()),
           "data_sha256": files.ordered_digest(train.x, train.y, train.sizes, test_x, test_y)}
  return Federation(train, test_x, test_y, NUM_CLASSES, stats)
