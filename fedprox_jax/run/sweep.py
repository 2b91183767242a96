"""Sweeps: a grid of experiments (algorithm x stragglers x seed) run as vmapped programs.

mu, the stragglers fraction, the drop flag and the seed are traced values, so the experiments
of one model share one compiled round, vmapped over an experiment axis (in chunks of
``experiments_per_program``, a *program* each). Common random numbers: an experiment's round
key depends only on its seed and the round, so for a given seed every algorithm sees the same
clients, the same stragglers with the same epoch counts, and the same data orders.

As trustworthy as a single run: rows are on disk (rows.jsonl) before the program's checkpoint
that makes their round final, so a killed sweep resumes (same command, same workdir) and ends
with the rows of an uninterrupted one; an experiment whose loss or parameters become
non-finite is named with its round, and none of its rows from then on is written.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import os
import threading
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from fedprox_jax import files, outputs
from fedprox_jax.core import adaptive_mu, algorithms, metrics, models, server
from fedprox_jax.errors import ConfigError, DivergenceError, Interrupted
from fedprox_jax.report import plots
from fedprox_jax.run import checkpoints as checkpoints_lib
from fedprox_jax.run import config as config_lib
from fedprox_jax.run import defaults, distributed, experiment, loop, signals
from fedprox_jax.run.workdir import Workdir, open_workdir

ROWS_FILE = "rows.jsonl"  # every experiment's rows, with its name
ROW_KEYS = ("experiment", "round")


@dataclasses.dataclass(frozen=True)
class GridPoint:
  """One experiment of a sweep: an algorithm of ``core/algorithms`` at a straggler level, a
  seed and a partition (and, on synthetic data, a federation)."""
  algorithm: str
  mu: float  # adaptive: the first round's
  drop_stragglers: bool
  stragglers_fraction: float
  seed: int
  adaptive: bool = False
  # data=synthetic: the federation's name (synthetic_A_B, synthetic_iid); MNIST: the split of
  # sweep.splits (labeldir0.5, label2, ...), '' without
  federation: str = ""
  # The partition's seed (data=synthetic: the generator's); ``partition_axis``: the sweep draws
  # several, and the name says which.
  partition: int = 0
  partition_axis: bool = False

  @property
  def name(self) -> str:
    prefix = f"{self.federation}_" if self.federation else ""
    suffix = f"_p{self.partition}" if self.partition_axis else ""
    return f"{prefix}{self.algorithm}_s{self.stragglers_fraction:g}_seed{self.seed}{suffix}"

  @property
  def data_key(self) -> tuple:
    """Experiments with the same key share their data (and may share a program)."""
    return (self.federation, self.partition)

  @property
  def data_label(self) -> str:
    return "_".join(filter(None, [self.federation,
                                  f"partition{self.partition}" if self.partition_axis else ""]))


def data_config(c: ml_collections.ConfigDict, federation, partition: int
                ) -> ml_collections.ConfigDict:
  """``c`` with c.synthetic set to ``federation`` = (alpha, beta, iid), or for MNIST the split's
  partition fields (None: c's own), and the partition seed ``partition``."""
  out = ml_collections.ConfigDict(c.to_dict())
  if isinstance(federation, dict):
    out.update(federation)
  elif federation is not None:
    out.synthetic.alpha, out.synthetic.beta, out.synthetic.iid = federation
  out.partition_seed = partition
  return out


def partition_seeds(c: ml_collections.ConfigDict, seed: int) -> list:
  """The partitions experiments of ``seed`` run on: its own (partition_per_seed), else
  partition_seed .. partition_seed + sweep.partitions - 1."""
  if c.sweep.partition_per_seed:
    return [seed]
  return list(range(c.partition_seed, c.partition_seed + c.sweep.partitions))


def experiment_grid(c: ml_collections.ConfigDict) -> list:
  """The sweep's experiments, from ``c.sweep`` (federations, partitions, stragglers,
  algorithms, seeds, mu), federation after federation, partition after partition."""
  chosen = config_lib.parse_list("algorithms", c.sweep.algorithms, str)
  try:
    chosen = [algorithms.get(a) for a in chosen]
  except ValueError as e:
    raise ConfigError(f"config.sweep.algorithms: {e}") from e
  fractions = config_lib.parse_list("stragglers", c.sweep.stragglers, float)  # checked there
  seeds = range(c.seed, c.seed + c.sweep.seeds)
  axis = c.sweep.partitions > 1 or c.sweep.partition_per_seed
  partitions = sorted({p for seed in seeds for p in partition_seeds(c, seed)})
  grid = []
  for name, federation in config_lib.federations(c).items():
    iid = c.data == "synthetic" and federation[2]
    for partition in partitions:
      for fraction in fractions:
        for a in chosen:
          mu = a.proximal_mu(c.sweep.mu, adaptive_mu.initial_mu(iid)
                             if c.sweep.adaptive_mu_init is None else c.sweep.adaptive_mu_init)
          for seed in seeds:
            if partition in partition_seeds(c, seed):
              grid.append(GridPoint(a.name, mu, a.drop_stragglers, fraction, seed,
                                    a.mu_rule == "adaptive", name, partition, axis))
  return grid


def _stack_hparams(c, specs):
  """The experiments' hyper-parameters (``experiment.hparams`` of each grid point), stacked."""
  return jax.tree_util.tree_map(lambda *v: jnp.stack(v), *[
      experiment.hparams(c, algorithms.get(s.algorithm), mu=s.mu,
                         drop_stragglers=s.drop_stragglers,
                         stragglers_fraction=s.stragglers_fraction) for s in specs])


def statics(c: ml_collections.ConfigDict, point: GridPoint) -> tuple:
  """The static round parts of ``point``'s algorithm: experiments share a program only where
  these are equal (``algorithms.round_statics``)."""
  return tuple(sorted(algorithms.round_statics(algorithms.get(point.algorithm),
                                               c.momentum).items()))


def _over_experiments(fn, in_axes, size: int):
  """vmap over the experiment axis; with one experiment, a plain call (no batched branches)."""
  if size > 1:
    return jax.vmap(fn, in_axes=in_axes)

  def single(*args):
    args = [jax.tree_util.tree_map(lambda a: a[0], x) if ax == 0 else x
            for x, ax in zip(args, in_axes)]
    return jax.tree_util.tree_map(lambda a: a[None], fn(*args))
  return single


@functools.lru_cache(maxsize=8)
def make_sweep_fns(apply_fn, eval_apply_fn, spec: server.RoundSpec, size: int,
                   eval_batch_size: int, with_dissimilarity: bool, with_adaptive: bool,
                   with_train_loss: bool = True):
  """Jitted round and evaluation over an experiment axis of ``size``; the same arguments give
  the same functions, so the programs of a sweep (and a resumed one) compile once.

  The round takes and returns each experiment's ServerState (the model, and what FedOpt or
  SCAFFOLD keep) and adaptive-mu state: an adaptive experiment
  trains with the state's mu, then its state sees the new global model's training loss, all
  in the one program (``with_adaptive``: some experiment of the program adapts)."""

  def round_one(state, mu_state, data, hp, key, adaptive):
    hp = hp._replace(mu=jnp.where(adaptive, mu_state.mu, hp.mu))
    state, m = server.round_step(apply_fn, spec, state, data, hp, key)
    if with_adaptive:
      _, loss = metrics.evaluate(eval_apply_fn, state.params, data.x, data.y, eval_batch_size)
      mu_state = adaptive_mu.update(mu_state, loss)
    return state, m, mu_state, hp.mu

  round_fn = jax.jit(_over_experiments(round_one, (0, 0, None, 0, 0, 0), size))

  def evaluate_one(params, train, test_x, test_y):
    accuracy, test_loss = metrics.evaluate(eval_apply_fn, params, test_x, test_y,
                                           eval_batch_size)
    out = {"test_accuracy": accuracy, "test_loss": test_loss}
    if with_train_loss:
      _, out["global_train_loss"] = metrics.evaluate(eval_apply_fn, params, train.x, train.y,
                                                     eval_batch_size)
    if with_dissimilarity:
      out.update(metrics.dissimilarities(apply_fn, params, train))
    return out

  evaluate_fn = jax.jit(_over_experiments(evaluate_one, (0, None, None, None), size))
  return round_fn, evaluate_fn


# All experiments' round keys in one call; module level, so it compiles once per process, not
# once per program (~120 ms each on CPU).
_fold_in_each = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))


