"""Sweeps: a grid of experiments (algorithm x stragglers x seed) run as vmapped programs.

mu, the stragglers fraction, the drop flag and the seed are traced values, so the experiments
of one model share one compiled round, vmapped over an experiment axis (in chunks of
``experiments_per_program``). Common random numbers: an experiment's round key depends only
on its seed and the round, so for a given seed every algorithm sees the same clients, the same
stragglers with the same epoch counts, and the same data orders.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from fedprox_jax import data as data_lib
from fedprox_jax import distributed, metrics, models, outputs, partition, plots, server, simulate

ALGORITHMS = {  # name -> (mu, drop_stragglers); mu None = the sweep's mu
    "fedavg": (0.0, True),
    "fedprox_mu0": (0.0, False),
    "fedprox": (None, False),
}


@dataclasses.dataclass(frozen=True)
class ExperimentSpec:
  algorithm: str
  mu: float
  drop_stragglers: bool
  stragglers_fraction: float
  seed: int

  @property
  def name(self) -> str:
    return f"{self.algorithm}_s{self.stragglers_fraction:g}_seed{self.seed}"


def _parse_list(field: str, value, cast):
  try:
    items = [cast(v) for v in str(value).replace(" ", "").split(",") if v != ""]
  except ValueError as e:
    raise simulate.ConfigError(f"config.sweep.{field}={value!r}: not a comma-separated list "
                               f"({e})") from e
  if not items:
    raise simulate.ConfigError(f"config.sweep.{field} is empty")
  return items


def experiment_grid(c: ml_collections.ConfigDict) -> list:
  """The sweep's experiments, from ``c.sweep`` (algorithms, stragglers, seeds, mu)."""
  algorithms = _parse_list("algorithms", c.sweep.algorithms, str)
  for a in algorithms:
    if a not in ALGORITHMS:
      raise simulate.ConfigError(f"config.sweep.algorithms: {a!r} is not one of "
                                 f"{', '.join(ALGORITHMS)}")
  fractions = _parse_list("stragglers", c.sweep.stragglers, float)
  for f in fractions:
    if not 0 <= f <= 1:
      raise simulate.ConfigError(f"config.sweep.stragglers: {f} is not between 0 and 1")
  if not (isinstance(c.sweep.seeds, int) and c.sweep.seeds >= 1):
    raise simulate.ConfigError(f"config.sweep.seeds={c.sweep.seeds!r}: must be an integer >= 1")
  grid = []
  for fraction in fractions:
    for algorithm in algorithms:
      mu, drop = ALGORITHMS[algorithm]
      for seed in range(c.seed, c.seed + c.sweep.seeds):
        grid.append(ExperimentSpec(algorithm, c.sweep.mu if mu is None else mu, drop, fraction,
                                   seed))
  return grid


def default_experiments_per_program(model: str, num_experiments: int,
                                    backend: str | None = None) -> int:
  """All experiments in one program, except the CNN on CPU: a wide vmapped CNN step is slower
  there than the same steps in turn (see benchmarks/README.md), so one experiment at a time."""
  backend = backend or jax.default_backend()
  return 1 if (backend == "cpu" and model == "cnn") else num_experiments


def _stack_hparams(c, specs):
  return server.HParams(
      lr=jnp.full(len(specs), c.lr, jnp.float32),
      mu=jnp.array([s.mu for s in specs], jnp.float32),
      stragglers_fraction=jnp.array([s.stragglers_fraction for s in specs], jnp.float32),
      drop_stragglers=jnp.array([s.drop_stragglers for s in specs]),
      exact_stragglers=jnp.array([server.exact_straggler_count(c.clients_per_round,
                                                               s.stragglers_fraction)
                                  for s in specs], jnp.int32),
      weight_decay=jnp.full(len(specs), c.weight_decay, jnp.float32))


def _over_experiments(fn, in_axes, size: int):
  """vmap over the experiment axis; with one experiment, a plain call (no batched branches)."""
  if size > 1:
    return jax.vmap(fn, in_axes=in_axes)

  def single(*args):
    args = [jax.tree_util.tree_map(lambda a: a[0], x) if ax == 0 else x
            for x, ax in zip(args, in_axes)]
    return jax.tree_util.tree_map(lambda a: a[None], fn(*args))
  return single


def make_sweep_fns(apply_fn, spec: server.RoundSpec, size: int, eval_batch_size: int,
                   with_dissimilarity: bool):
  """Jitted round and evaluation over an experiment axis of ``size``."""
  round_fn = jax.jit(_over_experiments(
      lambda p, d, hp, k: server.run_round(apply_fn, spec, p, d, hp, k), (0, None, 0, 0), size))

  def evaluate_one(params, train, test_x, test_y):
    accuracy, test_loss = metrics.evaluate(apply_fn, params, test_x, test_y, eval_batch_size)
    _, train_loss = metrics.evaluate(apply_fn, params, train.x, train.y, eval_batch_size)
    out = {"test_accuracy": accuracy, "test_loss": test_loss, "train_loss": train_loss}
    if with_dissimilarity:
      out["dissimilarity"] = metrics.dissimilarity(apply_fn, params, train)
    return out

  evaluate_fn = jax.jit(_over_experiments(evaluate_one, (0, None, None, None), size))
  return round_fn, evaluate_fn


