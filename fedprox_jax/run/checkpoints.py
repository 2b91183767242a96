"""Checkpoints of a run's global model with orbax-checkpoint.

A run's state after round t is just (global params, t): every round's randomness comes from
``fold_in(run_key, t)``, so resuming from round t reproduces the uninterrupted run exactly.
Orbax writes each step into a temporary directory and renames it when complete, so a kill
during a save never leaves a step that looks finished; a step that fails to load anyway
(corrupted on disk) is skipped in favour of the previous one, with a warning.

In a single process, saves run in the background: ``save`` returns once the state is copied
to the host and orbax writes it (~30 ms for the logistic regression on a 2-core CPU, longer
than its round) while the next rounds run. A round is final once its save completes; a kill
before that resumes from the previous checkpoint, as a kill before the save would. The next
``save``, ``steps`` and ``close`` wait for it and report its errors. (orbax's own async mode
was not used: after a failed save its threads wait 5 minutes before the process can exit.)
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import shutil
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from fedprox_jax.errors import ConfigError, UserError


DIGEST_BYTES = 32
CONFIG_KEY = "config_sha256"  # older checkpoints lack it (and are compared by config.json alone)


def digest(state: dict) -> np.ndarray:
  """sha256 of every array of ``state`` (host arrays) with its dtype and shape, in tree order,
  as 32 uint8."""
  h = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves(state):
    a = np.ascontiguousarray(leaf)
    h.update(str((a.dtype.str, a.shape)).encode() + a.tobytes())
  return np.frombuffer(h.digest(), np.uint8).copy()


class _OrbaxDiskErrors:
  """Drops orbax's own error logs (with tracebacks, from its writer threads) of a failed write:
  a full disk or the event loop it closes after one. ``Checkpoints._write`` reports that
  failure itself, in one line with what to do."""

  MARKERS = ("RESOURCE_EXHAUSTED", "No space left", "Event loop is closed", "Errno 28",
             "Read-only file system", "Permission denied")

  def filter(self, record) -> bool:
    if "orbax" not in record.pathname:
      return True
    text = str(record.msg) + (str(record.exc_info[1]) if record.exc_info else "")
    return not any(m in text for m in self.MARKERS)


if not any(isinstance(f, _OrbaxDiskErrors) for f in logging.get_absl_logger().filters):
  logging.get_absl_logger().addFilter(_OrbaxDiskErrors())


def _quiet_closed_loop(previous):
  """After a failed write, tensorstore's callbacks still post to the event loop orbax closed:
  Python prints each "RuntimeError: Event loop is closed" as an unraisable exception. Those
  are dropped (the failure is reported once, by ``Checkpoints._write``); others go on."""
  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"):
      previous(unraisable)
  hook.quiet_closed_loop = True
  return hook


if not getattr(sys.unraisablehook, "quiet_closed_loop", False):
  sys.unraisablehook = _quiet_closed_loop(sys.unraisablehook)


class CheckpointError(UserError):
  """No usable checkpoint although some exist; the message says what to do."""


class Checkpoints:
  """Saves and restores a run's state (a dict of arrays, e.g. {"params": ...}) and its round
  under ``directory`` (keeps the last ``max_to_keep``). With ``config_digest`` (the hex sha256
  of the run's result-determining config, ``workdir.config_digest``) every checkpoint stores
  it, and a checkpoint that stores another is refused: its run had another config."""

  def __init__(self, directory: str, max_to_keep: int = 3, config_digest: str | None = None):
    self.directory = os.path.abspath(directory)
    self._config = (None if config_digest is None
                    else np.frombuffer(bytes.fromhex(config_digest), np.uint8).copy())
    self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
    self._pending = None  # the save in progress
    self.saved = set()  # rounds saved by this object
    try:
      self._manager = ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                               enable_async_checkpointing=False))
    except (OSError, ValueError) as e:
      raise CheckpointError(f"cannot use the checkpoint directory {self.directory} ({e}): free "
                            "disk space or fix the path, then run the same command") from e

  def save(self, round_index: int, state: dict) -> None:
    """Starts saving ``state`` as round ``round_index``, once the previous save is on disk."""
    self.wait()
    self.saved.add(round_index)
    # Multi-process saves are collective (orbax's barriers): those stay in the caller's thread.
    if jax.process_count() > 1:
      self._write(round_index, state)
      return
    host_state = jax.device_get(state)  # the arrays as they are now, off the device
    self._pending = self._writer.submit(self._write, round_index, host_state)

  def _write(self, round_index: int, state: dict) -> None:
    state = {**state, "round": np.asarray(round_index, np.int64)}
    if self._config is not None:
      state[CONFIG_KEY] = self._config
    # orbax does not checksum the arrays: a digest stored beside them catches a damaged file.
    state["digest"] = (digest(state) if jax.process_count() == 1  # host arrays
                       else np.zeros(DIGEST_BYTES, np.uint8))  # multi-process: not verified
    try:
      self._manager.save(round_index, args=ocp.args.StandardSave(state), force=True)
      self._manager.wait_until_finished()
    except Exception as e:  # OSError, or tensorstore's ValueError("RESOURCE_EXHAUSTED: ...")
      text = str(e)
      reason = ("no space left on the device" if "No space left" in text or
                "RESOURCE_EXHAUSTED" in text else getattr(e, "strerror", None) or
                f"{type(e).__name__}: {text.splitlines()[0][:200] if text else ''}")
      raise CheckpointError(f"cannot write the checkpoint of round {round_index} in "
                            f"{self.directory} ({reason}): free disk space or fix the "
                            "directory's permissions, then run the same command to resume") from e

  def wait(self) -> None:
    """Waits until the last save is on disk; raises its error if it failed."""
    pending, self._pending = self._pending, None
    if pending is not None:
      pending.result()

  def steps(self) -> list:
    self.wait()
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def restore_latest(self, state_like: dict, max_round: int | None = None):
    """(round, state) of the newest checkpoint (of a round <= ``max_round``, if given) that
    loads and matches its digest (``state_like`` gives its structure), or None when there is
    none."""
    steps = self.steps()
    template = {**state_like, "round": np.asarray(0, np.int64),
                "digest": np.zeros(DIGEST_BYTES, np.uint8)}
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
    damaged = []
    for step in reversed(steps):
      if max_round is not None and step > max_round:
        continue
      try:
        state = self._restore_step(step, abstract)
        if int(state["round"]) != step:
          raise ValueError(f"it claims round {int(state['round'])}")
        stored = np.asarray(state.pop("digest"), np.uint8)
        if stored.any() and not np.array_equal(stored, digest(jax.device_get(state))):
          raise ValueError("its arrays do not match the digest saved with them")
      except Exception as e:  # orbax/tensorstore raise many types for damaged files
        logging.warning("checkpoint of round %d in %s does not load (%s: %s); trying the "
                        "previous one", step, self.directory, type(e).__name__, e)
        damaged.append(step)
        continue
      saved_config = state.pop(CONFIG_KEY, None)
      if (saved_config is not None and self._config is not None
          and not np.array_equal(np.asarray(saved_config, np.uint8), self._config)):
        raise ConfigError(
            f"the checkpoint of round {step} in {self.directory} was computed with another "
            "config than the one config.json and this command give (was config.json edited?): "
            "resume with the config the run started with, or pass a new --workdir")
      for later in steps[steps.index(step) + 1:]:  # the resumed run writes these rounds again
        shutil.rmtree(os.path.join(self.directory, str(later)), ignore_errors=True)
      self._manager.reload()
      state.pop("round")
      return step, state
    if damaged:
      raise CheckpointError(
          f"none of the checkpoints {damaged} in {self.directory} can be loaded. Delete that "
          "directory to restart the run from round 0, or use a new --workdir.")
    for later in steps:  # all after max_round: the run restarts from round 0
      shutil.rmtree(os.path.join(self.directory, str(later)), ignore_errors=True)
    self._manager.reload()
    return None

  def _restore_step(self, step: int, abstract: dict) -> dict:
    """Round ``step``'s state, with the config digest where it has one (checkpoints written
    before the digest existed have none; orbax's metadata cannot say which before the
    manager has restored a step, so the digest's layout is tried first)."""
    with_config = {**abstract, CONFIG_KEY: jax.ShapeDtypeStruct((DIGEST_BYTES,), np.uint8)}
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(with_config))
    except Exception as first:  # no digest in it (an older checkpoint), or damaged
      try:
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
      except Exception:
        raise first from None

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self._writer.shutdown()
      self._manager.close()
