"""A run's working directory: config, environment, partition stats, metrics, summary, plot."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform

import jax

PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "ml-collections", "absl-py",
            "tensorflow-datasets", "tensorflow-cpu", "tensorflow", "matplotlib")


def default_workdir(now: datetime.datetime | None = None) -> str:
  """outputs/YYYY-MM-DD/HH-MM-SS, like the seed's Hydra runs."""
  now = now or datetime.datetime.now()
  return os.path.join("outputs", now.strftime("%Y-%m-%d"), now.strftime("%H-%M-%S"))


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


def append_jsonl(workdir: str, name: str, row: dict) -> None:
  with open(os.path.join(workdir, name), "a") as f:
    f.write(json.dumps(row, sort_keys=True) + "\n")


def truncate_jsonl(workdir: str, name: str, last_round: int) -> list:
  """Keeps the rows of rounds <= last_round (a resumed run redoes the later ones)."""
  path = os.path.join(workdir, name)
  if not os.path.exists(path):
    return []
  rows = [r for r in read_jsonl(path) if r["round"] <= last_round]
  with open(path + ".tmp", "w") as f:
    f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in rows)
  os.replace(path + ".tmp", path)
  return rows


class TensorBoard:
  """Scalars per round as TensorBoard event files (tensorboardX: no TensorFlow import needed
  in the training process, so TF never touches the accelerator)."""

  def __init__(self, logdir: str):
    from tensorboardX import SummaryWriter
    self._writer = SummaryWriter(logdir)

  def write(self, step: int, row: dict) -> None:
    for key, value in row.items():
      if key != "round" and isinstance(value, (int, float)):
        self._writer.add_scalar(key, float(value), step)
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def read_jsonl(path: str) -> list:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_metrics(rows: list, path: str, title: str = "") -> None:
  """Test accuracy and losses vs round, as a PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rounds = [r["round"] for r in rows]
  fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
  ax_acc.plot(rounds, [r["test_accuracy"] for r in rows])
  ax_acc.set(xlabel="round", ylabel="test accuracy", ylim=(0, 1))
  ax_loss.plot(rounds, [r["test_loss"] for r in rows], label="test loss (global model)")
  ax_loss.plot(rounds, [r["train_loss"] for r in rows], label="train loss (sampled clients)")
  ax_loss.set(xlabel="round", ylabel="cross-entropy")
  ax_loss.legend()
  for ax in (ax_acc, ax_loss):
    ax.grid(alpha=0.3)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