def _to_host(tree):
  """Host copies of (possibly multi-process sharded) arrays."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


class _Round(NamedTuple):
  """A dispatched round of a program's experiments, until the host records it."""
  t: int
  state: dict       # {"params", "diverged_at", "mu"} after round t, padded experiments included
  m: object
  mu: object
  evaluation: dict  # {} when round t is not evaluated

  def arrays(self):
    return (self.state, self.m, self.evaluation)


class Progress:
  """The rounds a sweep's programs have done, over all of them, and the sweep's ETA
  (thread-safe: programs run side by side). The rate counts from the first round this
  segment recorded, so it includes the compilation of programs that start later."""

  def __init__(self, total_rounds: int, echo: bool = False):
    self.total, self.done, self.echo = total_rounds, 0, echo
    self._first = None  # (rounds done, time) at the first round recorded
    self._lock = threading.Lock()

  def resumed(self, rounds: int) -> None:
    with self._lock:
      self.done += rounds

  def tick(self) -> str:
    """Counts a round; returns the sweep's progress and ETA as text."""
    with self._lock:
      self.done += 1
      now = time.perf_counter()
      if self._first is None:
        self._first = (self.done, now)
      rounds, start = self._first
      rate = (self.done - rounds) / max(now - start, 1e-9)
      eta = ("ETA estimating" if self.done == rounds else
             f"ETA {experiment.format_duration((self.total - self.done) / rate)}")
      return f"sweep {self.done}/{self.total} program rounds, {eta}"


