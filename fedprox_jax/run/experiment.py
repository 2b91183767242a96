"""The set-up of one experiment, shared by a run (``single``) and a sweep (``sweep``): the
data and its partition (``prepare_data``, the one place that knows the datasets), the devices,
the model, the round spec and hyper-parameters (the one builder of each), evaluation, and a
metrics row.
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
from fedprox_jax.run import config as config_lib
from fedprox_jax.run import distributed
from fedprox_jax.core import algorithms, fedopt, metrics, models, server
from fedprox_jax.data import partition, synthetic
from fedprox_jax.core.client import FederatedData
from fedprox_jax.errors import ConfigError

# The paper's Table (MNIST, 1000 devices): for printing next to our partition's statistics.
PAPER_STATS = {"clients": 1000, "examples": 69035, "mean": 69, "std": 106}



class Dataset(NamedTuple):
  """A federation: the clients' training data, the test set and the partition's statistics."""
  train: FederatedData
  test_x: jax.Array
  test_y: jax.Array
  stats: dict


def _partition(c, labels) -> partition.Partition:
  try:
    if c.partition == "iid":
      return partition.iid_partition(len(labels), c.num_clients, c.partition_seed)
    if c.partition == "labeldir":
      return partition.dirichlet_label_partition(labels, c.num_clients, c.dirichlet_beta,
                                                 c.partition_seed)
    if c.partition == "label_count":
      return partition.label_count_partition(labels, c.num_clients, c.labels_per_client,
                                             c.partition_seed)
    if c.partition == "quantity":
      return partition.dirichlet_quantity_partition(len(labels), c.num_clients,
                                                    c.dirichlet_beta, c.partition_seed)
    return partition.power_law_partition(labels, c.num_clients, c.labels_per_client,
                                         c.min_per_client, c.lognormal_sigma, c.partition_seed)
  except ValueError as e:
    raise ConfigError(f"cannot partition {len(labels)} training examples: {e}") from e


def _federated(x, labels, split: partition.Partition) -> FederatedData:
  return FederatedData(x=x[split.order], y=labels[split.order].astype(np.int32),
                       offsets=split.offsets, sizes=split.sizes)


def prepare_data(c: ml_collections.ConfigDict, mnist: data_lib.Mnist | None) -> Dataset:
  """The clients' training data and the test set of ``c.data``, as host arrays: the one
  place that knows the datasets; everything after it (placement, rounds, evaluation, the
  outputs) is the same for all of them."""
  if c.data == "synthetic":
    return _synthetic_data(c)
  return _mnist_data(c, mnist)


def _synthetic_data(c: ml_collections.ConfigDict) -> Dataset:
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
  return Dataset(train, test_x, test_y, stats)


def _mnist_data(c: ml_collections.ConfigDict, mnist: data_lib.Mnist) -> Dataset:
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
  return Dataset(train, test_x, np.asarray(test_labels, np.int32), stats)


def make_evaluate_fn(apply_fn, batch_size: int):
  """Jitted (params, x, y) -> (accuracy, mean loss), in batches of ``batch_size``."""
  return jax.jit(functools.partial(metrics.evaluate, apply_fn, batch_size=batch_size))


def run_algorithm(c: ml_collections.ConfigDict) -> algorithms.Algorithm:
  """The algorithm whose server and client machinery a run uses: ``c.algorithm``, or for ''
  the FedAvg/FedProx family (selected by mu, drop_stragglers and adaptive_mu)."""
  return algorithms.get(c.algorithm) if c.algorithm else algorithms.FEDPROX


def server_hparams(c: ml_collections.ConfigDict, algorithm: algorithms.Algorithm
                   ) -> fedopt.ServerHParams:
  """The server's hyper-parameters: ``c.server_lr`` if set, else the algorithm's own."""
  return fedopt.ServerHParams(
      lr=algorithm.server_lr if c.server_lr is None else c.server_lr,
      momentum=c.server_momentum, beta2=c.server_beta2, tau=c.server_tau)


def algorithm_hparams(c: ml_collections.ConfigDict, algorithm: algorithms.Algorithm):
  """``algorithm``'s own hyper-parameters: ``c.hparams.<name>`` (resolved: checked and
  complete), its defaults where the config has none."""
  if not algorithm.hparams._fields or algorithm.name not in c.get("hparams", {}):
    return algorithm.hparams
  return type(algorithm.hparams)(**c.hparams[algorithm.name])


def hparams(c: ml_collections.ConfigDict, algorithm: algorithms.Algorithm | None = None,
            **point) -> server.HParams:
  """The traced round hyper-parameters of resolved config ``c``: a run's, or (the one builder:
  a sweep stacks one per experiment, benchmarks use it too) ``algorithm``'s with a grid
  point's ``mu``, ``drop_stragglers`` and ``stragglers_fraction``."""
  algorithm = algorithm or run_algorithm(c)
  v = {"mu": c.mu, "stragglers_fraction": c.stragglers_fraction,
       "drop_stragglers": c.drop_stragglers, **point}
  return server.HParams.create(c.lr, v["mu"], v["stragglers_fraction"], v["drop_stragglers"],
                               c.clients_per_round, c.weight_decay, c.momentum,
                               server_hparams(c, algorithm), algorithm_hparams(c, algorithm))


