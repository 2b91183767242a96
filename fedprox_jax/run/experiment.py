"""What one run (``simulate``) and one sweep (``sweep``) share: config validation, the set-up
of one experiment (data, partition, devices, model, round spec), evaluation, and the schema
of a metrics row.
"""

from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from fedprox_jax.data import mnist as data_lib
from fedprox_jax.run import distributed, protocols
from fedprox_jax.core import metrics, models, server
from fedprox_jax.data import partition, synthetic
from fedprox_jax.core.client import FederatedData
from fedprox_jax.errors import ConfigError

# The paper's Table (MNIST, 1000 devices): for printing next to our partition's statistics.
PAPER_STATS = {"clients": 1000, "examples": 69035, "mean": 69, "std": 106}
DATASETS = ("mnist", "synthetic")  # prepare_data's registry
MAX_SEED = 2**31 - 1  # jax.random.key and numpy's RandomState both take it



def _require(ok: bool, field: str, value, what: str):
  if not ok:
    raise ConfigError(f"config.{field}={value!r}: {what}")


def _require_float32(field: str, value, positive: bool = False) -> None:
  """A finite number >= 0 (> 0 with ``positive``) that float32, the training's precision,
  holds as such: 1e-46 is 0 there (no training at all) and 1e39 is inf."""
  bound = "> 0" if positive else ">= 0"
  _require(isinstance(value, (int, float)) and not isinstance(value, bool)
           and math.isfinite(value) and (value > 0 if positive else value >= 0), field, value,
           f"must be a finite number {bound}")
  as_trained = float(np.float32(value)) if abs(value) < 3.4e38 else math.inf
  tiny = float(np.finfo(np.float32).tiny)
  _require(math.isfinite(as_trained) and (value == 0 or as_trained >= tiny), field, value,
           f"{'overflows to inf' if not math.isfinite(as_trained) else 'is too small'} in "
           f"float32, the precision training computes in: use a value from {tiny:.3g} to 3.4e38"
           + ("" if positive else " (or 0)"))


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def validate_config(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks every field before any work is done; returns the config with its protocol's
  values in the fields it left unset (the config a run actually uses)."""
  _require(c.protocol in protocols.PROTOCOLS, "protocol", c.protocol,
           f"use one of {protocols.PROTOCOLS}")
  c = protocols.resolve(c)
  _require(c.model in models.MODEL_NAMES, "model", c.model, f"use one of {models.MODEL_NAMES}")
  _require(c.mlr_init in models.MLR_INITS, "mlr_init", c.mlr_init,
           f"use one of {models.MLR_INITS}")
  for field in ("conv_impl", "eval_conv_impl"):
    _require(c[field] in ("auto",) + models.CONV_IMPLS, field, c[field],
             f"use one of {('auto',) + models.CONV_IMPLS}")
  _require(c.mode in ("single", "sweep"), "mode", c.mode, "use 'single' or 'sweep'")
  _require(c.data_source in data_lib.SOURCES, "data_source", c.data_source,
           f"use one of {data_lib.SOURCES}")
  _require(c.data in DATASETS, "data", c.data, f"use one of {DATASETS}")
  if c.data == "synthetic":
    for field in ("alpha", "beta"):
      _require(c.synthetic[field] >= 0 and math.isfinite(c.synthetic[field]), f"synthetic.{field}",
               c.synthetic[field], "must be a finite number >= 0 (a standard deviation)")
    _require(c.model == "mlr", "model", c.model, "data='synthetic' has 60 features, not images: "
             "use --config.model=mlr (the paper's model for it)")
    _require(c.protocol == "paper", "protocol", c.protocol, "data='synthetic' follows the "
             "authors' code: use --config.protocol=paper (the seed's protocol is Flower's MNIST)")
    _require(c.train_subset == 0, "train_subset", c.train_subset, "applies to data='mnist' only")
    _require(not c.iid, "iid", c.iid, "applies to data='mnist' only: Synthetic-IID is "
             "--config.synthetic.iid=True")
  else:
    _require(not c.sweep.federations, "sweep.federations", c.sweep.federations,
             "applies to data='synthetic' only")
  for field in ("num_clients", "clients_per_round", "num_rounds", "local_epochs", "batch_size",
                "eval_every", "labels_per_client", "min_per_client", "checkpoint_every"):
    _require(_is_int(c[field]) and c[field] >= 1, field, c[field], "must be an integer >= 1")
  for field in ("seed", "partition_seed"):
    _require(_is_int(c[field]) and 0 <= c[field] <= MAX_SEED, field, c[field],
             f"must be an integer from 0 to {MAX_SEED}")
  _require(c.labels_per_client <= partition.NUM_CLASSES, "labels_per_client",
           c.labels_per_client, f"must be between 1 and {partition.NUM_CLASSES}")
  _require(c.clients_per_round <= c.num_clients, "clients_per_round", c.clients_per_round,
           f"cannot exceed num_clients={c.num_clients}")
  _require_float32("lr", c.lr, positive=True)
  _require_float32("mu", c.mu)
  _require_float32("weight_decay", c.weight_decay)
  _require(0 <= c.client_val_fraction < 1, "client_val_fraction", c.client_val_fraction,
           "must be in [0, 1)")
  _require(c.protocol == "seed" or c.client_val_fraction == 0, "client_val_fraction",
           c.client_val_fraction, "applies to protocol='seed' only (protocol='paper' holds out "
           "10 % of each client as its test set already): leave it unset")
  _require(0 <= c.stragglers_fraction <= 1, "stragglers_fraction", c.stragglers_fraction,
           "must be between 0 and 1")
  _require(c.lognormal_sigma > 0, "lognormal_sigma", c.lognormal_sigma, "must be > 0")
  for field, what in (("num_lanes", "backend default"), ("eval_batch_size", "backend default"),
                      ("num_devices", "all devices"), ("train_subset", "all")):
    _require(_is_int(c[field]) and c[field] >= 0, field, c[field],
             f"must be an integer >= 0 (0 = {what})")
  _require(c.straggler_rule in server.STRAGGLER_RULES, "straggler_rule", c.straggler_rule,
           f"use one of {server.STRAGGLER_RULES}")
  _require(c.sampling in server.SAMPLINGS, "sampling", c.sampling,
           f"use one of {server.SAMPLINGS}")
  _require(c.weighting in server.WEIGHTINGS, "weighting", c.weighting,
           f"use one of {server.WEIGHTINGS}")
  s = c.sweep
  _require(s.adaptive_mu_init is None or (s.adaptive_mu_init >= 0
                                           and math.isfinite(s.adaptive_mu_init)),
           "sweep.adaptive_mu_init", s.adaptive_mu_init, "must be a finite number >= 0 "
           "(or unset for the paper's: 1 on Synthetic-IID, 0 otherwise)")
  _require(s.mu > 0 and math.isfinite(s.mu), "sweep.mu", s.mu,
           "must be a finite number > 0 (the 'fedprox' algorithm is FedProx with mu > 0; "
           "'fedprox_mu0' is the mu = 0 one)")
  _require_float32("sweep.mu", s.mu, positive=True)
  _require(_is_int(s.seeds) and 1 <= s.seeds <= MAX_SEED + 1, "sweep.seeds", s.seeds,
           f"must be an integer >= 1 (and <= {MAX_SEED + 1})")
  if c.mode == "sweep":
    _require(c.seed + s.seeds - 1 <= MAX_SEED, "seed", c.seed,
             f"a sweep runs seeds seed .. seed + sweep.seeds - 1 = {c.seed + s.seeds - 1}, past "
             f"{MAX_SEED}: use seed <= {MAX_SEED - s.seeds + 1} (or fewer sweep.seeds)")
  _require(_is_int(s.experiments_per_program) and s.experiments_per_program >= 0,
           "sweep.experiments_per_program", s.experiments_per_program,
           "must be an integer >= 0 (0 = backend default)")
  _require(_is_int(s.concurrent_programs) and s.concurrent_programs >= 0,
           "sweep.concurrent_programs", s.concurrent_programs,
           "must be an integer >= 0 (0 = backend default)")
  return c


class Experiment(NamedTuple):
  train: FederatedData
  test_x: jax.Array
  test_y: jax.Array
  stats: dict


def _partition(c, labels) -> partition.Partition:
  try:
    if c.iid:
      return partition.iid_partition(len(labels), c.num_clients, c.partition_seed)
    return partition.power_law_partition(labels, c.num_clients, c.labels_per_client,
                                         c.min_per_client, c.lognormal_sigma, c.partition_seed)
  except ValueError as e:
    raise ConfigError(f"cannot partition {len(labels)} training examples: {e}") from e


def _federated(x, labels, split: partition.Partition) -> FederatedData:
  return FederatedData(x=x[split.order], y=labels[split.order].astype(np.int32),
                       offsets=split.offsets, sizes=split.sizes)


def prepare_data(c: ml_collections.ConfigDict, mnist: data_lib.Mnist | None) -> Experiment:
  """The clients' training data and the test set of ``c.data``, as host arrays: the one
  place that knows the datasets; everything after it (placement, rounds, evaluation, the
  outputs) is the same for all of them."""
  if c.data == "synthetic":
    return _synthetic_data(c)
  return _mnist_data(c, mnist)


def _synthetic_data(c: ml_collections.ConfigDict) -> Experiment:
  """The paper's federation (c.synthetic, partition_seed) over num_clients devices, each split
  90 % train / 10 % test as the authors do; the test set is all devices' test splits."""
  s = c.synthetic
  fed = synthetic.generate(s.alpha, s.beta, s.iid, c.partition_seed, c.num_clients)
  split = partition.from_sizes(fed.sizes)
  train_split, test_split = partition.split_each_client(split, 0.9, c.partition_seed)
  train = _federated(fed.x, fed.y, train_split)
  test_x, test_y = fed.x[test_split.order], fed.y[test_split.order]
  stats = {**partition.partition_stats(split, fed.y),
           "federation": synthetic.name(s.alpha, s.beta, s.iid),
           "test_examples": len(test_y), "train_examples": int(train.sizes.sum()),
           "max_train": int(train.sizes.max()),
           "data_sha256": data_lib.ordered_digest(train.x, train.y, train.sizes, test_x, test_y)}
  return Experiment(train, test_x, test_y, stats)


def _mnist_data(c: ml_collections.ConfigDict, mnist: data_lib.Mnist) -> Experiment:
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
    split = _partition(c, labels)
    train_split, test_split = partition.split_each_client(split, 0.9, c.partition_seed)
    if train_split.sizes.min() < 1:
      raise ConfigError("protocol='paper' gives a client no training example after its 90/10 "
                        "split: raise min_per_client to at least 2")
    x = data_lib.standardize_pooled(images)
    train, test_order = _federated(x, labels, train_split), test_split.order
    stats = {**partition.partition_stats(split, labels), "paper": PAPER_STATS,
             "test_examples": len(test_order)}
    test_images, test_labels = images[test_order], labels[test_order]
    test_x = x[test_order]
  else:
    images, labels = mnist.train_images, mnist.train_labels
    if c.train_subset:
      images, labels = images[:c.train_subset], labels[:c.train_subset]
    split = _partition(c, labels)
    train_split = partition.hold_out(split, c.client_val_fraction, c.partition_seed)
    train = _federated(images, labels, train_split)
    train = train._replace(x=data_lib.normalize(train.x))
    test_images, test_labels = mnist.test_images, mnist.test_labels
    test_x = data_lib.normalize(test_images)
    stats = {**partition.partition_stats(split, labels), "test_examples": len(test_labels),
             "held_out_examples": int(split.sizes.sum() - train_split.sizes.sum())}
  stats.update(train_examples=int(train.sizes.sum()), max_train=int(train.sizes.max()),
               data_sha256=data_lib.ordered_digest(images[train_split.order], train.y,
                                                   train.sizes, test_images, test_labels))
  return Experiment(train, test_x, np.asarray(test_labels, np.int32), stats)


def default_eval_batch_size(model: str, backend: str | None = None) -> int:
  """The CNN on CPU: batch 50 (10k test images with XLA's convolution on the 2-core AMD EPYC:
  1.12 s at 25, 1.08-1.14 s at 50, 1.18-1.21 s at 100, 1.34 s at 500). The logistic
  regression is one matmul: the whole test set at once (2.4 ms vs 8 ms at batch 1000)."""
  if model == "mlr":
    return 10_000
  return 50 if (backend or jax.default_backend()) == "cpu" else 1000


def eval_conv_impl(c: ml_collections.ConfigDict) -> str:
  """XLA's convolution for evaluation: forward only and never vmapped, it avoids im2col's
  patch copies (10k test images, CPU: 1.1 s vs 1.8 s at the best batch of each)."""
  return "xla" if c.eval_conv_impl == "auto" else c.eval_conv_impl


def make_evaluate_fn(apply_fn, batch_size: int):
  """Jitted (params, x, y) -> (accuracy, mean loss), in batches of ``batch_size``."""
  return jax.jit(functools.partial(metrics.evaluate, apply_fn, batch_size=batch_size))


def round_spec(c: ml_collections.ConfigDict, max_client_size: int,
               mesh: jax.sharding.Mesh | None = None) -> server.RoundSpec:
  """The static round settings of config ``c``; lanes rounded up to fill the mesh's devices.

  Lanes beyond one per client and a batch beyond the largest client would only add masked
  work (the same results, up to 5x the time): both are capped, with a warning.
  """
  lanes = c.num_lanes or server.default_num_lanes(c.clients_per_round)
  if lanes > c.clients_per_round:
    logging.warning("num_lanes=%d is more than the %d clients of a round: using %d (a lane per "
                    "client; more would stay empty)", lanes, c.clients_per_round,
                    c.clients_per_round)
    lanes = c.clients_per_round
  batch_size = c.batch_size
  if batch_size > max_client_size:
    logging.warning("batch_size=%d is more than the largest client's %d training examples: "
                    "using %d (the same batches: each client's whole data, without the padding)",
                    batch_size, max_client_size, max_client_size)
    batch_size = max_client_size
  if mesh is not None:
    lanes = distributed.round_up(lanes, mesh)
  _check_plan_size(c, max_client_size)
  return server.RoundSpec(
      clients_per_round=c.clients_per_round, local_epochs=c.local_epochs,
      batch_size=batch_size, max_client_size=max_client_size, num_lanes=lanes,
      sampling=c.sampling, straggler_rule=c.straggler_rule, weighting=c.weighting, mesh=mesh)


def _check_plan_size(c, max_client_size: int) -> None:
  """A round draws every client's data order for every epoch at once (int32 [clients, epochs,
  largest client]): refused with one line, before compiling, when that alone cannot fit in
  half of this machine's memory (local_epochs=10**7 asked for 141 GB)."""
  plan_bytes = 4 * c.clients_per_round * c.local_epochs * max_client_size
  memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  _require(plan_bytes <= memory // 2, "local_epochs", c.local_epochs,
           f"a round's data-order plan (clients_per_round {c.clients_per_round} x local_epochs x "
           f"the largest client's {max_client_size} examples x 4 bytes) would need "
           f"{plan_bytes / 2**30:.1f} GiB, more than half of this machine's "
           f"{memory / 2**30:.0f} GiB: lower local_epochs or clients_per_round")


class Setup(NamedTuple):
  """One experiment ready to run."""
  config: ml_collections.ConfigDict  # as run: protocol and layout values filled in
  data: Experiment                     # on the device(s)
  model: object
  mesh: jax.sharding.Mesh
  spec: server.RoundSpec
  eval_model: object                   # the model evaluation runs (another conv, same params)
  evaluate: object                     # jitted (params, x, y) -> (accuracy, loss)


def make_mesh(c: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  try:
    return distributed.make_mesh(c.num_devices)
  except ValueError as e:
    raise ConfigError(f"config.{e}") from e


def prepare(c: ml_collections.ConfigDict, mnist: data_lib.Mnist | None,
            lanes_over_devices: bool) -> Setup:
  """Loads (unless ``mnist`` is given), partitions and places the data of validated config
  ``c``, builds the model and the round spec. ``lanes_over_devices``: a run spreads its lanes
  over the devices; a sweep spreads its experiments and keeps each one's lanes together."""
  mesh = make_mesh(c)
  genuine = None
  if c.data == "mnist":
    if mnist is None:
      mnist = data_lib.load_mnist(c.data_source, c.data_dir, c.download, c.allow_modified_mnist)
      genuine = data_lib.check_genuine(
          mnist, f"the MNIST read from {c.data_dir or 'the default TFDS data dir'} "
          f"(data_source={c.data_source})", c.allow_modified_mnist)
    else:  # the caller's own arrays: recorded as they are
      genuine = data_lib.is_genuine(mnist)
  exp = prepare_data(c, mnist)
  replicate = distributed.replicator(mesh)
  exp = exp._replace(train=replicate(jax.tree_util.tree_map(jnp.asarray, exp.train)),
                     test_x=replicate(jnp.asarray(exp.test_x)),
                     test_y=replicate(jnp.asarray(exp.test_y)))
  logging.info("partition: %s", partition.format_stats(exp.stats))
  if c.protocol == "paper" and c.data == "mnist":
    logging.info("the paper's table: %s", PAPER_STATS)
  model = models.make_model(c.model, c.conv_impl, mlr_init=c.mlr_init)
  spec = round_spec(c, exp.stats["max_train"], mesh if lanes_over_devices else None)
  eval_batch = min(c.eval_batch_size or default_eval_batch_size(c.model), len(exp.test_y))
  # The same parameters, another convolution (equal logits: tests/test_models.py).
  eval_model = models.make_model(c.model, eval_conv_impl(c), mlr_init=c.mlr_init)
  resolved = ml_collections.ConfigDict(c.to_dict())
  resolved.update(genuine_mnist=genuine,  # None: not MNIST
                  num_lanes=spec.num_lanes, num_devices=mesh.size, eval_batch_size=eval_batch,
                  # "none": the model has no convolution (the logistic regression)
                  conv_impl=getattr(model, "conv_impl", "none"),
                  eval_conv_impl=getattr(eval_model, "conv_impl", "none"))
  return Setup(resolved, exp, model, mesh, spec, eval_model,
               make_evaluate_fn(eval_model.apply, eval_batch))


def metrics_row(t: int, m: server.RoundMetrics, evaluation: dict, wall_time: float,
                mu: float) -> dict:
  """The row of round ``t`` from its (host) round metrics and evaluation results."""
  executed = int(m.lanes.executed_steps)
  return {"round": t, **{k: float(v) for k, v in evaluation.items()},
          "local_train_loss": None if bool(m.all_dropped) else float(m.train_loss),
          "mu": float(mu),
          "num_stragglers": int(m.num_stragglers), "num_aggregated": int(m.num_aggregated),
          "all_dropped": bool(m.all_dropped), "useful_steps": int(m.lanes.useful_steps),
          "executed_steps": executed,
          "step_efficiency": float(m.lanes.useful_steps) / max(executed, 1),
          "wall_time": wall_time}


def divergence_advice(lr: float, mu: float) -> str:
  """What to change after a divergence: with lr * mu > 2 the proximal step alone overshoots
  (w - w_t is multiplied by 1 - lr * mu each step), so mu must come down, not up."""
  if lr * mu > 2:
    return (f"lr * mu = {lr * mu:g} > 2 makes the proximal step itself diverge: lower "
            "--config.mu or --config.lr so that lr * mu < 2")
  return "Lower --config.lr (or raise --config.mu)"


def format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 \
      else f"{seconds // 60}m{seconds % 60:02d}s"