def run_experiments(c, exp: simulate.Experiment, specs: list, model, eval_rounds: list,
                    mesh: jax.sharding.Mesh | None = None):
  """Runs ``specs`` as one vmapped program; returns {name: [row per evaluated round]}.

  With a ``mesh`` of several devices the experiment axis is spread over them (padded with
  copies of the last experiment, whose results are dropped); the data is replicated.
  """
  real = len(specs)
  if mesh is not None and mesh.size > 1:
    specs = specs + [specs[-1]] * (distributed.round_up(real, mesh) - real)
  size = len(specs)
  round_spec = simulate.round_spec(c, exp.stats["max_train"])  # lanes stay on each device
  eval_batch = min(c.eval_batch_size or simulate.default_eval_batch_size(c.model), len(exp.test_y))
  round_fn, evaluate_fn = make_sweep_fns(model.apply, round_spec, size, eval_batch,
                                         c.sweep.dissimilarity)
  # The same seed gives the same initial model and the same round keys (common random numbers).
  seed_keys = [jax.random.split(jax.random.key(s.seed)) for s in specs]
  params = jax.tree_util.tree_map(
      lambda *leaves: jnp.stack(leaves),
      *[models.init_params(model, init_key) for init_key, _ in seed_keys])
  rounds_keys = [rounds_key for _, rounds_key in seed_keys]
  hp = _stack_hparams(c, specs)
  train, test_x, test_y = exp.train, exp.test_x, exp.test_y
  shard = lambda tree: tree
  if mesh is not None and mesh.size > 1:
    P = jax.sharding.PartitionSpec
    by_experiment = jax.sharding.NamedSharding(mesh, P(distributed.AXIS))
    shard = lambda tree: jax.device_put(tree, by_experiment)
    train, test_x, test_y = distributed.replicator(mesh)((train, test_x, test_y))
    params, hp = shard(params), shard(hp)
  specs = specs[:real]
  rows = {s.name: [] for s in specs}
  start = time.perf_counter()
  for t in range(1, c.num_rounds + 1):
    keys = shard(jnp.stack([jax.random.fold_in(k, t) for k in rounds_keys]))
    params, m = round_fn(params, train, hp, keys)
    if t not in eval_rounds:
      continue
    ev = jax.device_get(evaluate_fn(params, train, test_x, test_y))
    m = jax.device_get(m)
    for i, s in enumerate(specs):
      row = {"round": t, **{k: float(v[i]) for k, v in ev.items()},
             "num_stragglers": int(m.num_stragglers[i]), "all_dropped": bool(m.all_dropped[i]),
             "wall_time": time.perf_counter() - start}
      rows[s.name].append(row)
    logging.info("round %d/%d: accuracy %s", t, c.num_rounds,
                 " ".join(f"{ev['test_accuracy'][i]:.3f}" for i in range(real)))
  return rows


def run_sweep(c: ml_collections.ConfigDict, workdir: str, mnist: data_lib.Mnist | None = None):
  """Runs the sweep of config ``c`` into ``workdir``: results.csv, summary table and figure."""
  c = simulate.validate_config(c)
  specs = experiment_grid(c)
  per_program = c.sweep.experiments_per_program or default_experiments_per_program(
      c.model, len(specs))
  os.makedirs(workdir, exist_ok=True)
  if os.path.exists(os.path.join(workdir, "results.csv")):
    raise simulate.ConfigError(f"workdir {workdir!r} already holds a sweep (results.csv): pass "
                               "a new --workdir, or delete the old one")
  outputs.write_json(workdir, "config.json", c.to_dict())
  outputs.write_json(workdir, "environment.json", outputs.environment())
  start = time.perf_counter()
  if mnist is None:
    mnist = data_lib.load_mnist(c.data_source, c.data_dir, c.download)
  exp = simulate.prepare_experiment(c, mnist)
  outputs.write_json(workdir, "partition_stats.json", exp.stats)
  logging.info("partition: %s", partition.format_stats(exp.stats))
  if c.protocol == "paper":
    logging.info("the paper's table: %s", simulate.PAPER_STATS)
  model = models.make_model(c.model, c.conv_impl, mlr_init=c.mlr_init)
  mesh = distributed.make_mesh(c.num_devices)
  eval_rounds = set(range(c.eval_every, c.num_rounds + 1, c.eval_every)) | {c.num_rounds}
  results = {}
  for first in range(0, len(specs), per_program):
    chunk = specs[first:first + per_program]
    logging.info("experiments %d-%d of %d: %s", first + 1, first + len(chunk), len(specs),
                 ", ".join(s.name for s in chunk))
    results.update(run_experiments(c, exp, chunk, model, eval_rounds, mesh))
  seconds = time.perf_counter() - start
  table = plots.write_sweep_outputs(workdir, specs, results,
                                    title=f"{c.model}, protocol={c.protocol}, mu={c.sweep.mu}")
  outputs.write_json(workdir, "summary.json",
                     {"experiments": len(specs), "total_seconds": seconds, "table": table})
  logging.info("sweep of %d experiments done in %.1fs; outputs in %s", len(specs), seconds,
               workdir)
  return results
