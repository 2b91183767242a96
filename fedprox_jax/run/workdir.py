"""A run's or a sweep's working directory: its lock, its kind, and whether it resumes.

Policy (the same for runs and sweeps):
* one process at a time: the workdir is locked (``flock``) for the life of the run;
* a finished workdir (``summary.json``) is never written again;
* a run never resumes a sweep's workdir, nor a sweep a run's;
* ``config.json`` is written only once the set-up checks (config, data, partition, devices)
  have passed, so a failed start leaves nothing that blocks the corrected command;
* a resume must have the same result-determining config; fields that cannot change results
  (where the data comes from, TensorBoard, how often to checkpoint) may change, and changes of
  how the work is laid out (lanes, devices, conv implementation, ...) are reported, not refused.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os

from absl import logging

import jax

from fedprox_jax.run import distributed
from fedprox_jax import outputs
from fedprox_jax.errors import ConfigError, WorkdirError

from fedprox_jax.schema import ADDED_FIELDS, LAYOUT_FIELDS, NO_EFFECT_FIELDS


def default_workdir(now: datetime.datetime | None = None) -> str:
  """outputs/YYYY-MM-DD/HH-MM-SS (like the seed's Hydra runs), with -2, -3, ... appended when
  that directory exists, created here so that two runs started together never share one."""
  now = now or datetime.datetime.now()
  base = os.path.join("outputs", now.strftime("%Y-%m-%d"), now.strftime("%H-%M-%S"))
  os.makedirs(os.path.dirname(base), exist_ok=True)
  for n in range(1, 10_000):
    path = base if n == 1 else f"{base}-{n}"
    try:
      os.mkdir(path)
      return path
    except FileExistsError:
      continue
  raise WorkdirError(f"no free workdir name under {base}: pass --workdir")


# orbax reads a checkpoint directory's path as a glob pattern.
_GLOB_CHARACTERS = "*?[]"


def check_path(path: str) -> None:
  """One clear line for a workdir path the checkpoint library cannot use."""
  bad = sorted(set(os.path.abspath(path)) & set(_GLOB_CHARACTERS))
  if bad:
    raise WorkdirError(f"workdir {path!r} contains {' '.join(bad)}: the checkpoint library "
                       "reads paths as glob patterns; pass a --workdir without *, ?, [ or ]")


def flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def config_digest(config: dict) -> str:
  """sha256 of the fields of ``config`` that change results (the ones a resume compares):
  stored in every checkpoint, so that a config.json edited by hand cannot resume a run under
  another config than the one its checkpoints were computed with."""
  flat = flatten(json.loads(json.dumps(config)))
  kept = {k: v for k, v in flat.items()
          if k not in NO_EFFECT_FIELDS and k not in LAYOUT_FIELDS
          and not (k in ADDED_FIELDS and v == ADDED_FIELDS[k])}
  return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def open_workdir(path: str, kind: str) -> "Workdir":
  """Opens ``path`` in every process: process 0 locks and checks it (and alone writes it);
  the others wait for that, then only read it."""
  primary = jax.process_index() == 0
  wd = Workdir(path, kind, write=True) if primary else None
  distributed.barrier("workdir checked")
  return wd or Workdir(path, kind, write=False)


class Workdir:
  """An opened workdir. ``resuming`` says whether it holds an unfinished run of this kind
  (``commit`` then checks that its config is this one)."""

  def __init__(self, path: str, kind: str, write: bool = True):
    """Opens ``path`` for a ``kind`` ('run' or 'sweep'). With ``write`` False (processes
    other than 0) it only reads what process 0 wrote."""
    self.path, self.kind, self.write = path, kind, write
    self._lock = None
    self.config_digest = None  # of the config ``commit`` records (``config_digest``)
    # The config the workdir's run started with (None for a new workdir).
    try:
      self.saved = (outputs.read_json(self.file("config.json"))
                    if os.path.exists(self.file("config.json")) else None)
      if self.saved is not None and not isinstance(self.saved, dict):
        raise ValueError(f"it holds a JSON {type(self.saved).__name__}, not a config")
    except ValueError as e:
      raise WorkdirError(f"{self.file('config.json')} is damaged ({e}): pass a new "
                         "--workdir") from e
    if not write:
      self.resuming = self.saved is not None
      return
    check_path(path)
    self._created = not os.path.exists(path)
    try:
      os.makedirs(path, exist_ok=True)
      # The lock is on the directory itself: a lock file can be deleted from under a run.
      self._lock = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
      raise WorkdirError(f"workdir {path!r} cannot be written ({e.strerror or e}): pass a "
                         "--workdir in a writable place") from e
    try:
      fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      os.close(self._lock)
      self._lock = None
      try:  # never through a link, never waiting on a FIFO
        fd = os.open(self.file(".lock"), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd) as f:
          owner = f.read(200).strip() or "another process"
      except (OSError, UnicodeDecodeError):
        owner = "another process"
      raise WorkdirError(f"workdir {path!r} is in use by {owner}: wait for it to end, or pass "
                         "another --workdir")
    try:
      self._refuse_symlinks()
      # Only says who holds the lock (the lock itself is on the directory).
      outputs.write_text(self.file(".lock"), f"process {os.getpid()}\n")
      self.resuming = self._check()
    except BaseException:
      self.close()
      raise

  def _refuse_symlinks(self) -> None:
    """Everything the run writes is created inside the workdir: an entry that is a symbolic
    link would make it write wherever the link points."""
    for root, dirs, files in os.walk(self.path):
      for name in dirs + files:
        entry = os.path.join(root, name)
        if os.path.islink(entry):
          raise WorkdirError(f"workdir {self.path!r} holds a symbolic link {entry!r} -> "
                             f"{os.readlink(entry)!r}; a run writes only real files inside "
                             "its workdir: remove the link, or pass another --workdir")

  def file(self, name: str) -> str:
    return os.path.join(self.path, name)

  def _check(self) -> bool:
    saved, saved_kind = self.saved, None
    if saved is not None:
      saved_kind = "sweep" if saved.get("mode") == "sweep" else "run"
    if os.path.exists(self.file("summary.json")):
      raise WorkdirError(f"workdir {self.path!r} holds a finished {saved_kind or 'run'}: pass a "
                         "new --workdir, or delete the old one")
    if saved_kind is None:
      return False
    if saved_kind != self.kind:
      raise WorkdirError(f"workdir {self.path!r} holds an unfinished {saved_kind}, and this is a "
                         f"{self.kind}: pass a new --workdir")
    return True

  def commit(self, config: dict, stats: dict) -> None:
    """Records the resolved ``config``, the environment and the data's statistics once the
    set-up has passed its checks. On a resume, the one comparison with the saved config:
    a field that changes results refuses the resume, a changed layout is reported, and the
    data must be the same."""
    self.config_digest = config_digest(config)
    if not self.write:
      return
    if self.resuming:
      now = flatten(json.loads(json.dumps(config)))
      before = {**ADDED_FIELDS, **flatten(self.saved)}
      changed = sorted(k for k in set(before) | set(now)
                       if before.get(k) != now.get(k) and k not in NO_EFFECT_FIELDS
                       and k not in LAYOUT_FIELDS)
      if changed:
        details = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise ConfigError(f"workdir {self.path!r} holds an unfinished {self.kind} with a "
                          f"different config ({details}). Resume it with its own config, or "
                          "pass a new --workdir.")
      try:
        saved_stats = outputs.read_json(self.file("partition_stats.json"))
        saved_digest = saved_stats["data_sha256"]
      except (OSError, ValueError, KeyError, TypeError) as e:
        raise WorkdirError(f"{self.file('partition_stats.json')} is missing or damaged "
                           f"({type(e).__name__}: {e}): it records the data the run started "
                           "with; restore it, or pass a new --workdir") from e
      if saved_digest != stats.get("data_sha256"):
        raise ConfigError(f"workdir {self.path!r}: the training data (its partition and order) "
                          "differs from the one the run started with. Resume with the same "
                          "data, or pass a new --workdir.")
      moved = [f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in LAYOUT_FIELDS
               if before.get(k) != now.get(k)]
      if moved:
        logging.warning("resuming %s with another layout (%s): the rounds from here may differ "
                        "from an uninterrupted run's in the last float bits", self.path,
                        ", ".join(moved))
      return
    outputs.write_json(self.path, "partition_stats.json", stats)
    outputs.write_json(self.path, "environment.json", outputs.environment())
    outputs.write_json(self.path, "config.json", config)  # last: it marks a started run

  def check_present(self) -> None:
    """Raises when the workdir was deleted or replaced while the run went on: its outputs
    are gone, and a library that creates parent directories (the checkpointer) would
    otherwise write the rest into a new, incomplete directory at the same path."""
    if self._lock is None:
      return
    held = os.fstat(self._lock)
    try:
      now = os.stat(self.path)
      same = (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)
    except OSError:
      same = False
    if held.st_nlink == 0 or not same:
      raise WorkdirError(f"the workdir {self.path!r} was deleted or replaced while the "
                         f"{self.kind} went on: its outputs are lost; run again with a new "
                         "--workdir")

  def close(self) -> None:
    if self._lock is not None:
      with contextlib.suppress(OSError):
        os.unlink(self.file(".lock"))
        if self._created and not os.listdir(self.path):
          os.rmdir(self.path)  # a start that failed before writing anything leaves nothing
      fcntl.flock(self._lock, fcntl.LOCK_UN)
      os.close(self._lock)
      self._lock = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
