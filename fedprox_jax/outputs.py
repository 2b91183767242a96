"""A run's working directory: config, environment, partition stats, metrics, summary, plot."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time

import jax
from absl import logging

from fedprox_jax.errors import WorkdirError
from fedprox_jax.files import FILE_MODE, atomic_write, read_regular, write_text  # noqa: F401

# The largest JSON file a run reads back (config.json, partition_stats.json, the autotuner's
# cache) and the largest JSON-lines file: far above any real one, and bounded.
MAX_JSON_BYTES = 64 << 20
MAX_JSONL_BYTES = 4 << 30

# A sweep's programs run side by side in threads and share its rows.jsonl: one append or
# rewrite at a time, so a resume's rewrite never drops another program's new rows.
_jsonl_lock = threading.Lock()

PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "ml-collections", "absl-py",
            "orbax-checkpoint", "tensorboardX", "tensorflow-datasets", "tensorflow-cpu",
            "tensorflow", "matplotlib")
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def project_version() -> dict:
  """The project's own version: its git commit (with "+changes" when the tree differs from
  it), or "unknown" outside a git checkout (e.g. the notebook's unpacked copy)."""
  def git(*args):
    return subprocess.run(["git", "-C", _PROJECT_ROOT, *args], capture_output=True, text=True,
                          timeout=10, check=True).stdout.strip()
  try:
    commit = git("rev-parse", "HEAD")
    changed = bool(git("status", "--porcelain", "--untracked-files=no"))
  except (OSError, subprocess.SubprocessError):
    return {"commit": "unknown"}
  return {"commit": commit + ("+changes" if changed else "")}


def cpu_model() -> str:
  """The CPU's model name as ``lscpu`` prints it (/proc/cpuinfo's, else lscpu's own, else the
  platform's word): the figure every CPU timing goes with."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  try:  # e.g. ARM Linux, whose /proc/cpuinfo names no model
    out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    return next(l.split(":", 1)[1].strip() for l in out.splitlines()
                if l.startswith("Model name"))
  except (OSError, subprocess.SubprocessError, StopIteration):
    return platform.processor() or platform.machine() or "unknown"


def environment() -> dict:
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return {"fedprox_jax": project_version(),
          "python": platform.python_version(), "platform": platform.platform(),
          "cpu": cpu_model(),
          "packages": versions, "backend": jax.default_backend(),
          "devices": [str(d) for d in jax.devices()],
          "device_kind": jax.devices()[0].device_kind}


def say(fmt: str, *args, echo: bool = False) -> None:
  """An INFO log line; with ``echo``, printed to stderr where absl does not show INFO lines
  (the Python API, a notebook: absl shows warnings only until its flags are parsed), so a
  run from Python reports its progress too."""
  if echo and not logging.level_info():
    print(fmt % args, file=sys.stderr, flush=True)
  else:
    logging.info(fmt, *args, stacklevel=2)  # the log line names the caller, not this function


def dumps(obj, **kwargs) -> str:
  """Strict JSON (``allow_nan=False``): a non-finite number raises instead of writing the
  invalid tokens NaN / Infinity that other JSON readers refuse."""
  return json.dumps(obj, allow_nan=False, **kwargs)


def _nulls_for_non_finite(obj):
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  if isinstance(obj, dict):
    return {k: _nulls_for_non_finite(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_nulls_for_non_finite(v) for v in obj]
  return obj


def write_json(workdir: str, name: str, obj) -> None:
  """A summary or record file; an undefined statistic (a NaN mean of no values) is null."""
  with atomic_write(os.path.join(workdir, name)) as f:
    f.write(dumps(_nulls_for_non_finite(obj), indent=2, sort_keys=True) + "\n")


def save_figure(fig, path: str) -> None:
  """Writes a matplotlib figure as a PNG through ``atomic_write``."""
  with atomic_write(path, "wb") as f:
    fig.savefig(f, format="png", dpi=100)


def new_figure(**kwargs):
  """A matplotlib Figure made without pyplot: library code never touches the caller's backend
  or figure list (a notebook's inline plots keep working)."""
  from matplotlib.figure import Figure
  return Figure(**kwargs)


def loads(text):
  """``json.loads`` whose every failure is a ValueError: JSON nested too deep for Python's
  recursion (a hostile or damaged file) included."""
  try:
    return json.loads(text)
  except RecursionError:
    raise ValueError("its JSON is nested too deeply to read") from None


def read_json(path: str, max_bytes: int = MAX_JSON_BYTES):
  """A JSON file's value. Raises OSError, or ValueError for anything that is not a regular
  file of at most ``max_bytes`` holding JSON (``files.read_regular``, ``loads``)."""
  data = read_regular(path, max_bytes, "JSON file")
  try:
    text = data.decode()
  except UnicodeDecodeError as e:
    raise ValueError(f"it is not UTF-8 text ({e})") from None
  return loads(text)


def append_jsonl(workdir: str, name: str, rows: list) -> None:
  """Appends ``rows`` and waits until they are on disk: a row is durable before the
  checkpoint that makes its round final is written."""
  lines = [dumps(row, sort_keys=True) + "\n" for row in rows]  # all valid before any is written
  # O_NOFOLLOW: a symbolic link planted at the file's name is refused, not written through.
  fd = os.open(os.path.join(workdir, name), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW,
               0o666)  # less the umask, like every output file
  with _jsonl_lock, os.fdopen(fd, "a") as f:
    f.writelines(lines)
    f.flush()
    os.fsync(f.fileno())


def keep_jsonl(workdir: str, name: str, keep, rewrite: bool = True, keys: tuple = ("round",)
               ) -> list:
  """Keeps the rows for which ``keep(row)`` holds (a resume redoes the others), each key of
  ``keys`` once (the first of repeated rows); returns them. With ``rewrite`` False (a process
  that does not write the workdir) only reads them."""
  path = os.path.join(workdir, name)
  with _jsonl_lock:
    if not os.path.exists(path):
      return []
    rows, seen = [], set()
    for r in read_jsonl(path, keys):
      key = tuple(r[k] for k in keys)
      if keep(r) and key not in seen:
        seen.add(key)
        rows.append(r)
    if not rewrite:
      return rows
    with atomic_write(path) as f:
      f.writelines(dumps(r, sort_keys=True) + "\n" for r in rows)
  return rows


def ensure_jsonl(workdir: str, name: str, rows: list, keys: tuple = ("round",)) -> None:
  """Checks that the file holds exactly ``rows`` (what the run computed and kept in memory);
  rewrites it, with a warning, when it was changed or deleted while the run went on."""
  path = os.path.join(workdir, name)
  try:
    on_disk = read_jsonl(path, keys) if os.path.exists(path) else None
  except WorkdirError:
    on_disk = None
  expected = [json.loads(dumps(r)) for r in rows]  # as the file holds them
  if on_disk == expected:
    return
  logging.warning("%s was changed or deleted while the run went on (%d of its %d rows as "
                  "computed): rewritten from the run's own rows", path,
                  sum(r in expected for r in on_disk or []), len(rows))
  with _jsonl_lock, atomic_write(path) as f:
    f.writelines(dumps(r, sort_keys=True) + "\n" for r in rows)


class TensorBoard:
  """Scalars per round as TensorBoard event files, written in the calling thread (tensorboardX's
  record writer: no TensorFlow import in the training process, so TF never touches the
  accelerator). Not through tensorboardX's SummaryWriter: its writer thread dies on a full
  disk and the next event then blocks for ever on its queue. A write that fails here is
  reported once and ends the TensorBoard output; metrics.jsonl is the record."""

  FLUSH_SECONDS = 10.0  # a flush per row cost the logistic regression 5 ms of its 37 ms round

  def __init__(self, logdir: str):
    from tensorboardX.event_file_writer import EventsWriter
    self._logdir = logdir
    self._events = None
    self._last_flush = time.monotonic()
    try:
      os.makedirs(logdir, exist_ok=True)
      self._events = EventsWriter(os.path.join(logdir, "events"))
    except OSError as e:
      self._failed(e)

  def _failed(self, e: OSError) -> None:
    logging.warning("TensorBoard events can no longer be written to %s (%s): the run goes on "
                    "without them; metrics.jsonl holds every row", self._logdir,
                    e.strerror or e)
    self._events = None

  def write(self, step: int, row: dict) -> None:
    if self._events is None:
      return
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.summary import scalar
    try:
      for key, value in row.items():
        if key != "round" and isinstance(value, (int, float)) and not isinstance(value, bool):
          self._events.write_event(Event(summary=scalar(key, float(value)), step=step,
                                         wall_time=time.time()))
      if time.monotonic() - self._last_flush > self.FLUSH_SECONDS:
        self._events.flush()
        self._last_flush = time.monotonic()
    except OSError as e:
      self._failed(e)

  def close(self) -> None:
    if self._events is not None:
      try:
        self._events.close()
      except OSError as e:
        self._failed(e)
      self._events = None


def read_jsonl(path: str, keys: tuple = ("round",)) -> list:
  """The rows of a JSON-lines file, each an object with ``keys``. A damaged last line (a kill
  while it was written) is dropped: its round comes after the last checkpoint and is
  recomputed on resume. Any other damage raises WorkdirError, in one line."""
  try:
    text = read_regular(path, MAX_JSONL_BYTES, "rows file").decode()
  except (ValueError, UnicodeDecodeError) as e:
    raise WorkdirError(f"{path} cannot be read ({e}): restore it, or pass a new --workdir") from e
  lines = [line for line in text.split("\n") if line.strip()]
  rows = []
  for i, line in enumerate(lines):
    try:
      row = loads(line)
    except ValueError as e:
      if i == len(lines) - 1:
        logging.warning("%s: dropping its damaged last line (%s)", path, e)
        break
      raise WorkdirError(f"{path} line {i + 1} is damaged ({e}): delete the line (or the "
                         "file, and the checkpoints with it) to resume") from e
    lacking = [k for k in keys if not isinstance(row, dict) or k not in row]
    if lacking or not isinstance(row["round"], int) or isinstance(row["round"], bool):
      raise WorkdirError(f"{path} line {i + 1} is not a row (" + (
          f"no {lacking[0]!r}" if lacking else f"round {row['round']!r} is not an integer")
          + "): delete the line (or the file, and the checkpoints with it) to resume")
    rows.append(row)
  return rows
