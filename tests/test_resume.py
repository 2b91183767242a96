"""Checkpoint and resume, corrupted checkpoints, config changes, divergence, TensorBoard."""

import glob
import json
import os
import struct
import sys

import jax
import jax.numpy as jnp
import pytest

from fedprox_jax import checkpoints, server, simulate
from test_sweep import _tiny_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import mnist as mnist_config  # noqa: E402

MNIST = _tiny_mnist()


def _config(**overrides):
  c = mnist_config.get_config("fedprox")
  c.update(dict(model="mlr", num_clients=20, clients_per_round=5, num_rounds=6, local_epochs=2,
                checkpoint_every=2, stragglers_fraction=0.5))
  c.update(overrides)
  return c


class Killed(Exception):
  pass


def _kill_at(round_index):
  def on_round(t, row):
    if t == round_index:
      raise Killed(t)
  return on_round


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k != "wall_time"} for line in f]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("full"))
  simulate.run(_config(), workdir, mnist=MNIST)
  return _metrics(workdir)


@pytest.mark.parametrize("kills", [(3,), (2, 5), (1, 4, 6)])
def test_kill_and_resume_equals_uninterrupted_run(tmp_path, uninterrupted, kills):
  workdir = str(tmp_path)
  for k in kills:
    with pytest.raises(Killed):
      simulate.run(_config(), workdir, mnist=MNIST, on_round=_kill_at(k))
  summary = simulate.run(_config(), workdir, mnist=MNIST)
  assert summary["resumed_after_round"] == (kills[-1] // 2) * 2 or None
  assert _metrics(workdir) == uninterrupted  # bit-identical floats on CPU


def test_corrupted_latest_checkpoint_falls_back_to_previous(tmp_path, uninterrupted):
  workdir = str(tmp_path)
  with pytest.raises(Killed):
    simulate.run(_config(), workdir, mnist=MNIST, on_round=_kill_at(5))
  ckpt_dir = os.path.join(workdir, "checkpoints")
  assert checkpoints.Checkpoints(ckpt_dir).steps() == [2, 4]
  for path in glob.glob(os.path.join(ckpt_dir, "4", "**", "*"), recursive=True):
    if os.path.isfile(path):
      with open(path, "wb") as f:
        f.write(b"garbage")
  simulate.run(_config(), workdir, mnist=MNIST)
  assert _metrics(workdir) == uninterrupted


def test_all_checkpoints_corrupted_fails_clearly(tmp_path):
  workdir = str(tmp_path)
  with pytest.raises(Killed):
    simulate.run(_config(), workdir, mnist=MNIST, on_round=_kill_at(3))
  for path in glob.glob(os.path.join(workdir, "checkpoints", "*", "**", "*"), recursive=True):
    if os.path.isfile(path):
      with open(path, "wb") as f:
        f.write(b"garbage")
  with pytest.raises(checkpoints.CheckpointError, match="Delete that directory"):
    simulate.run(_config(), workdir, mnist=MNIST)


def test_config_change_on_resume_is_refused(tmp_path):
  workdir = str(tmp_path)
  with pytest.raises(Killed):
    simulate.run(_config(), workdir, mnist=MNIST, on_round=_kill_at(3))
  with pytest.raises(simulate.ConfigError, match=r"different config \(mu: 1.0 -> 0.5\)"):
    simulate.run(_config(mu=0.5), workdir, mnist=MNIST)


def _poison_round(monkeypatch, round_index):
  """NaN injection: round ``round_index`` starts from a global model with one NaN in it."""
  real = server.make_round_fn

  def poisoned_make_round_fn(apply_fn, spec):
    round_fn, calls = real(apply_fn, spec), []

    def poisoned(params, data, hp, key):
      calls.append(1)
      if len(calls) == round_index:
        params = jax.tree_util.tree_map(lambda a: a.at[(0,) * a.ndim].set(jnp.nan), params)
      return round_fn(params, data, hp, key)
    return poisoned

  monkeypatch.setattr(server, "make_round_fn", poisoned_make_round_fn)


def test_nan_injection_stops_with_round_and_keeps_last_checkpoint(tmp_path, monkeypatch):
  _poison_round(monkeypatch, 5)
  with pytest.raises(simulate.DivergenceError, match="diverged at round 5") as e:
    simulate.run(_config(), str(tmp_path), mnist=MNIST)
  assert "last good checkpoint is round 4" in str(e.value)
  assert checkpoints.Checkpoints(os.path.join(tmp_path, "checkpoints")).steps() == [2, 4]
  assert [r["round"] for r in _metrics(str(tmp_path))] == [1, 2, 3, 4]


def test_divergence_between_evaluations_names_its_round(tmp_path, monkeypatch):
  """With eval_every = checkpoint_every = 3 the host looks at rounds 3 and 6 only; the
  round that diverged (5) is still the one named, and no non-finite model is checkpointed."""
  _poison_round(monkeypatch, 5)
  with pytest.raises(simulate.DivergenceError, match="diverged at round 5.*round 3"):
    simulate.run(_config(eval_every=3, checkpoint_every=3), str(tmp_path), mnist=MNIST)
  assert checkpoints.Checkpoints(os.path.join(tmp_path, "checkpoints")).steps() == [3]


def test_real_divergence_from_a_huge_learning_rate(tmp_path):
  with pytest.raises(simulate.DivergenceError, match="diverged at round 1.*Lower --config.lr"):
    simulate.run(_config(lr=1e30), str(tmp_path), mnist=MNIST)


def _read_scalars(logdir):
  """{tag: [(step, value)]} from TensorBoard event files (TFRecord framing + Event protos)."""
  from tensorboardX.proto import event_pb2
  scalars = {}
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      raw = f.read()
    pos = 0
    while pos < len(raw):
      length = struct.unpack("<Q", raw[pos:pos + 8])[0]
      event = event_pb2.Event.FromString(raw[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for v in event.summary.value:
        scalars.setdefault(v.tag, []).append((event.step, v.simple_value))
  return scalars


def test_tensorboard_events_are_written_and_readable(tmp_path):
  simulate.run(_config(num_rounds=3), str(tmp_path), mnist=MNIST)
  scalars = _read_scalars(os.path.join(tmp_path, "tensorboard"))
  rows = _metrics(str(tmp_path))
  assert [step for step, _ in scalars["test_accuracy"]] == [1, 2, 3]
  for (step, value), row in zip(scalars["test_accuracy"], rows):
    assert value == pytest.approx(row["test_accuracy"], rel=1e-6)
  assert {"train_loss", "test_loss", "step_efficiency", "num_stragglers"} <= set(scalars)