def server_state_leaves(state: server.ServerState) -> dict:
  """What a checkpoint holds of the server's state besides the model: the algorithm's state's
  arrays by position (a plain dict, whatever its classes are); {} for the averaging
  algorithms."""
  leaves = jax.tree_util.tree_leaves(state.state)
  return {str(i): leaf for i, leaf in enumerate(leaves)}


def server_state_from(template: server.ServerState, params, leaves: dict) -> server.ServerState:
  """``template``'s structure with the model ``params`` and the checkpointed ``leaves``."""
  treedef = jax.tree_util.tree_structure(template.state)
  return server.ServerState(params, jax.tree_util.tree_unflatten(
      treedef, [leaves[str(i)] for i in range(treedef.num_leaves)]))


def per_client_state_bytes(num_clients: int, num_params: int, experiments: int = 1) -> int:
  """Bytes of a parameter-sized state per client that a round holds: the states and their new
  values (2 x clients x parameters, 4 bytes each), per experiment."""
  return 2 * 4 * num_clients * num_params * experiments


def check_state_memory(c: ml_collections.ConfigDict, spec: server.RoundSpec, params,
                       experiments: int = 1) -> None:
  """An algorithm that keeps a parameter-sized state per client (SCAFFOLD's variates) holds it
  on the device: refused with one line, before any work, when the states and their round's
  changes need more than half a device's memory."""
  hooks = spec.hooks
  if not hooks.per_client_state:
    return
  num_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
  need = per_client_state_bytes(c.num_clients, num_params, experiments)
  have = distributed.device_memory_bytes()
  config_lib.require(
      need <= have // 2, "num_clients", c.num_clients,
      f"{hooks.name} keeps {hooks.per_client_state} per client: {experiments} experiment(s) x "
      f"{c.num_clients} clients x {num_params} parameters x 2 (the states and their update) x 4 "
      f"bytes = {need / 2**30:.1f} GiB, more than half of the device's {have / 2**30:.1f} GiB: "
      "use fewer clients, a smaller model (--config.model=mlr or niid_cnn), "
      "--config.sweep.experiments_per_program=1, or a device with more memory")


