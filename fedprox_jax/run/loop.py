"""The round loop: the one place that restores, schedules, records rows and checkpoints.

A single run is a program of one experiment, a sweep a batch of programs of several; both
go through ``restore`` and ``run_rounds`` with a ``Program`` that says what differs (what a
round computes, which rows it gives, what its checkpoint holds, what it logs).

Crash safety: a round's rows are written and flushed to disk before the checkpoint that makes
the round final; a resume restarts after the newest checkpoint whose rows are all on disk and
drops every row after it (those rounds are recomputed, identically). So whatever instant a run
is killed at, its resume ends with exactly the rows of an uninterrupted run.

Pipelined: round t + 1 is queued on the device while the host records round t (its rows, log
line and checkpoint cost no round time); one round is queued, never more. A stop (SIGTERM,
Ctrl-C, or a sweep's stop) ends the loop after the round that was running when it came: the
round queued behind it is discarded, the running one is recorded and checkpointed.
"""

from __future__ import annotations

import os
import time
from typing import Callable, NamedTuple

from absl import logging

from fedprox_jax import outputs
from fedprox_jax.errors import Interrupted
from fedprox_jax.run import signals


class Schedule(NamedTuple):
  """Which rounds have rows (are evaluated) and which are checkpointed."""
  num_rounds: int
  eval_every: int
  checkpoint_every: int

  def evaluated(self, t: int) -> bool:
    return t % self.eval_every == 0 or t == self.num_rounds

  def checkpointed(self, t: int) -> bool:
    return t % self.checkpoint_every == 0 or t == self.num_rounds

  @classmethod
  def of(cls, c) -> "Schedule":
    return cls(c.num_rounds, c.eval_every, c.checkpoint_every)


class Program:
  """What the loop drives: one compiled round over a batch of experiments (a run: one).

  ``dispatch`` queues a round on the device and returns a handle with ``t`` and ``arrays()``
  (what must be computed before the host records it); the other methods are the host's part.
  """

  def dispatch(self, t: int, evaluate: bool):
    raise NotImplementedError

  def rows(self, r, evaluate: bool, wall_time: float) -> list:
    """The rows of round ``r.t`` (none when it is not evaluated); raises to end the loop
    (a run's divergence)."""
    raise NotImplementedError

  def checkpoint_state(self, r):
    """The tree checkpointed after round ``r.t``."""
    raise NotImplementedError

  def recorded(self, r, rows: list) -> None:
    """After round ``r.t``'s rows and checkpoint are saved: logs, TensorBoard, callbacks."""


class Output(NamedTuple):
  """Where rows go: ``wd``'s file ``name`` (written by this process when ``wd.write``), each
  row with ``keys`` (a sweep's rows name their experiment)."""
  wd: object
  name: str
  keys: tuple = ("round",)

  @property
  def path(self) -> str:
    return self.wd.file(self.name)


def row_key(row: dict) -> tuple:
  """(experiment, round): a run's rows have no experiment (None)."""
  return row.get("experiment"), row["round"]


def restore(checkpoints, state_like, output: Output, expected_rows: Callable, own: Callable):
  """(rounds done, state, the kept rows of this program) after the newest checkpoint whose
  rows are all on disk; (0, ``state_like``, []) when there is none.

  ``expected_rows(done, state)`` is the set of ``row_key``s a checkpoint after round ``done``
  needs on disk; ``own(row)`` says which rows of the file are this program's. A row damaged or
  lost after its checkpoint sends the resume back to the newest checkpoint before it. The
  program's rows after the round restored are dropped from the file (others' rows stay).
  """
  done, state, max_round = 0, state_like, None
  while output.wd.resuming and checkpoints is not None:
    restored = checkpoints.restore_latest(state_like, max_round)
    if restored is None:
      break
    saved = _saved_rows(output)
    missing = sorted(expected_rows(*restored) - saved, key=lambda k: k[1])
    if not missing:
      done, state = restored
      break
    logging.warning("%s lacks the row of round %d (or holds two that differ) although round %d "
                    "was checkpointed: resuming from an earlier checkpoint, to compute it again",
                    output.path, missing[0][1], restored[0])
    max_round = missing[0][1] - 1
  kept = outputs.keep_jsonl(output.wd.path, output.name,
                            lambda r: not own(r) or r["round"] <= done, output.wd.write,
                            output.keys)
  return done, state, [r for r in kept if own(r)]


def _saved_rows(output: Output) -> set:
  """The ``row_key``s of the rows on disk. A row written twice (identically) counts once, and
  ``keep_jsonl`` keeps one; rows of one key that differ count as none: which one the round
  gave is unknown, so it is computed again."""
  if not os.path.exists(output.path):
    return set()
  first, conflicting = {}, set()
  for r in outputs.read_jsonl(output.path, output.keys):
    k = row_key(r)
    if k in first and first[k] != r:
      conflicting.add(k)
    elif k in first:
      logging.warning("%s holds the row of round %d twice: keeping one", output.path, k[1])
    first.setdefault(k, r)
  return set(first) - conflicting


def stopped(stop: str, t: int, resume_hint: str | None) -> Interrupted:
  return Interrupted(f"stopped by {stop} after round {t}" + (
      f", with its rows and checkpoint saved: {resume_hint}" if resume_hint else ""))


def run_rounds(program: Program, schedule: Schedule, first_round: int, *, output: Output | None,
               checkpoints, wall_offset: float = 0.0,
               stop_asked: Callable = signals.received, resume_hint: str | None = None) -> None:
  """Runs rounds ``first_round`` .. ``schedule.num_rounds`` of ``program``.

  Each round's rows go to ``output`` (None: kept in memory by the program only), then, on the
  schedule's rounds and on a stop, its checkpoint to ``checkpoints`` (None: none). A stop
  raises ``Interrupted`` after the round that was running when ``stop_asked()`` turned true;
  its message ends with ``resume_hint``. Row wall times continue from ``wall_offset``.
  """
  start = time.perf_counter()

  def record(r, stop=None):
    evaluate = schedule.evaluated(r.t)
    rows = program.rows(r, evaluate, wall_offset + time.perf_counter() - start)
    if rows and output is not None and output.wd.write:
      output.wd.check_present()
      outputs.append_jsonl(output.wd.path, output.name, rows)  # before the checkpoint
    if checkpoints is not None and (schedule.checkpointed(r.t) or stop):
      checkpoints.save(r.t, program.checkpoint_state(r))
    program.recorded(r, rows)
    if stop:
      raise stopped(stop, r.t, resume_hint if checkpoints is not None else None)

  with signals.deferred():
    running = None  # the round dispatched before the current one, not recorded yet
    last = None     # the round the loop ends after
    for t in range(first_round, schedule.num_rounds + 1):
      if stop_asked():
        last = running  # the stop came while it ran: nothing more is dispatched
        break
      queued = program.dispatch(t, schedule.evaluated(t))
      if running is not None:
        if not signals.wait_ready(running.arrays(), stop_asked=stop_asked):
          last = running  # the stop came while it ran: the queued round is discarded
          break
        record(running)
        if stop_asked():
          last = queued  # the stop came while the queued round ran
          break
      running = queued
    else:
      last = running
    if last is not None:
      signals.wait_ready(last.arrays(), stop_early=False)
      record(last, stop=stop_asked())
