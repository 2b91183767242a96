"""A program: experiments of one sweep vmapped in one compiled round (over the devices when
the mesh has several), run through ``loop.run_rounds`` with their rows and checkpoints.

mu, the stragglers fraction, the drop flag and the seed are traced values, so the experiments
of one model share one compiled round, vmapped over an experiment axis. Common random
numbers: an experiment's round key depends only on its seed and the round, so for a given
seed every algorithm sees the same clients, the same stragglers with the same epoch counts,
and the same data orders.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from fedprox_jax import outputs
from fedprox_jax.core import adaptive_mu, metrics, models, rounds
from fedprox_jax.run import checkpoints as checkpoints_lib
from fedprox_jax.run import distributed, experiment, grid, loop, signals
from fedprox_jax.run import rows as rows_lib, server_state as server_state_lib
from fedprox_jax.run.workdir import Workdir

ROWS_FILE = "rows.jsonl"  # every experiment's rows, with its name
ROW_KEYS = ("experiment", "round")



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
def make_sweep_fns(apply_fn, eval_apply_fn, spec: rounds.RoundSpec, size: int,
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
    state, m = rounds.round_step(apply_fn, spec, state, data, hp, key)
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
             f"ETA {rows_lib.format_duration((self.total - self.done) / rate)}")
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
    self.hp = shard(grid.stacked_hparams(self.c, specs))
    self.adaptive = shard(jnp.array([s.adaptive for s in specs]))
    exp = setup.data
    self.data = (exp.train, exp.test_x, exp.test_y)
    if mesh is not None:  # the data, replicated on the devices the experiments are spread over
      self.data = distributed.replicator(mesh)(self.data)

  def dispatch(self, t, evaluate):
    state, (train, test_x, test_y) = self.state, self.data
    server_state = server_state_lib.restore(self.server_template, state["params"],
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
    extra = server_state_lib.leaves(server_state)
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
                      "there. %s", name, d, c.lr, s.mu, rows_lib.divergence_advice(c.lr, s.mu))
    outputs.say("round %d/%d (%s): accuracy %s%s", t, c.num_rounds, self.label,
                " ".join("diverged" if diverged[i] else f"{ev['test_accuracy'][i]:.3f}"
                         for i in range(self.real)), f"  ({done})" if done else "",
                echo=bool(self.progress and self.progress.echo))
    return [{"experiment": name, **rows_lib.metrics_row(
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
  if len({grid.statics(c, s) for s in specs}) != 1:
    raise ValueError("the algorithms of one program must share the static parts of its compiled "
                     "round (client optimizer and hooks: algorithms.round_statics): put "
                     "the others in programs of their own")
  spec = dataclasses.replace(setup.spec, **dict(grid.statics(c, specs[0])))
  real = len(specs)
  names = [s.name for s in specs]
  # The same seed gives the same initial model (common random numbers).
  initial = [models.init_params(setup.model, jax.random.split(jax.random.key(s.seed))[0],
                                setup.data.input_spec) for s in specs]
  server_state_lib.check_memory(c, spec, initial[0], len(specs))
  stack = lambda trees: jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *trees)
  stacked = grid.stacked_hparams(c, specs)
  hps = [jax.tree_util.tree_map(lambda a, i=i: a[i], stacked) for i in range(real)]
  servers = [rounds.init_server_state(spec, p, c.num_clients, hp)
             for p, hp in zip(initial, hps)]
  server_template = servers[0]
  state = {"params": stack(initial),
           # the first non-finite round of each experiment (0 = none so far)
           "diverged_at": jnp.zeros(real, jnp.int32),
           # adaptive mu (the fixed-mu experiments carry it unused)
           "mu": dict(adaptive_mu.init(jnp.array([s.mu for s in specs], jnp.float32))._asdict())}
  if server_state_lib.leaves(server_template):  # FedOpt's or SCAFFOLD's state
    state["server"] = stack([server_state_lib.leaves(s) for s in servers])
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
