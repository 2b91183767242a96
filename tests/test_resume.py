"""Crash safety of single runs: kills at any instant, signals, locks, resume rules, divergence.

Every resumed run is compared row by row with an uninterrupted run of the same config.
"""

import glob
import json
import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import pytest

from fedprox_jax.run import checkpoints, experiment, single, sweep
from fedprox_jax.run import rows as rows_lib
from fedprox_jax.run import config as config_lib
from fedprox_jax import errors, outputs
from fedprox_jax.report import plots
from fedprox_jax.core import rounds
from fedprox_jax.run import workdir as workdir_lib
from helpers import ROOT, assert_same_rows, read_rows, tiny_mnist, tiny_run_config

MNIST = tiny_mnist()
FIELDS = ("test_accuracy", "test_loss", "local_train_loss", "num_stragglers", "num_aggregated",
          "useful_steps", "executed_steps")


def _config(**overrides):
  return tiny_run_config(**overrides)


class Killed(Exception):
  pass


def _kill_at(round_index):
  def on_round(t, row):
    if t == round_index:
      raise Killed(t)
  return on_round


def _run_killed_after(c, workdir, round_index):
  """Runs ``c`` in ``workdir`` until a kill right after round ``round_index`` is saved."""
  with pytest.raises(Killed):
    single.run(c, workdir, source=MNIST, on_round=_kill_at(round_index))


def _rows(workdir):
  return read_rows(os.path.join(workdir, "metrics.jsonl"))


def _same_as(rows, expected):
  assert_same_rows(rows, expected, FIELDS, rounds=[r["round"] for r in expected])
  assert rows == expected  # bit-identical floats on CPU


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("full"))
  single.run(_config(), workdir, source=MNIST)
  rows = _rows(workdir)
  assert [r["round"] for r in rows] == [1, 2, 3, 4, 5, 6]
  return rows


@pytest.mark.parametrize("kills", [(3,), (2, 5), (1, 4, 6)])
def test_kill_after_a_round_and_resume_equals_uninterrupted_run(tmp_path, uninterrupted, kills):
  workdir = str(tmp_path)
  for k in kills:
    _run_killed_after(_config(), workdir, k)
  summary = single.run(_config(), workdir, source=MNIST)
  last = kills[-1] // 2 * 2  # the newest checkpoint (checkpoint_every = 2, and round 6)
  assert summary["resumed_after_round"] == (last or None)
  _same_as(_rows(workdir), uninterrupted)


@pytest.mark.parametrize("algorithm", ["scaffold", "fedyogi"])
def test_server_state_resumes_exactly(tmp_path, algorithm):
  """SCAFFOLD's variates, FedYogi's moments and the clients' momentum are checkpointed with the
  model: a run killed after round 3 resumes to the uninterrupted run's rows."""
  c = _config(algorithm=algorithm, mu=0.0, momentum=0.5)
  full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
  single.run(c, full, source=MNIST)
  _run_killed_after(c, killed, 3)
  single.run(c, killed, source=MNIST)
  _same_as(_rows(killed), _rows(full))


def test_a_workdir_written_before_the_successors_resumes(tmp_path, uninterrupted):
  """A config.json without the fields issue 24 added (partition, algorithm, momentum, the
  server's) is compared as if it had the values that reproduce it: the run resumes."""
  workdir = str(tmp_path / "old")
  _run_killed_after(_config(), workdir, 3)
  path = os.path.join(workdir, "config.json")
  saved = outputs.read_json(path)
  for field in ("partition", "dirichlet_beta", "algorithm", "momentum", "server_lr",
                "server_momentum", "server_beta2", "server_tau"):
    del saved[field]
  del saved["sweep"]["splits"]
  with open(path, "w") as f:
    json.dump(saved, f)
  with pytest.raises(errors.ConfigError, match="momentum: 0.0 -> 0.5"):  # a real change still
    single.run(_config(momentum=0.5), workdir, source=MNIST)
  single.run(_config(), workdir, source=MNIST)
  _same_as(_rows(workdir), uninterrupted)


