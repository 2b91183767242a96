"""Checkpoints of a run's global model with orbax-checkpoint.

A run's state after round t is just (global params, t): every round's randomness comes from
``fold_in(run_key, t)``, so resuming from round t reproduces the uninterrupted run exactly.
Orbax writes each step into a temporary directory and renames it when complete, so a kill
during a save never leaves a step that looks finished; a step that fails to load anyway
(corrupted on disk) is skipped in favour of the previous one, with a warning.
"""

from __future__ import annotations

import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from fedprox_jax.errors import UserError


class CheckpointError(UserError):
  """No usable checkpoint although some exist; the message says what to do."""


class Checkpoints:
  """Saves and restores a run's state (a dict of arrays, e.g. {"params": ...}) and its round
  under ``directory`` (keeps the last ``max_to_keep``)."""

  def __init__(self, directory: str, max_to_keep: int = 3):
    self.directory = os.path.abspath(directory)
    try:
      self._manager = ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                               enable_async_checkpointing=False))
    except (OSError, ValueError) as e:
      raise CheckpointError(f"cannot use the checkpoint directory {self.directory} ({e}): free "
                            "disk space or fix the path, then run the same command") from e

  def save(self, round_index: int, state: dict) -> None:
    state = {**state, "round": np.asarray(round_index, np.int64)}
    try:
      self._manager.save(round_index, args=ocp.args.StandardSave(state), force=True)
      self._manager.wait_until_finished()
    except OSError as e:
      raise CheckpointError(f"cannot write the checkpoint of round {round_index} in "
                            f"{self.directory} ({e.strerror or e}): free disk space or fix the "
                            "directory's permissions, then run the same command to resume") from e

  def steps(self) -> list:
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def restore_latest(self, state_like: dict):
    """(round, state) of the newest checkpoint that loads (``state_like`` gives its structure),
    or None when there is none."""
    steps = self.steps()
    template = {**state_like, "round": np.asarray(0, np.int64)}
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
    damaged = []
    for step in reversed(steps):
      try:
        state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        if int(state["round"]) != step:
          raise ValueError(f"it claims round {int(state['round'])}")
      except Exception as e:  # orbax/tensorstore raise many types for damaged files
        logging.warning("checkpoint of round %d in %s does not load (%s: %s); trying the "
                        "previous one", step, self.directory, type(e).__name__, e)
        damaged.append(step)
        continue
      for bad in damaged:  # the resumed run will write these rounds again
        shutil.rmtree(os.path.join(self.directory, str(bad)), ignore_errors=True)
      self._manager.reload()
      state.pop("round")
      return step, state
    if steps:
      raise CheckpointError(
          f"none of the checkpoints {steps} in {self.directory} can be loaded. Delete that "
          "directory to restart the run from round 0, or use a new --workdir.")
    return None

  def close(self) -> None:
    self._manager.close()