class _SweepProgram(loop.Program):
  """Experiments vmapped in one program (over devices when the mesh has several)."""

  def __init__(self, setup, specs, state, rows, reported, mesh, round_fn, evaluate_fn,
               server_template, progress: Progress | None = None):
    self.c, self.real = setup.config, len(rows)
    self.progress = progress
    self.names = list(rows)
    self.label = (self.names[0] if self.real == 1
                  else f"{self.names[0]} .. {self.names[-1]}")
    self.specs, self.state, self.rows_so_far, self.reported = specs, state, rows, reported
    self.server_template = server_template
    self.round_fn, self.evaluate_fn = round_fn, evaluate_fn
    # The same seed gives the same round keys (common random numbers).
    self.rounds_keys = jnp.stack([jax.random.split(jax.random.key(s.seed))[1] for s in specs])
    self.shard = shard = distributed.splitter(mesh)
    self.hp = shard(_stack_hparams(self.c, specs))
    self.adaptive = shard(jnp.array([s.adaptive for s in specs]))
    exp = setup.data
    self.data = (exp.train, exp.test_x, exp.test_y)
    if mesh is not None:  # the data, replicated on the devices the experiments are spread over
      self.data = distributed.replicator(mesh)(self.data)

  def dispatch(self, t, evaluate):
    state, (train, test_x, test_y) = self.state, self.data
    server_state = experiment.server_state_from(self.server_template, state["params"],
                                                state.get("server", {}))
    server_state, m, mu_state, mu = self.round_fn(
        server_state, adaptive_mu.MuState(**state["mu"]), train, self.hp,
        self.shard(_fold_in_each(self.rounds_keys, t)), self.adaptive)
    params = server_state.params
    diverged_at = jnp.where((state["diverged_at"] == 0) & ~m.finite, t, state["diverged_at"])
    evaluation = {}
    if evaluate:
      evaluation = self.evaluate_fn(params, train, test_x, test_y)
      # Finite parameters whose evaluation is not (the model's outputs overflow): diverged
      # too, from this round on (a row of NaN or inf is never written).
      # (B is inf where grad f = 0, at finite parameters: written as null, not a divergence.)
      finite = jnp.all(jnp.stack([jnp.isfinite(v) for k, v in evaluation.items()
                                  if k != "b_dissimilarity"]), axis=0)
      diverged_at = jnp.where((diverged_at == 0) & ~finite, t, diverged_at)
    self.state = {"params": params, "diverged_at": diverged_at, "mu": dict(mu_state._asdict())}
    extra = experiment.server_state_leaves(server_state)
    if extra:
      self.state["server"] = extra
    return _Round(t, self.state, m, mu, evaluation)

  def rows(self, r, evaluate, wall_time):
    done = self.progress.tick() if self.progress else ""
    if not evaluate:
      return []
    c, t = self.c, r.t
    diverged, ev, m, mu = _to_host((r.state["diverged_at"], r.evaluation, r.m, r.mu))
    for name, d, s in zip(self.names, diverged, self.specs):
      if d and name not in self.reported:
        self.reported[name] = int(d)
        logging.error("experiment %s diverged at round %d (lr=%g, mu=%g): its rows stop "
                      "there. %s", name, d, c.lr, s.mu, experiment.divergence_advice(c.lr, s.mu))
    outputs.say("round %d/%d (%s): accuracy %s%s", t, c.num_rounds, self.label,
                " ".join("diverged" if diverged[i] else f"{ev['test_accuracy'][i]:.3f}"
                         for i in range(self.real)), f"  ({done})" if done else "",
                echo=bool(self.progress and self.progress.echo))
    return [{"experiment": name, **experiment.metrics_row(
                t, jax.tree_util.tree_map(lambda a: a[i], m), {k: v[i] for k, v in ev.items()},
                wall_time, mu=mu[i])}
            for i, name in enumerate(self.names) if not diverged[i]]

  def checkpoint_state(self, r):
    # The real experiments' state: independent of the device count.
    return jax.tree_util.tree_map(lambda a: a[:self.real], r.state)

  def recorded(self, r, rows):
    for row in rows:
      self.rows_so_far[row["experiment"]].append(
          {k: v for k, v in row.items() if k != "experiment"})