def _kill_during_save(monkeypatch, round_index):
  """A kill after round ``round_index``'s row is written, before its checkpoint commits."""
  real = checkpoints.Checkpoints.save

  def save(self, t, state):
    if t == round_index:
      raise Killed(t)
    return real(self, t, state)
  monkeypatch.setattr(checkpoints.Checkpoints, "save", save)


@pytest.mark.parametrize("round_index", [2, 4, 6])
def test_kill_between_row_and_checkpoint_loses_no_row(tmp_path, monkeypatch, uninterrupted,
                                                       round_index):
  with monkeypatch.context() as m:
    _kill_during_save(m, round_index)
    with pytest.raises(Killed):
      single.run(_config(), str(tmp_path), source=MNIST)
  summary = single.run(_config(), str(tmp_path), source=MNIST)
  _same_as(_rows(str(tmp_path)), uninterrupted)
  assert summary["final_test_accuracy"] == uninterrupted[-1]["test_accuracy"]


def test_one_round_run_killed_before_its_checkpoint_resumes(tmp_path, monkeypatch):
  full = str(tmp_path / "full")
  single.run(_config(num_rounds=1), full, source=MNIST)
  with monkeypatch.context() as m:
    _kill_during_save(m, 1)
    with pytest.raises(Killed):
      single.run(_config(num_rounds=1), str(tmp_path / "killed"), source=MNIST)
  summary = single.run(_config(num_rounds=1), str(tmp_path / "killed"), source=MNIST)
  assert summary["final_round"] == 1
  _same_as(_rows(str(tmp_path / "killed")), _rows(full))


def test_damaged_last_line_does_not_block_resume(tmp_path, uninterrupted):
  workdir = str(tmp_path)
  _run_killed_after(_config(), workdir, 3)
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write('{"round": 4, "test_acc')  # a kill in the middle of writing a row
  single.run(_config(), workdir, source=MNIST)
  _same_as(_rows(workdir), uninterrupted)


def test_wall_time_counts_every_segment(tmp_path):
  workdir = str(tmp_path)
  _run_killed_after(_config(), workdir, 4)
  before = outputs.read_jsonl(os.path.join(workdir, "metrics.jsonl"))[-1]["wall_time"]
  summary = single.run(_config(), workdir, source=MNIST)
  times = [r["wall_time"] for r in outputs.read_jsonl(os.path.join(workdir, "metrics.jsonl"))]
  assert times == sorted(times) and times[3] == before
  assert summary["rounds_loop_seconds"] == times[-1] > before
  assert summary["seconds_per_round"] == pytest.approx(times[-1] / 6)


_WORKER = textwrap.dedent("""
    import sys
    from fedprox_jax.run import signals, single
    from helpers import tiny_mnist, tiny_run_config
    signals.install()
    single.run(tiny_run_config(num_rounds=int(sys.argv[2]), checkpoint_every=1), sys.argv[1],
                 source=tiny_mnist())
""")


