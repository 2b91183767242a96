"""A run's working directory: config, environment, partition stats, metrics, summary, plot."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import threading

import jax
from absl import logging

from fedprox_jax.errors import WorkdirError

# A sweep's programs run side by side in threads and share its rows.jsonl: one append or
# rewrite at a time, so a resume's rewrite never drops another program's new rows.
_jsonl_lock = threading.Lock()

PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "ml-collections", "absl-py",
            "tensorflow-datasets", "tensorflow-cpu", "tensorflow", "matplotlib")


def environment() -> dict:
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return {"python": platform.python_version(), "platform": platform.platform(),
          "packages": versions, "backend": jax.default_backend(),
          "devices": [str(d) for d in jax.devices()],
          "device_kind": jax.devices()[0].device_kind}


def write_json(workdir: str, name: str, obj) -> None:
  path = os.path.join(workdir, name)
  with open(path + ".tmp", "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(path + ".tmp", path)  # never a half-written file


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


def append_jsonl(workdir: str, name: str, rows: list) -> None:
  """Appends ``rows`` and waits until they are on disk: a row is durable before the
  checkpoint that makes its round final is written."""
  with _jsonl_lock, open(os.path.join(workdir, name), "a") as f:
    f.writelines(json.dumps(row, sort_keys=True) + "\n" for row in rows)
    f.flush()
    os.fsync(f.fileno())


def keep_jsonl(workdir: str, name: str, keep, rewrite: bool = True) -> list:
  """Keeps the rows for which ``keep(row)`` holds (a resume redoes the others); returns them.
  With ``rewrite`` False (a process that does not write the workdir) only reads them."""
  path = os.path.join(workdir, name)
  with _jsonl_lock:
    if not os.path.exists(path):
      return []
    rows = [r for r in read_jsonl(path) if keep(r)]
    if not rewrite:
      return rows
    with open(path + ".tmp", "w") as f:
      f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    os.replace(path + ".tmp", path)
  return rows


class TensorBoard:
  """Scalars per round as TensorBoard event files (tensorboardX: no TensorFlow import needed
  in the training process, so TF never touches the accelerator)."""

  def __init__(self, logdir: str):
    from tensorboardX import SummaryWriter
    # Flushed every 10 s and at the end, not per row (a flush per row cost the logistic
    # regression's default run 5 ms of its 37 ms per round); metrics.jsonl is the record.
    self._writer = SummaryWriter(logdir, flush_secs=10)

  def write(self, step: int, row: dict) -> None:
    for key, value in row.items():
      if key != "round" and isinstance(value, (int, float)) and not isinstance(value, bool):
        self._writer.add_scalar(key, float(value), step)

  def close(self) -> None:
    self._writer.close()


def read_jsonl(path: str) -> list:
  """The rows of a JSON-lines file. A damaged last line (a kill while it was written) is
  dropped: its round comes after the last checkpoint and is recomputed on resume."""
  with open(path) as f:
    lines = [line for line in f.read().split("\n") if line.strip()]
  rows = []
  for i, line in enumerate(lines):
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as e:
      if i == len(lines) - 1:
        logging.warning("%s: dropping its damaged last line (%s)", path, e)
        break
      raise WorkdirError(f"{path} line {i + 1} is damaged ({e}): delete the line (or the "
                         "file, and the checkpoints with it) to resume") from e
  return rows