def run_program(setup: experiment.Setup, specs: list, schedule: loop.Schedule,
                mesh: jax.sharding.Mesh | None = None, wd: Workdir | None = None,
                checkpoint_dir: str | None = None, sweep_stopping: threading.Event | None = None,
                progress: Progress | None = None):
  """Runs ``specs`` as one vmapped program -> ({name: [row per evaluated round]},
  {name: round it diverged at}).

  With a ``mesh`` of several devices the experiment axis is spread over them (padded with
  copies of the last experiment, whose results are dropped); the data is replicated. With
  ``wd`` and ``checkpoint_dir`` rows go to ``wd``'s rows.jsonl and the program checkpoints
  (and resumes) there. Programs running side by side share ``sweep_stopping``: once it is
  set, the program saves the round it is in and stops, as on a signal. ``progress`` counts its
  rounds into the sweep's ETA.
  """
  c = setup.config
  if len({statics(c, s) for s in specs}) != 1:
    raise ValueError("the algorithms of one program must share the static parts of its compiled "
                     "round (client optimizer and hooks: algorithms.round_statics): put "
                     "the others in programs of their own")
  spec = dataclasses.replace(setup.spec, **dict(statics(c, specs[0])))
  real = len(specs)
  names = [s.name for s in specs]
  # The same seed gives the same initial model (common random numbers).
  initial = [models.init_params(setup.model, jax.random.split(jax.random.key(s.seed))[0],
                                setup.data.input_spec) for s in specs]
  experiment.check_state_memory(c, spec, initial[0], len(specs))
  stack = lambda trees: jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *trees)
  stacked = _stack_hparams(c, specs)
  hps = [jax.tree_util.tree_map(lambda a, i=i: a[i], stacked) for i in range(real)]
  servers = [server.init_server_state(spec, p, c.num_clients, hp)
             for p, hp in zip(initial, hps)]
  server_template = servers[0]
  state = {"params": stack(initial),
           # the first non-finite round of each experiment (0 = none so far)
           "diverged_at": jnp.zeros(real, jnp.int32),
           # adaptive mu (the fixed-mu experiments carry it unused)
           "mu": dict(adaptive_mu.init(jnp.array([s.mu for s in specs], jnp.float32))._asdict())}
  if experiment.server_state_leaves(server_template):  # FedOpt's or SCAFFOLD's state
    state["server"] = stack([experiment.server_state_leaves(s) for s in servers])
  checkpoints = (checkpoints_lib.Checkpoints(checkpoint_dir,
                                             config_digest=wd and wd.config_digest)
                 if checkpoint_dir else None)
  done, rows = 0, {name: [] for name in names}
  if wd is not None:
    def expected_rows(done, state):
      diverged = np.asarray(state["diverged_at"])
      return {(name, t) for name, d in zip(names, diverged) for t in range(1, done + 1)
              if schedule.evaluated(t) and not (d and t >= d)}
    done, state, kept = loop.restore(checkpoints, state, loop.Output(wd, ROWS_FILE, ROW_KEYS),
                                     expected_rows, own=lambda row: row["experiment"] in rows)
    for r in kept:
      rows[r["experiment"]].append({k: v for k, v in r.items() if k != "experiment"})
    if done:
      logging.info("resuming %s after round %d", ", ".join(names), done)
  if progress is not None:
    progress.resumed(done)
  if mesh is not None and mesh.size > 1:
    padding = distributed.round_up(real, mesh) - real
    specs = specs + [specs[-1]] * padding
    state = jax.tree_util.tree_map(
        lambda a: jnp.concatenate([a] + [a[-1:]] * padding) if padding else a, state)
  round_fn, evaluate_fn = make_sweep_fns(setup.model.apply, setup.eval_model.apply, spec,
                                         len(specs), c.eval_batch_size, c.sweep.dissimilarity,
                                         any(s.adaptive for s in specs),
                                         c.sweep.global_train_loss)
  reported = {n: int(d) for n, d in zip(names, _to_host(state["diverged_at"])[:real]) if d}
  program = _SweepProgram(setup, specs, distributed.splitter(mesh)(state), rows, reported, mesh,
                          round_fn, evaluate_fn, server_template, progress)
  stop_asked = lambda: signals.received() or (sweep_stopping is not None
                                              and sweep_stopping.is_set() and "the sweep's stop")
  try:
    loop.run_rounds(
        program, schedule, done + 1,
        output=loop.Output(wd, ROWS_FILE, ROW_KEYS) if wd else None,
        checkpoints=checkpoints,
        wall_offset=max((r[-1]["wall_time"] for r in rows.values() if r), default=0.0),
        stop_asked=stop_asked,
        resume_hint=wd and f"run the same command with --workdir={wd.path} to resume")
  finally:
    if checkpoints is not None:
      checkpoints.close()
  return rows, reported