def round_spec(c: ml_collections.ConfigDict, max_client_size: int,
               mesh: jax.sharding.Mesh | None = None,
               num_lanes: int | None = None,
               algorithm: algorithms.Algorithm | None = None) -> server.RoundSpec:
  """The static round settings of resolved config ``c`` (the one builder: benchmarks use it
  too, so nothing runs another protocol's rules) for ``algorithm`` (else the run's); lanes
  (``num_lanes``, else the config's or the backend's default) rounded up to fill the mesh's
  devices.

  Lanes beyond one per client and a batch beyond the largest client would only add masked
  work (the same results, up to 5x the time): both are capped, with a warning.
  """
  lanes = num_lanes or c.num_lanes
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
      sampling=c.sampling, straggler_rule=c.straggler_rule, weighting=c.weighting, mesh=mesh,
      inexactness=c.inexactness, straggler_work=c.straggler_work,
      **algorithms.round_statics(algorithm or run_algorithm(c), c.momentum))


def _check_plan_size(c, max_client_size: int) -> None:
  """A round draws every client's data order for every epoch at once (int32 [clients, epochs,
  largest client]): refused with one line, before compiling, when that alone cannot fit in
  half of this machine's memory (local_epochs=10**7 asked for 141 GB)."""
  plan_bytes = 4 * c.clients_per_round * c.local_epochs * max_client_size
  memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  config_lib.require(plan_bytes <= memory // 2, "local_epochs", c.local_epochs,
           f"a round's data-order plan (clients_per_round {c.clients_per_round} x local_epochs x "
           f"the largest client's {max_client_size} examples x 4 bytes) would need "
           f"{plan_bytes / 2**30:.1f} GiB, more than half of this machine's "
           f"{memory / 2**30:.0f} GiB: lower local_epochs or clients_per_round")


class Setup(NamedTuple):
  """One experiment ready to run."""
  config: ml_collections.ConfigDict  # as run: protocol and layout values filled in
  data: Dataset                     # on the device(s)
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


def load_mnist(c: ml_collections.ConfigDict, mnist: data_lib.Mnist | None = None,
               genuine: bool | None = None) -> tuple:
  """(MNIST, whether it is genuine) for ``c`` (None, None where c.data is not MNIST): loaded as
  ``c`` says (and refused unless genuine or allow_modified_mnist) when ``mnist`` is None; the
  caller's own arrays are recorded as they are (``genuine``: already known)."""
  if c.data != "mnist":
    return None, None
  if mnist is None:
    mnist = data_lib.load_mnist(c.data_source, c.data_dir, c.download, c.allow_modified_mnist)
    return mnist, data_lib.check_genuine(
        mnist, f"the MNIST read from {c.data_dir or 'the default TFDS data dir'} "
        f"(data_source={c.data_source})", c.allow_modified_mnist)
  return mnist, data_lib.is_genuine(mnist) if genuine is None else genuine


def prepare(c: ml_collections.ConfigDict, mnist: data_lib.Mnist | None,
            lanes_over_devices: bool, genuine: bool | None = None) -> Setup:
  """Loads (unless ``mnist`` is given; ``genuine``: whether it is, if known), partitions and
  places the data of validated config ``c``, builds the model and the round spec.
  ``lanes_over_devices``: a run spreads its lanes over the devices; a sweep spreads its
  experiments and keeps each one's lanes together."""
  mesh = make_mesh(c)
  mnist, genuine = load_mnist(c, mnist, genuine)
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
  eval_batch = min(c.eval_batch_size, len(exp.test_y))
  # The same parameters, another convolution (equal logits: tests/test_models.py).
  eval_model = models.make_model(c.model, c.eval_conv_impl, mlr_init=c.mlr_init)
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
  evaluation = {k: float(v) for k, v in evaluation.items()}
  if m.inexactness is not None:  # over the clients that trained (the others' gamma is NaN)
    gamma = np.asarray(m.inexactness, np.float64)
    gamma = gamma[~np.isnan(gamma)]
    evaluation.update(gamma_mean=float(gamma.mean()) if len(gamma) else None,
                      gamma_max=float(gamma.max()) if len(gamma) else None)
  if not math.isfinite(evaluation.get("b_dissimilarity", 0.0)):  # grad f = 0: B undefined
    evaluation["b_dissimilarity"] = None
  return {"round": t, **evaluation,
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
