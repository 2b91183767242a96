"""The set-up of one experiment, shared by a run (``single``) and a sweep (``sweep``): the
data and its partition (``prepare_data``: the data set ``config.data`` names), the devices,
the model, the round spec and hyper-parameters (the one builder of each), evaluation.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from fedprox_jax.run import config as config_lib
from fedprox_jax.run import distributed
from fedprox_jax.core import algorithms, fedopt, metrics, models, rounds
from fedprox_jax.data import datasets, partition
from fedprox_jax.data.federation import Federation
from fedprox_jax.errors import ConfigError

def load_source(c: ml_collections.ConfigDict, source=None, genuine: bool | None = None) -> tuple:
  """(the raw examples of data set ``c.data``, whether they are the published ones or None):
  read as ``c`` says, or the caller's ``source`` as it is (``data/datasets.py``)."""
  return datasets.get(c.data).load(c, source, genuine)


def prepare_data(c: ml_collections.ConfigDict, source) -> Federation:
  """The clients' training data and the test set of ``c.data`` from its raw ``source``, as
  host arrays; everything after it (placement, rounds, evaluation, the outputs) is the same
  for every data set."""
  return datasets.get(c.data).federation(c, source)


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
            **point) -> rounds.HParams:
  """The traced round hyper-parameters of resolved config ``c``: a run's, or (the one builder:
  a sweep stacks one per experiment, benchmarks use it too) ``algorithm``'s with a grid
  point's ``mu``, ``drop_stragglers`` and ``stragglers_fraction``."""
  algorithm = algorithm or run_algorithm(c)
  v = {"mu": c.mu, "stragglers_fraction": c.stragglers_fraction,
       "drop_stragglers": c.drop_stragglers, **point}
  return rounds.HParams.create(c.lr, v["mu"], v["stragglers_fraction"], v["drop_stragglers"],
                               c.clients_per_round, c.weight_decay, c.momentum,
                               server_hparams(c, algorithm), algorithm_hparams(c, algorithm))


def round_spec(c: ml_collections.ConfigDict, max_client_size: int,
               mesh: jax.sharding.Mesh | None = None,
               num_lanes: int | None = None,
               algorithm: algorithms.Algorithm | None = None) -> rounds.RoundSpec:
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
  return rounds.RoundSpec(
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
  data: Federation                  # on the device(s)
  model: object
  mesh: jax.sharding.Mesh
  spec: rounds.RoundSpec
  eval_model: object                   # the model evaluation runs (another conv, same params)
  evaluate: object                     # jitted (params, x, y) -> (accuracy, loss)


def make_mesh(c: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  try:
    return distributed.make_mesh(c.num_devices)
  except ValueError as e:
    raise ConfigError(f"config.{e}") from e


def prepare(c: ml_collections.ConfigDict, source, lanes_over_devices: bool,
            genuine: bool | None = None) -> Setup:
  """Loads (unless ``source``, the data set's raw examples, is given; ``genuine``: whether
  they are the published ones, if known), partitions and places the data of validated config
  ``c``, builds the model (for the data's classes and input) and the round spec.
  ``lanes_over_devices``: a run spreads its lanes over the devices; a sweep spreads its
  experiments and keeps each one's lanes together."""
  mesh = make_mesh(c)
  source, genuine = load_source(c, source, genuine)
  exp = prepare_data(c, source)
  clients = len(exp.train.sizes)
  config_lib.require(clients == c.num_clients, "num_clients", c.num_clients,
                     f"data set {c.data!r} has {clients} clients: set "
                     f"--config.num_clients={clients}")
  mismatch = models.check_inputs(c.model, exp.input_spec)
  config_lib.require(mismatch is None, "model", c.model,
                     f"{mismatch} (data set {c.data!r}): choose another model")
  # The paths resolve left to measure, timed for these inputs and classes (cached).
  c = config_lib.fill_measured(ml_collections.ConfigDict(c.to_dict()), exp.input_shape,
                               exp.num_classes)
  replicate = distributed.replicator(mesh)
  exp = exp._replace(train=replicate(jax.tree_util.tree_map(jnp.asarray, exp.train)),
                     test_x=replicate(jnp.asarray(exp.test_x)),
                     test_y=replicate(jnp.asarray(exp.test_y)))
  logging.info("partition: %s", partition.format_stats(exp.stats))
  if "paper" in exp.stats:
    logging.info("the paper's table: %s", exp.stats["paper"])
  model = models.make_model(c.model, c.conv_impl, exp.num_classes, mlr_init=c.mlr_init,
                            input_spec=exp.input_spec)
  spec = round_spec(c, exp.stats["max_train"], mesh if lanes_over_devices else None)
  eval_batch = min(c.eval_batch_size, len(exp.test_y))
  # The same parameters, another convolution (equal logits: tests/test_models.py).
  eval_model = models.make_model(c.model, c.eval_conv_impl, exp.num_classes,
                                 mlr_init=c.mlr_init, input_spec=exp.input_spec)
  resolved = ml_collections.ConfigDict(c.to_dict())
  resolved.update(genuine_mnist=genuine,  # None: the data set has no published original
                  num_lanes=spec.num_lanes, num_devices=mesh.size, eval_batch_size=eval_batch,
                  # "none": the model has no convolution (the logistic regression)
                  conv_impl=getattr(model, "conv_impl", "none"),
                  eval_conv_impl=getattr(eval_model, "conv_impl", "none"))
  return Setup(resolved, exp, model, mesh, spec, eval_model,
               make_evaluate_fn(eval_model.apply, eval_batch))