def _run_side_by_side(run_index, count: int, workers: int) -> list:
  """[run_index(i, sweep_stopping) for i in range(count)], ``workers`` at a time in threads
  (JAX releases the GIL while a program runs). When one fails, or a stop is asked for, the
  programs still running save their round and stop, those not started never start, and the
  first failure (else the first stop) is raised: the workdir resumes as after any stop."""
  if workers <= 1:
    return [run_index(i, None) for i in range(count)]
  sweep_stopping = threading.Event()

  def guarded(i):
    if sweep_stopping.is_set() or signals.received():
      return None  # never started; a resume runs it
    try:
      return run_index(i, sweep_stopping)
    except BaseException:
      sweep_stopping.set()
      raise

  pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="program")
  try:
    futures = [pool.submit(guarded, i) for i in range(count)]
    # Short waits: a signal that lands on a worker thread is handled only once the main
    # thread runs Python again, and the programs stop on what the handler notes.
    while concurrent.futures.wait(futures, timeout=0.2).not_done:
      pass
  except BaseException:  # e.g. Ctrl-C without signals.install(): the programs stop too
    sweep_stopping.set()
    raise
  finally:
    pool.shutdown(wait=True)
  errors = [f.exception() for f in futures if f.exception() is not None]
  failure = next((e for e in errors if not isinstance(e, Interrupted)), None)
  if failure is not None:
    raise failure
  if len(errors) > 1:
    raise Interrupted(f"{errors[0]} ({len(errors) - 1} other program(s) running beside it "
                      "stopped after their own current round, saved too)")
  if errors:
    raise errors[0]
  never_started = sum(f.result() is None for f in futures)
  if never_started:  # a stop came as the others finished: nothing of these was written
    raise Interrupted(f"stopped by {signals.received() or 'the sweep'} before {never_started} "
                      f"of {count} programs started (the others finished and are saved)")
  return [f.result() for f in futures]


