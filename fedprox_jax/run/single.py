"""One run: rounds, evaluation, checkpoints, resume.

``run(config, workdir)`` is what ``launch.py`` calls; it is just as usable from a notebook.

Crash safety: a round's metrics row is written and flushed to disk before the checkpoint that
makes the round final; a resume restarts after the newest checkpoint and drops any row after
it (those rounds are recomputed, identically). So whatever instant a run is killed at, its
resume ends with exactly the rows of an uninterrupted run.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from fedprox_jax.run import checkpoints as checkpoints_lib
from fedprox_jax.data import mnist as data_lib
from fedprox_jax.core import adaptive_mu, metrics, models
from fedprox_jax.run import distributed, experiment
from fedprox_jax import outputs
from fedprox_jax.report import plots
from fedprox_jax.core import server
from fedprox_jax.run import signals
from fedprox_jax.errors import DivergenceError, Interrupted
from fedprox_jax.run.workdir import Workdir, open_workdir


def run(c: ml_collections.ConfigDict, workdir: str, mnist: data_lib.Mnist | None = None,
        on_round=None) -> dict:
  """Runs the experiment of config ``c``, writing everything into ``workdir``; returns the summary.

  A ``workdir`` holding an unfinished run of the same config is resumed from its last good
  checkpoint and gives exactly the metrics of an uninterrupted run. ``mnist`` may be passed in
  (already loaded); ``on_round(round, row)`` is called after each evaluated round is saved.
  """
  start = time.perf_counter()
  c = experiment.validate_config(c)
  # With several processes (hosts), process 0 writes the workdir, which must be shared.
  wd = open_workdir(workdir, "run", c.to_dict())
  try:
    setup = experiment.prepare(c, mnist, lanes_over_devices=True)
    wd.commit(setup.config.to_dict(), setup.data.stats)
    distributed.barrier("workdir ready")
    logging.info("model %s, %d lanes on %d device(s), backend %s; setup took %.1fs", c.model,
                 setup.spec.num_lanes, setup.mesh.size, jax.default_backend(),
                 time.perf_counter() - start)
    checkpoints = checkpoints_lib.Checkpoints(wd.file("checkpoints"))
    try:
      state, first_round, rows = _restore(setup, wd, checkpoints)
      rows, compilations = _train(setup, wd, checkpoints, state, first_round, rows, on_round)
    finally:
      checkpoints.close()
    return _finish(setup, wd, rows, first_round, compilations, time.perf_counter() - start)
  finally:
    wd.close()


def _restore(setup: experiment.Setup, wd: Workdir, checkpoints: checkpoints_lib.Checkpoints):
  """(state, first round to run, rows so far): from scratch, or after the newest checkpoint.
  The state is {"params"} and, with adaptive mu, {"mu": the adaptive-mu state's arrays}."""
  c = setup.config
  init_key, _ = jax.random.split(jax.random.key(c.seed))
  state = {"params": models.init_params(setup.model, init_key, setup.data.train.x.shape[1:])}
  if c.adaptive_mu:
    state["mu"] = dict(adaptive_mu.init(c.mu)._asdict())
  done, max_round = 0, None
  while wd.resuming:
    restored = checkpoints.restore_latest(state, max_round)
    if restored is None:
      break
    # A checkpointed round is final only with every row up to it on disk: a row damaged or
    # lost after the fact sends the resume back to the newest checkpoint before it.
    saved = {r["round"] for r in outputs.read_jsonl(wd.file("metrics.jsonl"))} if os.path.exists(
        wd.file("metrics.jsonl")) else set()
    missing = [t for t in range(1, restored[0] + 1) if _evaluated(c, t) and t not in saved]
    if not missing:
      done, state = restored
      logging.info("resuming %s after round %d", wd.path, done)
      break
    logging.warning("%s lacks the row of round %d although round %d was checkpointed: resuming "
                    "from an earlier checkpoint, to compute it again", wd.file("metrics.jsonl"),
                    missing[0], restored[0])
    max_round = missing[0] - 1
  rows = outputs.keep_jsonl(wd.path, "metrics.jsonl", lambda r: r["round"] <= done, wd.write)
  return distributed.replicator(setup.mesh)(state), done + 1, rows


def _evaluated(c, t: int) -> bool:
  """Whether round t has a row (is evaluated)."""
  return t % c.eval_every == 0 or t == c.num_rounds


def _divergence(c, t: int, checkpoints,
                what: str = "the train loss or the parameters are not finite") -> DivergenceError:
  last = checkpoints.steps()
  return DivergenceError(
      f"training diverged at round {t}: {what} (lr={c.lr}, mu={c.mu}). "
      + (f"The last good checkpoint is round {last[-1]} in {checkpoints.directory}. "
         if last else "No checkpoint was saved yet. ")
      + experiment.divergence_advice(c.lr, c.mu) + ", and start a new --workdir.")


def make_adapt_fn(setup: experiment.Setup):
  """Jitted (params, train data, mu state) -> the mu state after the global model ``params``
  (its training loss on all training examples; on the device, no wait for the host)."""
  c = setup.config

  def adapt(params, train, mu_state):
    _, loss = metrics.evaluate(setup.eval_model.apply, params, train.x, train.y,
                               c.eval_batch_size)
    return adaptive_mu.update(mu_state, loss)
  return jax.jit(adapt)


def _train(setup: experiment.Setup, wd: Workdir, checkpoints, state: dict, first_round: int,
           rows: list, on_round):
  """Runs rounds first_round..num_rounds; returns (all rows, compilations of the round).

  Pipelined: round t + 1 is queued on the device while the host records round t (its row, log
  line and checkpoint cost no round time). A stop (SIGTERM, Ctrl-C) ends the run after the
  round that was running when it came: the round queued behind it is discarded, the running
  one is recorded and checkpointed.
  """
  c, exp = setup.config, setup.data
  replicate = distributed.replicator(setup.mesh)
  _, rounds_key = jax.random.split(jax.random.key(c.seed))
  hp = replicate(server.HParams.create(c.lr, c.mu, c.stragglers_fraction, c.drop_stragglers,
                                       c.clients_per_round, c.weight_decay))
  round_fn = server.make_round_fn(setup.model.apply, setup.spec)
  adapt = make_adapt_fn(setup) if c.adaptive_mu else None
  params = state["params"]
  mu_state = adaptive_mu.MuState(**state["mu"]) if adapt else None
  writer = None
  if c.tensorboard and wd.write:
    # Events are flushed every few seconds, so a killed run's last ones may be lost: a resume
    # writes them anew from the kept rows, and TensorBoard shows exactly metrics.jsonl.
    shutil.rmtree(wd.file("tensorboard"), ignore_errors=True)
    writer = outputs.TensorBoard(wd.file("tensorboard"))
    for row in rows:
      writer.write(row["round"], row)
  # Time of the earlier segments of a resumed run (from its last kept row).
  wall_offset = rows[-1]["wall_time"] if rows else 0.0
  loop_start = time.perf_counter()
  eta = _Eta(c.num_rounds)
  # The first non-finite round, tracked on the device: no round waits for the host to read it.
  diverged_at = jnp.int32(0)

  def dispatch(t):
    """Queues round t (and its evaluation when scheduled); returns what the host records."""
    nonlocal params, mu_state, diverged_at
    mu = mu_state.mu if adapt else hp.mu
    params, m = round_fn(params, exp.train, hp._replace(mu=mu),
                         replicate(jax.random.fold_in(rounds_key, t)))
    if adapt:
      mu_state = adapt(params, exp.train, mu_state)
    diverged_at = jnp.where((diverged_at == 0) & ~m.finite, t, diverged_at)
    evaluate = _evaluated(c, t)
    # (A diverged round's evaluation is discarded.)
    evaluation = setup.evaluate(params, exp.test_x, exp.test_y) if evaluate else ()
    return _Round(t, params, m, mu, mu_state, diverged_at, evaluation, evaluate)

  def record(r: _Round, stop: str | None = None):
    """The host's part of round r.t: its row, then its checkpoint (which makes it final)."""
    t = r.t
    first_bad, m, evaluation, mu = jax.device_get((r.diverged_at, r.m, r.evaluation, r.mu))
    if first_bad:
      raise _divergence(c, int(first_bad), checkpoints)
    if r.evaluate:
      accuracy, test_loss = evaluation
      if not np.isfinite([accuracy, test_loss]).all():
        raise _divergence(c, t, checkpoints, f"the test loss is {float(test_loss)} although the "
                          "parameters are finite (the model's outputs overflow)")
      elapsed = time.perf_counter() - loop_start
      row = experiment.metrics_row(
          t, m, {"test_accuracy": accuracy, "test_loss": test_loss}, wall_offset + elapsed, mu)
      if wd.write:  # the row is on disk before the checkpoint that makes round t final
        outputs.append_jsonl(wd.path, "metrics.jsonl", [row])
      rows.append(row)
      if writer:
        writer.write(t, row)
      _log_round(c, row, eta.rate(t))
    if t % c.checkpoint_every == 0 or t == c.num_rounds or stop:
      checkpoints.save(t, {"params": r.params, **(
          {"mu": dict(r.mu_state._asdict())} if adapt else {})})
    if r.evaluate and on_round:
      on_round(t, row)
    if stop:
      raise Interrupted(f"stopped by {stop} after round {t}, with its metrics and checkpoint "
                        f"saved: run the same command with --workdir={wd.path} to resume")

  try:
    with signals.deferred():
      running = None  # the round dispatched before the current one, not recorded yet
      last = None     # the round the run ends after
      for t in range(first_round, c.num_rounds + 1):
        if signals.received():
          last = running  # the stop came while it ran: nothing more is dispatched
          break
        queued = dispatch(t)
        if running is not None:
          if not signals.wait_ready(running.arrays()):
            last = running  # the stop came while it ran: the queued round is discarded
            break
          record(running)
          if signals.received():
            last = queued  # the stop came while the queued round ran
            break
        running = queued
      else:
        last = running
      if last is not None:
        signals.wait_ready(last.arrays(), stop_early=False)
        record(last, stop=signals.received())
  finally:
    if writer:
      writer.close()
  return rows, round_fn._cache_size()


class _Round(NamedTuple):
  """A dispatched round's device values, until the host records it."""
  t: int
  params: object
  m: object
  mu: object
  mu_state: object
  diverged_at: object
  evaluation: tuple
  evaluate: bool

  def arrays(self):
    return (self.params, self.m, self.diverged_at, self.evaluation)


class _Eta:
  """Time left, from the rounds after this segment's first recorded one (round 1 includes the
  compilation: an ETA from it overstates a long run several times)."""

  def __init__(self, num_rounds: int):
    self.num_rounds, self.first = num_rounds, None

  def rate(self, t: int) -> float | None:
    """Rounds per second after round ``t`` is done; None while it cannot be estimated."""
    now = time.perf_counter()
    if self.first is None:
      self.first = (t, now)
      return None
    t0, start = self.first
    return (t - t0) / max(now - start, 1e-9)


def _log_round(c, row: dict, rate: float | None) -> None:
  local = row["local_train_loss"]
  logging.info("round %d/%d  acc %.4f  test loss %.4f  local train loss %s  stragglers %d%s  "
               "%s", row["round"], c.num_rounds, row["test_accuracy"],
               row["test_loss"], "none" if local is None else f"{local:.4f}",
               row["num_stragglers"],
               ("  (all dropped: global model kept)" if row["all_dropped"] else "")
               + (f"  mu {row['mu']:.2f}" if c.adaptive_mu else ""),
               "ETA estimating (from round 2 on)" if rate is None else
               f"{rate:.2f} rounds/s  ETA "
               + experiment.format_duration((c.num_rounds - row["round"]) / rate))


def _finish(setup: experiment.Setup, wd: Workdir, rows: list, first_round: int,
            compilations: int, total: float) -> dict:
  c = setup.config
  summary = {
      "final_round": rows[-1]["round"], "final_test_accuracy": rows[-1]["test_accuracy"],
      "final_test_loss": rows[-1]["test_loss"],
      "best_test_accuracy": max(r["test_accuracy"] for r in rows),
      # Over every segment of a resumed run (rounds redone after a kill count once).
      "rounds_loop_seconds": rows[-1]["wall_time"],
      "seconds_per_round": rows[-1]["wall_time"] / rows[-1]["round"],
      "this_segment_seconds": total, "seed": c.seed, "partition": setup.data.stats,
      "resumed_after_round": first_round - 1 if first_round > 1 else None,
      # 1 = the round compiled once for this segment (JAX's jit cache entries).
      "round_compilations": compilations,
  }
  if wd.write:
    outputs.ensure_jsonl(wd.path, "metrics.jsonl", rows)
    plots.plot_metrics(rows, wd.file("metrics.png"),
                       f"{c.variant}: {c.model}, mu={c.mu}, stragglers={c.stragglers_fraction}",
                       c.eval_every)
    outputs.write_json(wd.path, "summary.json", summary)  # last: it marks the run finished
  logging.info("done: final accuracy %.4f after %d rounds, %.3f s/round; outputs in %s",
               summary["final_test_accuracy"], c.num_rounds, summary["seconds_per_round"],
               wd.path)
  return summary