def _start_worker(workdir, num_rounds):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
  return subprocess.Popen([sys.executable, "-c", _WORKER, str(workdir), str(num_rounds)],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def _lines(path):
  return path.read_text().count("\n") if path.exists() else 0


def _wait_for_rows(proc, path, count, timeout=120):
  """Waits until ``path`` has ``count`` lines (True) or the process ended (False)."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if _lines(path) >= count:
      return True
    if proc.poll() is not None:
      return False
    time.sleep(0.005)
  raise AssertionError(f"no row {count} within {timeout}s")


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(tmp_path):
  """Real kills (SIGKILL) at random instants of the round loop of a run that checkpoints every
  round: during rounds, row writes, checkpoint saves, and between them."""
  num_rounds = 16
  reference = _start_worker(tmp_path / "full", num_rounds)
  assert reference.wait(timeout=300) == 0, reference.stderr.read()[-3000:]
  times = [r["wall_time"] for r in outputs.read_jsonl(str(tmp_path / "full" / "metrics.jsonl"))]
  round_seconds = (times[-1] - times[0]) / (len(times) - 1)  # a round with its row and checkpoint
  rng = random.Random(1234)
  workdir, metrics, kills = tmp_path / "killed", tmp_path / "killed" / "metrics.jsonl", 0
  while not (workdir / "summary.json").exists():
    assert kills < 12, "the run never finished"
    proc = _start_worker(workdir, num_rounds)
    if kills < 4 and _wait_for_rows(proc, metrics, _lines(metrics) + 1):
      time.sleep(rng.uniform(0, 2 * round_seconds))  # any phase of the next two rounds
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      kills += 1
    else:
      assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
  assert kills >= 3
  _same_as(_rows(workdir), _rows(tmp_path / "full"))


def test_sigterm_stops_cleanly_and_resumes(tmp_path):
  num_rounds = 40  # far more than the 2 rounds it gets before the signal
  proc = _start_worker(tmp_path / "stopped", num_rounds)
  deadline = time.time() + 120
  metrics = tmp_path / "stopped" / "metrics.jsonl"
  while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
    time.sleep(0.02)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode != 0, "the run ended before SIGTERM: raise num_rounds"
  assert "stopped by SIGTERM after round" in err and "to resume" in err, err[-2000:]
  c = _config(num_rounds=num_rounds, checkpoint_every=1)
  summary = single.run(c, str(tmp_path / "stopped"), source=MNIST)
  assert 2 <= summary["resumed_after_round"] < num_rounds
  single.run(c, str(tmp_path / "full"), source=MNIST)
  _same_as(_rows(str(tmp_path / "stopped")), _rows(str(tmp_path / "full")))


def test_workdir_is_locked_while_a_run_uses_it(tmp_path):
  with workdir_lib.Workdir(str(tmp_path), "run"):
    with pytest.raises(errors.WorkdirError, match="is in use by process"):
      single.run(_config(), str(tmp_path), source=MNIST)
  single.run(_config(num_rounds=2), str(tmp_path), source=MNIST)  # free again


def test_default_workdirs_of_one_second_differ(tmp_path, monkeypatch):
  import datetime
  monkeypatch.chdir(tmp_path)
  now = datetime.datetime(2026, 1, 2, 3, 4, 5)
  first, second = workdir_lib.default_workdir(now), workdir_lib.default_workdir(now)
  assert first != second and os.path.isdir(first) and os.path.isdir(second)


def test_sweep_never_writes_into_a_finished_run(tmp_path):
  single.run(_config(num_rounds=2), str(tmp_path), source=MNIST)
  before = {p: os.path.getmtime(p) for p in glob.glob(str(tmp_path / "*"))}
  c = _config(mode="sweep")
  with pytest.raises(errors.WorkdirError, match="holds a finished run"):
    sweep.run(c, str(tmp_path), source=MNIST)
  assert {p: os.path.getmtime(p) for p in glob.glob(str(tmp_path / "*"))} == before


def test_sweep_never_resumes_an_unfinished_run(tmp_path):
  _run_killed_after(_config(), str(tmp_path), 2)
  with pytest.raises(errors.WorkdirError, match="holds an unfinished run, and this is a sweep"):
    sweep.run(_config(mode="sweep"), str(tmp_path), source=MNIST)


def test_failed_start_leaves_the_workdir_usable(tmp_path):
  with pytest.raises(errors.ConfigError, match="num_devices=64: this process sees 1 device"):
    single.run(_config(num_devices=64), str(tmp_path), source=MNIST)
  with pytest.raises(errors.ConfigError, match="cannot partition"):
    single.run(_config(num_clients=25), str(tmp_path), source=MNIST)
  assert not os.path.exists(tmp_path / "config.json")
  single.run(_config(num_rounds=2), str(tmp_path), source=MNIST)


def test_fields_that_change_no_result_may_change_on_resume(tmp_path, uninterrupted):
  _run_killed_after(_config(), str(tmp_path), 3)
  # Where the data comes from, TensorBoard and the checkpoint interval do not block it ...
  single.run(_config(data_dir="/elsewhere", download=False, tensorboard=True,
                       checkpoint_every=3), str(tmp_path), source=MNIST)
  _same_as(_rows(str(tmp_path)), uninterrupted)


def test_config_change_on_resume_is_refused(tmp_path):
  _run_killed_after(_config(), str(tmp_path), 3)
  with pytest.raises(errors.ConfigError, match=r"different config \(mu: 1.0 -> 0.5\)"):
    single.run(_config(mu=0.5), str(tmp_path), source=MNIST)


def test_other_data_on_resume_is_refused(tmp_path):
  _run_killed_after(_config(), str(tmp_path), 3)
  with pytest.raises(errors.ConfigError, match="training data .* differs"):
    single.run(_config(), str(tmp_path), source=tiny_mnist(seed=1))


def test_config_json_records_the_layout_used_and_a_changed_layout_is_reported(tmp_path, caplog):
  _run_killed_after(_config(), str(tmp_path), 3)
  saved = outputs.read_json(str(tmp_path / "config.json"))
  assert (saved["num_lanes"], saved["num_devices"], saved["eval_batch_size"]) == (1, 1, 200)
  assert saved["weight_decay"] == 0.001  # the protocol's value, not None
  single.run(_config(num_lanes=2), str(tmp_path), source=MNIST)
  assert "num_lanes 1 -> 2" in caplog.text


def test_corrupted_latest_checkpoint_falls_back_to_previous(tmp_path, uninterrupted):
  workdir = str(tmp_path)
  _run_killed_after(_config(), workdir, 5)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  assert checkpoints.Checkpoints(ckpt_dir).steps() == [2, 4]
  for path in glob.glob(os.path.join(ckpt_dir, "4", "**", "*"), recursive=True):
    if os.path.isfile(path):
      with open(path, "wb") as f:
        f.write(b"garbage")
  single.run(_config(), workdir, source=MNIST)
  _same_as(_rows(workdir), uninterrupted)


def test_all_checkpoints_corrupted_fails_clearly(tmp_path):
  workdir = str(tmp_path)
  _run_killed_after(_config(), workdir, 3)
  for path in glob.glob(os.path.join(workdir, "checkpoints", "*", "**", "*"), recursive=True):
    if os.path.isfile(path):
      with open(path, "wb") as f:
        f.write(b"garbage")
  with pytest.raises(checkpoints.CheckpointError, match="Delete that directory"):
    single.run(_config(), workdir, source=MNIST)


def test_unwritable_checkpoints_directory_is_a_clear_error(tmp_path):
  (tmp_path / "checkpoints").write_text("a file where the directory should be")
  with pytest.raises(checkpoints.CheckpointError, match="cannot (write|use) the checkpoint"):
    single.run(_config(), str(tmp_path), source=MNIST)


def _poison_round(monkeypatch, round_index):
  """NaN injection: round ``round_index`` starts from a global model with one NaN in it."""
  real = rounds.make_round_fn

  def poisoned_make_round_fn(apply_fn, spec, with_state=False):
    round_fn, calls = real(apply_fn, spec, with_state), []

    def poisoned(state, data, hp, key):
      calls.append(1)
      if len(calls) == round_index:
        nan = lambda params: jax.tree_util.tree_map(
            lambda a: a.at[(0,) * a.ndim].set(jnp.nan), params)
        state = state._replace(params=nan(state.params)) if with_state else nan(state)
      return round_fn(state, data, hp, key)
    poisoned.compilations = 1
    return poisoned

  monkeypatch.setattr(rounds, "make_round_fn", poisoned_make_round_fn)


def test_nan_injection_stops_with_round_and_keeps_last_checkpoint(tmp_path, monkeypatch):
  _poison_round(monkeypatch, 5)
  with pytest.raises(errors.DivergenceError, match="diverged at round 5") as e:
    single.run(_config(), str(tmp_path), source=MNIST)
  assert "last good checkpoint is round 4" in str(e.value)
  assert checkpoints.Checkpoints(os.path.join(tmp_path, "checkpoints")).steps() == [2, 4]
  assert [r["round"] for r in _rows(str(tmp_path))] == [1, 2, 3, 4]


def test_divergence_between_evaluations_names_its_round(tmp_path, monkeypatch):
  """With eval_every = checkpoint_every = 3 the host looks at rounds 3 and 6 only; the
  round that diverged (5) is still the one named, and no non-finite model is checkpointed."""
  _poison_round(monkeypatch, 5)
  with pytest.raises(errors.DivergenceError, match="diverged at round 5.*round 3"):
    single.run(_config(eval_every=3, checkpoint_every=3), str(tmp_path), source=MNIST)
  assert checkpoints.Checkpoints(os.path.join(tmp_path, "checkpoints")).steps() == [3]


def test_real_divergence_from_a_huge_learning_rate(tmp_path):
  with pytest.raises(errors.DivergenceError, match="diverged at round 1.*Lower --config.lr"):
    single.run(_config(lr=1e30, mu=0.0), str(tmp_path), source=MNIST)


def test_divergence_from_lr_times_mu_above_2_says_lower_mu(tmp_path):
  with pytest.raises(errors.DivergenceError, match=r"lr \* mu = 30 > 2.*lower --config.mu"):
    single.run(_config(lr=0.3, mu=100.0), str(tmp_path), source=MNIST)
  assert "raise" not in rows_lib.divergence_advice(0.3, 100.0)


def test_all_dropped_rounds_record_no_local_loss(tmp_path):
  c = _config(num_rounds=2, stragglers_fraction=1.0, drop_stragglers=True,
              straggler_rule="exact")
  single.run(c, str(tmp_path), source=MNIST)
  rows = _rows(str(tmp_path))
  assert len(rows) == 2 and all(r["all_dropped"] and r["local_train_loss"] is None for r in rows)
  assert os.path.exists(tmp_path / "metrics.png")


def test_plots_redraws_a_single_runs_figure(tmp_path):
  single.run(_config(num_rounds=3, eval_every=2), str(tmp_path), source=MNIST)
  os.remove(tmp_path / "metrics.png")
  result = subprocess.run([sys.executable, "-m", "fedprox_jax.report.plots", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert os.path.exists(tmp_path / "metrics.png")


def test_metrics_plot_breaks_lines_at_missing_rounds():
  xs, ys = plots._with_gaps([2, 4, 8, 9], [0.1, 0.2, None, 0.4], 2)
  assert xs[:2] == [2, 4] and xs[2] != xs[2] and xs[3:] == [8, 9]  # NaN between 4 and 8
  assert ys[3] != ys[3]  # the undefined value is a gap too


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
  single.run(_config(num_rounds=3, tensorboard=True), str(tmp_path), source=MNIST)
  scalars = _read_scalars(os.path.join(tmp_path, "tensorboard"))
  rows = _rows(str(tmp_path))
  assert [step for step, _ in scalars["test_accuracy"]] == [1, 2, 3] == [r["round"] for r in rows]
  for (step, value), row in zip(scalars["test_accuracy"], rows):
    assert value == pytest.approx(row["test_accuracy"], rel=1e-6)
  assert {"local_train_loss", "test_loss", "step_efficiency", "num_stragglers"} <= set(scalars)


def test_setup_records_the_convolutions_used():
  cnn = experiment.prepare(config_lib.resolve(_config(model="cnn", autotune=False)), MNIST,
                           lanes_over_devices=True).config
  assert (cnn.conv_impl, cnn.eval_conv_impl, cnn.eval_batch_size) == ("im2col", "xla", 50)
  mlr = experiment.prepare(config_lib.resolve(_config()), MNIST,
                           lanes_over_devices=True).config
  assert (mlr.conv_impl, mlr.eval_conv_impl) == ("none", "none")
