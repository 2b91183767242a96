"""One run: a program of one experiment, its lanes spread over the devices.

``run(config, workdir)`` is what ``launch.py`` calls; it is just as usable from a notebook.
The rounds, rows, checkpoints and resume are ``loop``'s (the same as a sweep's); this module
builds the run's round and writes its own outputs (metrics.jsonl, TensorBoard, metrics.png,
summary.json).
"""

from __future__ import annotations

import shutil
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from fedprox_jax import outputs
from fedprox_jax.core import adaptive_mu, metrics, models, rounds
from fedprox_jax.errors import DivergenceError
from fedprox_jax.report import plots
from fedprox_jax.run import checkpoints as checkpoints_lib
from fedprox_jax.run import config as config_lib
from fedprox_jax.run import distributed, experiment, loop, signals
from fedprox_jax.run import rows as rows_lib, server_state as server_state_lib
from fedprox_jax.run.workdir import Workdir, open_workdir

ROWS_FILE = "metrics.jsonl"  # a run's rows, one per evaluated round


def run(c: ml_collections.ConfigDict, workdir: str, source=None,
        on_round=None, progress: bool = True) -> dict:
  """Runs the experiment of config ``c``, writing everything into ``workdir``.

  A ``workdir`` holding an unfinished run of the same config is resumed from its last good
  checkpoint and gives exactly the metrics of an uninterrupted run.

  Args:
    c: a config of ``configs/`` (resolved here: ``config.resolve``).
    workdir: the run's directory (created; an unfinished run there is resumed).
    source: the raw examples of data set ``c.data`` already loaded (for MNIST a
      ``data.mnist.Mnist``, e.g. ``data.mnist.load_mnist``'s); None loads them as ``c`` says
      (``data/datasets.py``).
    on_round: ``on_round(round, row)`` after each evaluated round's row and checkpoint are
      saved.
    progress: print a line per evaluated round (with an ETA) and the outcome to stderr when
      absl's logging does not show them (outside launch.py); False: log them only.
  Returns:
    The summary (also summary.json): final and best accuracy, timings, seed, partition.
  Raises:
    UserError: a bad config, workdir or data, or a divergence, in one line.
    Interrupted: a signal stopped the run after a saved round (resume with the same command).
  """
  start = time.perf_counter()
  c = config_lib.resolve(c)
  # With several processes (hosts), process 0 writes the workdir, which must be shared.
  wd = open_workdir(workdir, "run")
  try:
    setup = experiment.prepare(c, source, lanes_over_devices=True)
    server_state_lib.check_memory(c, setup.spec, models.init_params(
        setup.model, jax.random.key(0), setup.data.input_spec))
    wd.commit(setup.config.to_dict(), setup.data.stats)
    distributed.barrier("workdir ready")
    logging.info("model %s, %d lanes on %d device(s), backend %s; setup took %.1fs", c.model,
                 setup.spec.num_lanes, setup.mesh.size, jax.default_backend(),
                 time.perf_counter() - start)
    checkpoints = checkpoints_lib.Checkpoints(wd.file("checkpoints"),
                                              config_digest=wd.config_digest)
    try:
      state, first_round, rows = _restore(setup, wd, checkpoints)
      rows, compilations = _train(setup, wd, checkpoints, state, first_round, rows, on_round,
                                  progress)
    finally:
      checkpoints.close()
    signals.check()  # a stop whose raise was swallowed after the last round (a GC callback)
    return _finish(setup, wd, rows, first_round, compilations, time.perf_counter() - start,
                   progress)
  except Exception:
    wd.check_present()  # a deleted workdir is the cause of whatever failed after it
    raise
  finally:
    wd.close()