def _checked_stats(c: ml_collections.ConfigDict, source) -> dict:
  """The statistics (and digest) of data set ``c``'s partition, its round spec checked, from
  host arrays that are dropped again: a sweep over partitions checks them all up front."""
  stats = experiment.prepare_data(c, source).stats
  experiment.round_spec(c, stats["max_train"])  # e.g. the data-order plan's size
  return {**stats, "eval_batch_size": min(c.eval_batch_size, stats["test_examples"])}


class _Setups:
  """The sweep's set-ups by data key, prepared when a program first needs one and dropped after
  its last program: a sweep over many partitions holds only the data sets of the programs
  running (an MNIST partition is ~200 MB)."""

  def __init__(self, make, program_keys: list, ready: dict):
    self._make, self._ready = make, dict(ready)
    self._left = collections.Counter(program_keys)
    self._lock = threading.Lock()
    self._key_locks = collections.defaultdict(threading.Lock)

  def acquire(self, key) -> experiment.Setup:
    with self._lock:
      key_lock = self._key_locks[key]
    with key_lock:  # two programs of one data set prepare it once
      if key not in self._ready:
        self._ready[key] = self._make(key)
      return self._ready[key]

  def release(self, key) -> None:
    with self._lock:
      self._left[key] -= 1
      if self._left[key] == 0:
        self._ready.pop(key, None)


def _experiments_per_program(c, num_experiments: int, wd: Workdir) -> int:
  """The config's value; else, on a resume, the value the sweep started with (its programs
  and checkpoints are laid out by it); else the backend's default."""
  started = wd.saved and wd.saved["sweep"]["experiments_per_program"]
  if started and c.sweep.experiments_per_program not in (0, started):
    raise ConfigError(f"config.sweep.experiments_per_program={c.sweep.experiments_per_program}: "
                      f"the sweep in {wd.path} was started with {started}, which lays out its "
                      "checkpoints; resume with that value (or 0), or pass a new --workdir")
  return (c.sweep.experiments_per_program or started
          or defaults.experiments_per_program(models.get(c.model), num_experiments,
                                              data=c.data))


