"""One run: rounds, evaluation, checkpoints, resume.

``run(config, workdir)`` is what ``launch.py`` calls; it is just as usable from a notebook.

Crash safety: a round's metrics row is written and flushed to disk before the checkpoint that
makes the round final; a resume restarts after the newest checkpoint and drops any row after
it (those rounds are recomputed, identically). So whatever instant a run is killed at, its
resume ends with exactly the rows of an uninterrupted run.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from fedprox_jax import checkpoints as checkpoints_lib
from fedprox_jax import data as data_lib
from fedprox_jax import adaptive_mu, distributed, experiment, metrics, models, outputs, plots
from fedprox_jax import server, signals
from fedprox_jax.errors import DivergenceError, Interrupted
from fedprox_jax.workdir import Workdir, open_workdir


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
  done = 0
  restored = checkpoints.restore_latest(state) if wd.resuming else None
  if restored is not None:
    done, state = restored
    logging.info("resuming %s after round %d", wd.path, done)
  rows = outputs.keep_jsonl(wd.path, "metrics.jsonl", lambda r: r["round"] <= done, wd.write)
  return distributed.replicator(setup.mesh)(state), done + 1, rows


def _divergence(c, t: int, checkpoints) -> DivergenceError:
  last = checkpoints.steps()
  return DivergenceError(
      f"training diverged at round {t}: the train loss or the parameters are not finite "
      f"(lr={c.lr}, mu={c.mu}). "
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
  """Runs rounds first_round..num_rounds; returns (all rows, compilations of the round)."""
  c, exp = setup.config, setup.data
  replicate = distributed.replicator(setup.mesh)
  _, rounds_key = jax.random.split(jax.random.key(c.seed))
  hp = replicate(server.HParams.create(c.lr, c.mu, c.stragglers_fraction, c.drop_stragglers,
                                       c.clients_per_round, c.weight_decay))
  round_fn = server.make_round_fn(setup.model.apply, setup.spec)
  adapt = make_adapt_fn(setup) if c.adaptive_mu else None
  params = state["params"]
  mu_state = adaptive_mu.MuState(**state["mu"]) if adapt else None
  writer = (outputs.TensorBoard(wd.file("tensorboard")) if c.tensorboard and wd.write
            else None)
  # Time of the earlier segments of a resumed run (from its last kept row).
  wall_offset = rows[-1]["wall_time"] if rows else 0.0
  loop_start = time.perf_counter()

  def record(t, params, m, mu, mu_state, diverged_at, evaluation, evaluate, save, stop):
    """The host's part of round t: its row, then its checkpoint (which makes it final)."""
    first_bad, m, evaluation, mu = jax.device_get((diverged_at, m, evaluation, mu))
    if first_bad:
      raise _divergence(c, int(first_bad), checkpoints)
    if evaluate:
      accuracy, test_loss = evaluation
      elapsed = time.perf_counter() - loop_start
      row = experiment.metrics_row(
          t, m, {"test_accuracy": accuracy, "test_loss": test_loss}, wall_offset + elapsed, mu)
      if wd.write:  # the row is on disk before the checkpoint that makes round t final
        outputs.append_jsonl(wd.path, "metrics.jsonl", [row])
      rows.append(row)
      if writer:
        writer.write(t, row)
      _log_round(c, row, (t - first_round + 1) / elapsed)
    if save:
      checkpoints.save(t, {"params": params, **(
          {"mu": dict(mu_state._asdict())} if adapt else {})})
    if evaluate and on_round:
      on_round(t, row)
    if stop:
      raise Interrupted(f"stopped by {stop} after round {t}, with its metrics and checkpoint "
                        f"saved: run the same command with --workdir={wd.path} to resume")

  try:
    with signals.deferred():
      # The first non-finite round, tracked on the device: rounds between checkpoints and
      # evaluations are dispatched without waiting for the host.
      diverged_at = jnp.int32(0)
      pending = None  # an evaluated or saved round the host has not recorded yet
      for t in range(first_round, c.num_rounds + 1):
        mu = mu_state.mu if adapt else hp.mu
        params, m = round_fn(params, exp.train, hp._replace(mu=mu),
                             replicate(jax.random.fold_in(rounds_key, t)))
        if adapt:
          mu_state = adapt(params, exp.train, mu_state)
        diverged_at = jnp.where((diverged_at == 0) & ~m.finite, t, diverged_at)
        stop = signals.received()
        evaluate = t % c.eval_every == 0 or t == c.num_rounds
        save = t % c.checkpoint_every == 0 or t == c.num_rounds or stop
        current = None
        if evaluate or save:
          # Dispatched, not awaited (a diverged round's evaluation is discarded).
          evaluation = setup.evaluate(params, exp.test_x, exp.test_y) if evaluate else ()
          current = functools.partial(record, t, params, m, mu, mu_state, diverged_at,
                                      evaluation, evaluate, save, stop)
        # Round t is queued on the device: the host records the previous one meanwhile (its
        # row, log line and checkpoint cost no round time). A stop records at once.
        if pending is not None:
          pending()
        pending = current
        if stop:
          break
      if pending is not None:
        pending()
  finally:
    if writer:
      writer.close()
  return rows, round_fn._cache_size()


def _log_round(c, row: dict, rate: float) -> None:
  local = row["local_train_loss"]
  logging.info("round %d/%d  acc %.4f  test loss %.4f  local train loss %s  stragglers %d%s  "
               "%.2f rounds/s  ETA %s", row["round"], c.num_rounds, row["test_accuracy"],
               row["test_loss"], "none" if local is None else f"{local:.4f}",
               row["num_stragglers"],
               ("  (all dropped: global model kept)" if row["all_dropped"] else "")
               + (f"  mu {row['mu']:.2f}" if c.adaptive_mu else ""), rate,
               experiment.format_duration((c.num_rounds - row["round"]) / rate))


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
    plots.plot_metrics(rows, wd.file("metrics.png"),
                       f"{c.variant}: {c.model}, mu={c.mu}, stragglers={c.stragglers_fraction}",
                       c.eval_every)
    outputs.write_json(wd.path, "summary.json", summary)  # last: it marks the run finished
  logging.info("done: final accuracy %.4f after %d rounds, %.3f s/round; outputs in %s",
               summary["final_test_accuracy"], c.num_rounds, summary["seconds_per_round"],
               wd.path)
  return summary