def _restore(setup: experiment.Setup, wd: Workdir, checkpoints: checkpoints_lib.Checkpoints):
  """(state, first round to run, rows so far): from scratch, or after the newest checkpoint
  whose rows are on disk. The state is {"params"}, with adaptive mu {"mu": the adaptive-mu
  state's arrays}, and where the server keeps more than the model {"server": its arrays}."""
  c = setup.config
  init_key, _ = jax.random.split(jax.random.key(c.seed))
  state = {"params": models.init_params(setup.model, init_key, setup.data.input_spec)}
  if c.adaptive_mu:
    state["mu"] = dict(adaptive_mu.init(c.mu)._asdict())
  extra = server_state_lib.leaves(rounds.init_server_state(
      setup.spec, state["params"], c.num_clients, experiment.hparams(c)))
  if extra:
    state["server"] = extra
  schedule = loop.Schedule.of(c)
  done, state, rows = loop.restore(
      checkpoints, state, loop.Output(wd, ROWS_FILE),
      expected_rows=lambda done, _: {(None, t) for t in range(1, done + 1)
                                     if schedule.evaluated(t)},
      own=lambda row: True)
  if done:
    logging.info("resuming %s after round %d", wd.path, done)
  return distributed.replicator(setup.mesh)(state), done + 1, rows


def _divergence(c, t: int, checkpoints,
                what: str = "the train loss or the parameters are not finite") -> DivergenceError:
  last = checkpoints.steps()
  return DivergenceError(
      f"training diverged at round {t}: {what} (lr={c.lr}, mu={c.mu}). "
      + (f"The last good checkpoint is round {last[-1]} in {checkpoints.directory}. "
         if last else "No checkpoint was saved yet. ")
      + rows_lib.divergence_advice(c.lr, c.mu) + ", and start a new --workdir.")


def make_adapt_fn(setup: experiment.Setup):
  """Jitted (params, train data, mu state) -> the mu state after the global model ``params``
  (its training loss on all training examples; on the device, no wait for the host)."""
  c = setup.config

  def adapt(params, train, mu_state):
    _, loss = metrics.evaluate(setup.eval_model.apply, params, train.x, train.y,
                               c.eval_batch_size)
    return adaptive_mu.update(mu_state, loss)
  return jax.jit(adapt)


class _Round(NamedTuple):
  """A dispatched round's device values, until the host records it."""
  t: int
  server: object  # the ServerState after round t
  m: object
  mu: object
  mu_state: object
  diverged_at: object
  evaluation: tuple

  def arrays(self):
    return (self.server, self.m, self.diverged_at, self.evaluation)


class _RunProgram(loop.Program):
  """One experiment, its lanes spread over the devices; rows go to metrics.jsonl."""

  def __init__(self, setup: experiment.Setup, state: dict, rows: list, checkpoints, writer,
               on_round, progress: bool = False):
    c = self.c = setup.config
    self.setup, self.rows_so_far, self.checkpoints = setup, rows, checkpoints
    self.writer, self.on_round, self.progress = writer, on_round, progress
    replicate = distributed.replicator(setup.mesh)
    _, self.rounds_key = jax.random.split(jax.random.key(c.seed))
    self.replicate = replicate
    self.hp = replicate(experiment.hparams(c))
    self.round_fn = rounds.make_round_fn(setup.model.apply, setup.spec, with_state=True)
    self.adapt = make_adapt_fn(setup) if c.adaptive_mu else None
    template = rounds.init_server_state(setup.spec, state["params"], c.num_clients,
                                        experiment.hparams(c))
    self.server = server_state_lib.restore(template, state["params"],
                                               state.get("server", {}))
    self.mu_state = adaptive_mu.MuState(**state["mu"]) if self.adapt else None
    # The first non-finite round, tracked on the device: no round waits for the host to read it.
    self.diverged_at = jnp.int32(0)
    self.eta = _Eta(c.num_rounds)

  def dispatch(self, t, evaluate):
    exp = self.setup.data
    mu = self.mu_state.mu if self.adapt else self.hp.mu
    self.server, m = self.round_fn(self.server, exp.train, self.hp._replace(mu=mu),
                                   self.replicate(jax.random.fold_in(self.rounds_key, t)))
    params = self.server.params
    if self.adapt:
      self.mu_state = self.adapt(params, exp.train, self.mu_state)
    self.diverged_at = jnp.where((self.diverged_at == 0) & ~m.finite, t, self.diverged_at)
    # (A diverged round's evaluation is discarded.)
    evaluation = self.setup.evaluate(params, exp.test_x, exp.test_y) if evaluate else ()
    return _Round(t, self.server, m, mu, self.mu_state, self.diverged_at, evaluation)

  def rows(self, r, evaluate, wall_time):
    c, t = self.c, r.t
    first_bad, m, evaluation, mu = jax.device_get((r.diverged_at, r.m, r.evaluation, r.mu))
    if first_bad:
      raise _divergence(c, int(first_bad), self.checkpoints)
    if not evaluate:
      return []
    accuracy, test_loss = evaluation
    if not np.isfinite([accuracy, test_loss]).all():
      raise _divergence(c, t, self.checkpoints, f"the test loss is {float(test_loss)} although "
                        "the parameters are finite (the model's outputs overflow)")
    return [rows_lib.metrics_row(
        t, m, {"test_accuracy": accuracy, "test_loss": test_loss}, wall_time, mu)]

  def checkpoint_state(self, r):
    extra = server_state_lib.leaves(r.server)
    return {"params": r.server.params,
            **({"mu": dict(r.mu_state._asdict())} if self.adapt else {}),
            **({"server": extra} if extra else {})}

  def recorded(self, r, rows):
    for row in rows:
      self.rows_so_far.append(row)
      if self.writer:
        self.writer.write(r.t, row)
      _log_round(self.c, row, self.eta.rate(r.t), self.progress)
      if self.on_round:
        self.on_round(r.t, row)