def run(c: ml_collections.ConfigDict, workdir: str, source=None,
        progress: bool = True):
  """Runs the sweep of config ``c`` into ``workdir``: results.csv, summary table and figure.
  Re-running it with the same workdir resumes it.

  Args:
    c: a config of ``configs/`` with ``mode='sweep'`` (resolved here: ``config.resolve``).
    workdir: the sweep's directory (created; an unfinished sweep there is resumed).
    source: the raw examples of data set ``c.data`` already loaded (``single.run``'s);
      None loads them as ``c`` says.
    progress: print each evaluated round's line (with the sweep's ETA) and the outcome to
      stderr when absl's logging does not show them (outside launch.py); False: log only.
  Returns:
    {experiment name: its rows, one per evaluated round}.
  Raises:
    UserError: a bad config, workdir or data, in one line; DivergenceError after the other
      experiments finished when some diverged (results.csv holds everything else).
    Interrupted: a signal stopped the sweep after a saved round.
  """
  start = time.perf_counter()
  c = config_lib.resolve(c)
  specs = experiment_grid(c)
  wd = open_workdir(workdir, "sweep")
  try:
    # One data set per (federation, partition), all checked before anything is written; each
    # is placed on the device(s) only while programs of it run (``_Setups``).
    federations = config_lib.federations(c)
    keys = list(dict.fromkeys(s.data_key for s in specs))
    configs = {key: data_config(c, federations[key[0]], key[1]) for key in keys}
    source, genuine = experiment.load_source(c, source)
    first_setup = experiment.prepare(configs[keys[0]], source, lanes_over_devices=False,
                                     genuine=genuine)
    per_program = _experiments_per_program(
        c, max(sum(s.data_key == key for s in specs) for key in keys), wd)
    # (data key, experiments): a program never mixes data sets, nor algorithms whose rounds
    # differ in their static parts
    programs = []
    for key in keys:
      for kind in dict.fromkeys(statics(c, s) for s in specs):
        own = [s for s in specs if s.data_key == key and statics(c, s) == kind]
        programs += [(key, own[first:first + per_program])
                     for first in range(0, len(own), per_program)]
    side_by_side = min(len(programs),
                       c.sweep.concurrent_programs or defaults.concurrent_programs(per_program))
    if side_by_side > 1 and jax.process_count() > 1:
      # Every process must run the same collective programs in the same order.
      logging.warning("sweep.concurrent_programs=%d: several processes run programs one at a "
                      "time", c.sweep.concurrent_programs)
      side_by_side = 1
    resolved = ml_collections.ConfigDict(first_setup.config.to_dict())
    resolved.synthetic = c.synthetic
    resolved.partition_seed = c.partition_seed
    resolved.sweep.experiments_per_program = per_program
    resolved.sweep.concurrent_programs = side_by_side
    if len(keys) == 1:
      stats = first_setup.data.stats
    else:  # each data set's statistics and evaluation batch; one digest over all of them
      labels = {s.data_key: s.data_label for s in specs}
      datasets = {labels[keys[0]]: {**first_setup.data.stats,
                                    "eval_batch_size": first_setup.config.eval_batch_size}}
      for key in keys[1:]:
        datasets[labels[key]] = _checked_stats(configs[key], source)
      stats = {"datasets": datasets, "data_sha256": files.ordered_digest(np.array(
          [d["data_sha256"] for d in datasets.values()]))}
    # Every program's SCAFFOLD state must fit: checked before anything is written.
    params = models.init_params(first_setup.model, jax.random.key(0),
                                first_setup.data.input_spec)
    for _, chunk in programs:
      experiment.check_state_memory(c, dataclasses.replace(
          first_setup.spec, **dict(statics(c, chunk[0]))), params, len(chunk))
    wd.commit(resolved.to_dict(), stats)
    distributed.barrier("workdir ready")
    setups = _Setups(lambda key: experiment.prepare(configs[key], source,
                                                    lanes_over_devices=False, genuine=genuine),
                     [key for key, _ in programs], {keys[0]: first_setup})
    del first_setup

    sweep_progress = Progress(len(programs) * c.num_rounds, echo=progress)

    def run_index(index, sweep_stopping):
      key, chunk = programs[index]
      logging.info("program %d of %d: %s", index + 1, len(programs),
                   ", ".join(s.name for s in chunk))
      setup = setups.acquire(key)
      try:
        return run_program(setup, chunk, loop.Schedule.of(c), setup.mesh, wd,
                           wd.file(os.path.join("checkpoints", f"program_{index}")),
                           sweep_stopping, sweep_progress)
      finally:
        del setup
        setups.release(key)

    results, diverged = {}, {}
    for rows, bad in _run_side_by_side(run_index, len(programs), side_by_side):
      results.update(rows)
      diverged.update(bad)
    seconds = time.perf_counter() - start
    signals.check()  # a stop whose raise was swallowed after the last round (a GC callback)
    if wd.write:
      wd.check_present()
      table = plots.write_sweep_outputs(
          wd.path, specs, results, diverged,
          title=plots.sweep_title(c.to_dict()))
      outputs.write_json(wd.path, "summary.json",  # last: it marks the sweep finished
                         {"experiments": len(specs), "this_segment_seconds": seconds,
                          "diverged": diverged, "table": table})
  except Exception:
    wd.check_present()  # a deleted workdir is the cause of whatever failed after it
    raise
  finally:
    wd.close()
  outputs.say("sweep of %d experiments done in %.1fs; outputs in %s", len(specs), seconds,
              workdir, echo=progress)
  if diverged:
    raise DivergenceError(
        f"{len(diverged)} of {len(specs)} experiments diverged ("
        + ", ".join(f"{n} at round {t}" for n, t in diverged.items())
        + f"); results.csv in {workdir} holds their rows before that and all the others'. "
        + experiment.divergence_advice(c.lr, max(s.mu for s in specs)) + ".")
  return results
