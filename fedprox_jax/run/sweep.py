"""Sweeps: a grid of experiments (``grid``) run as vmapped programs (``program``), side by
side in threads, each data set placed while its programs run; the sweep's outputs.

As trustworthy as a single run: rows are on disk (rows.jsonl) before the program's checkpoint
that makes their round final, so a killed sweep resumes (same command, same workdir) and ends
with the rows of an uninterrupted one; an experiment whose loss or parameters become
non-finite is named with its round, and none of its rows from then on is written.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import threading
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from fedprox_jax import files, outputs
from fedprox_jax.core import models
from fedprox_jax.data import datasets as datasets_lib
from fedprox_jax.errors import ConfigError, DivergenceError, Interrupted
from fedprox_jax.report import plots
from fedprox_jax.run import config as config_lib
from fedprox_jax.run import defaults, distributed, experiment, grid, loop, program, signals
from fedprox_jax.run import rows as rows_lib, server_state as server_state_lib
from fedprox_jax.run.workdir import Workdir, open_workdir


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
                                              datasets_lib.get(c.data)))


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
  specs = grid.experiment_grid(c)
  wd = open_workdir(workdir, "sweep")
  try:
    # One data set per (federation, partition), all checked before anything is written; each
    # is placed on the device(s) only while programs of it run (``_Setups``).
    federations = config_lib.federations(c)
    keys = list(dict.fromkeys(s.data_key for s in specs))
    configs = {key: grid.data_config(c, federations[key[0]], key[1]) for key in keys}
    source, genuine = experiment.load_source(c, source)
    first_setup = experiment.prepare(configs[keys[0]], source, lanes_over_devices=False,
                                     genuine=genuine)
    per_program = _experiments_per_program(
        c, max(sum(s.data_key == key for s in specs) for key in keys), wd)
    programs = grid.programs(c, specs, per_program)
    side_by_side = min(len(programs),
                       c.sweep.concurrent_programs or defaults.concurrent_programs(per_program))
    if side_by_side > 1 and jax.process_count() > 1:
      # Every process must run the same collective programs in the same order.
      logging.warning("sweep.concurrent_programs=%d: several processes run programs one at a "
                      "time", c.sweep.concurrent_programs)
      side_by_side = 1
    resolved = ml_collections.ConfigDict(first_setup.config.to_dict())
    if datasets_lib.get(c.data).federations is not None:  # its fields as given, not the first's
      for fields in federations.values():
        resolved.update({k: c[k] for k in fields})
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
      server_state_lib.check_memory(c, dataclasses.replace(
          first_setup.spec, **dict(grid.statics(c, chunk[0]))), params, len(chunk))
    wd.commit(resolved.to_dict(), stats)
    distributed.barrier("workdir ready")
    setups = _Setups(lambda key: experiment.prepare(configs[key], source,
                                                    lanes_over_devices=False, genuine=genuine),
                     [key for key, _ in programs], {keys[0]: first_setup})
    del first_setup

    sweep_progress = program.Progress(len(programs) * c.num_rounds, echo=progress)

    def run_index(index, sweep_stopping):
      key, chunk = programs[index]
      logging.info("program %d of %d: %s", index + 1, len(programs),
                   ", ".join(s.name for s in chunk))
      setup = setups.acquire(key)
      try:
        return program.run_program(setup, chunk, loop.Schedule.of(c), setup.mesh, wd,
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
        + rows_lib.divergence_advice(c.lr, max(s.mu for s in specs)) + ".")
  return results