def _train(setup: experiment.Setup, wd: Workdir, checkpoints, state: dict, first_round: int,
           rows: list, on_round, progress: bool = False):
  """Runs rounds first_round..num_rounds (``loop.run_rounds``); returns (all rows,
  compilations of the round)."""
  c = setup.config
  writer = None
  if c.tensorboard and wd.write:
    # Events are flushed every few seconds, so a killed run's last ones may be lost: a resume
    # writes them anew from the kept rows, and TensorBoard shows exactly metrics.jsonl.
    shutil.rmtree(wd.file("tensorboard"), ignore_errors=True)
    writer = outputs.TensorBoard(wd.file("tensorboard"))
    for row in rows:
      writer.write(row["round"], row)
  program = _RunProgram(setup, state, rows, checkpoints, writer, on_round, progress)
  try:
    loop.run_rounds(program, loop.Schedule.of(c), first_round, output=loop.Output(wd, ROWS_FILE),
                    checkpoints=checkpoints,
                    # Time of the earlier segments of a resumed run (from its last kept row).
                    wall_offset=rows[-1]["wall_time"] if rows else 0.0,
                    resume_hint=f"run the same command with --workdir={wd.path} to resume")
  finally:
    if writer:
      writer.close()
  return rows, program.round_fn.compilations


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


def _log_round(c, row: dict, rate: float | None, echo: bool = False) -> None:
  local = row["local_train_loss"]
  outputs.say("round %d/%d  acc %.4f  test loss %.4f  local train loss %s  stragglers %d%s  "
               "%s", row["round"], c.num_rounds, row["test_accuracy"],
               row["test_loss"], "none" if local is None else f"{local:.4f}",
               row["num_stragglers"],
               ("  (all dropped: global model kept)" if row["all_dropped"] else "")
               + (f"  mu {row['mu']:.2f}" if c.adaptive_mu else ""),
               "ETA estimating (from round 2 on)" if rate is None else
               f"{rate:.2f} rounds/s  ETA "
               + rows_lib.format_duration((c.num_rounds - row["round"]) / rate), echo=echo)


def _finish(setup: experiment.Setup, wd: Workdir, rows: list, first_round: int,
            compilations: int, total: float, progress: bool = False) -> dict:
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
      # 1 = the round was traced (and compiled) once for this segment.
      "round_compilations": compilations,
  }
  if wd.write:
    wd.check_present()
    outputs.ensure_jsonl(wd.path, ROWS_FILE, rows)
    plots.plot_metrics(rows, wd.file("metrics.png"),
                       f"{c.variant}: {c.model}, mu={c.mu}, stragglers={c.stragglers_fraction}",
                       c.eval_every)
    outputs.write_json(wd.path, "summary.json", summary)  # last: it marks the run finished
  outputs.say("done: final accuracy %.4f after %d rounds, %.3f s/round; outputs in %s",
              summary["final_test_accuracy"], c.num_rounds, summary["seconds_per_round"],
              wd.path, echo=progress)
  return summary
