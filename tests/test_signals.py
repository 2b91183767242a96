"""SIGINT/SIGTERM as the README promises: a run stops after the round running when the signal
came (not the one queued behind it), a second signal stops at once, and neither is lost inside
a logging call. Real signals, sent to this process or to a launched one."""

import logging
import os
import signal
import time

import pytest

from fedprox_jax.run import checkpoints as checkpoints_lib
from fedprox_jax import errors, outputs, schema
from fedprox_jax.run import signals, single
from helpers import read_rows, start_launch, tiny_mnist, tiny_run_config, wait_for_lines
from helpers import write_idx_dir

MNIST = tiny_mnist()


@pytest.fixture
def installed(monkeypatch):
  """signals.install() for the test, the handlers and the noted signal restored after it."""
  handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
  monkeypatch.setitem(signals._state, "received", None)
  signals.install()
  yield
  for sig, handler in handlers.items():
    signal.signal(sig, handler)


def _config():
  return tiny_run_config(num_rounds=12, checkpoint_every=100, eval_every=1)


def _steps(workdir):
  c = checkpoints_lib.Checkpoints(os.path.join(workdir, "checkpoints"))
  try:
    return c.steps()
  finally:
    c.close()


def _rounds(workdir):
  return [r["round"] for r in outputs.read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("full")
  single.run(_config(), str(workdir), source=MNIST)
  return read_rows(str(workdir / "metrics.jsonl"))


def test_a_runs_rows_have_the_schema_columns(uninterrupted):
  # A run's rows carry every column of the schema but the sweeps' own three and the optional
  # inexactness (wall_time is dropped by read_rows).
  assert len(uninterrupted) == 12 and all(
      set(r) == set(schema.ROW_FIELDS) - {"global_train_loss", "dissimilarity", "b_dissimilarity",
                                          "gamma_mean", "gamma_max", "wall_time"}
      for r in uninterrupted)


def _resumed_equals_uninterrupted(workdir, uninterrupted):
  single.run(_config(), workdir, source=MNIST)
  assert read_rows(os.path.join(workdir, "metrics.jsonl")) == uninterrupted


def test_a_signal_while_a_round_is_recorded_stops_after_the_round_then_running(
    tmp_path, installed, uninterrupted):
  # While the host records round 5 (its on_round call), round 6 runs: the run ends after 6.
  def on_round(t, row):
    if t == 5:
      os.kill(os.getpid(), signal.SIGINT)
  workdir = str(tmp_path / "run")
  with pytest.raises(errors.Interrupted, match="stopped by SIGINT after round 6, with its"):
    single.run(_config(), workdir, source=MNIST, on_round=on_round)
  assert _rounds(workdir) == list(range(1, 7)) and _steps(workdir) == [6]
  signals._state["received"] = None
  _resumed_equals_uninterrupted(workdir, uninterrupted)


def test_a_signal_while_a_round_runs_discards_the_round_queued_behind_it(tmp_path, installed,
                                                                        monkeypatch):
  # The host waits for round k while round k + 1 is queued: a signal then ends the run after
  # round k, and round k + 1 is never recorded.
  real_wait, calls = signals.wait_ready, []

  def wait_ready(tree, *args, **kwargs):
    calls.append(1)
    if len(calls) == 4:  # the wait for round 4 (round 5 queued)
      os.kill(os.getpid(), signal.SIGTERM)
    return real_wait(tree, *args, **kwargs)
  monkeypatch.setattr(signals, "wait_ready", wait_ready)
  workdir = str(tmp_path / "run")
  with pytest.raises(errors.Interrupted, match="stopped by SIGTERM after round 4, with its"):
    single.run(_config(), workdir, source=MNIST)
  assert _rounds(workdir) == [1, 2, 3, 4] and _steps(workdir) == [4]


def test_a_second_signal_stops_at_once(tmp_path, installed, uninterrupted):
  def on_round(t, row):
    if t == 5:
      os.kill(os.getpid(), signal.SIGINT)  # noted: the run would stop after round 6
      os.kill(os.getpid(), signal.SIGINT)  # at once: round 6 is never recorded
  workdir = str(tmp_path / "run")
  with pytest.raises(errors.Interrupted, match="a second signal"):
    single.run(_config(), workdir, source=MNIST, on_round=on_round)
  assert _rounds(workdir) == list(range(1, 6)) and _steps(workdir) == []
  signals._state["received"] = None
  _resumed_equals_uninterrupted(workdir, uninterrupted)


def test_a_signal_inside_a_logging_call_is_not_swallowed(installed):
  """logging's handlers catch Exception (and print '--- Logging error ---'): the stop is not
  an Exception, so a second signal that lands inside a log call still stops."""
  class Handler(logging.Handler):  # as logging.StreamHandler.emit guards its write
    def emit(self, record):
      try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
      except Exception:
        self.handleError(record)
  logger = logging.getLogger("test_signals")
  logger.addHandler(handler := Handler())
  try:
    with signals.deferred():
      os.kill(os.getpid(), signal.SIGINT)
      assert signals.received() == "SIGINT"
      with pytest.raises(errors.Interrupted, match="a second signal"):
        logger.error("a round's log line")
  finally:
    logger.removeHandler(handler)
  assert not issubclass(errors.Interrupted, Exception)


def test_two_ctrl_c_during_a_long_round_are_two_signals(tmp_path):
  """launch.py, a round of ~1 s: the main thread waits in short sleeps, so the second Ctrl-C
  0.05 s after the first is handled as a second signal (a wait inside one C call would merge
  them into one, and the run would stop only after the round)."""
  write_idx_dir(tmp_path / "idx", num_train=2000, num_test=300)
  args = ["--config=configs/mnist.py:fedprox", "--config.data_source=idx",
          f"--config.data_dir={tmp_path / 'idx'}", "--config.allow_modified_mnist=True",
          "--config.model=mlr", "--config.num_clients=20", "--config.clients_per_round=5",
          "--config.local_epochs=2000", "--config.num_rounds=30", "--config.tensorboard=False",
          f"--workdir={tmp_path / 'run'}"]
  proc = start_launch(args)
  metrics = tmp_path / "run" / "metrics.jsonl"
  wait_for_lines(proc, metrics, 2)
  rows = outputs.read_jsonl(str(metrics))
  assert rows[1]["wall_time"] - rows[0]["wall_time"] > 0.3, (
      "a round is too short for this test: raise local_epochs")
  proc.send_signal(signal.SIGINT)  # while round 3 runs (round 4 queued)
  time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-3000:]
  assert "\nstopped by SIGINT (a second signal: at once)" in err, err[-3000:]
  assert "error:" not in err  # a stop is what was asked for, not an error
  assert "Traceback" not in err and "Logging error" not in err


def test_a_signal_whose_raise_was_swallowed_after_the_last_round_still_stops(tmp_path, installed):
  """A signal landing inside JAX's garbage-collection callback after the last round: Python
  printed "Exception ignored" and the run finished as a success. The signal is noted all the
  same, and the run stops before it writes its final outputs."""
  config = _config()

  def on_round(t, row):
    if t == config.num_rounds:  # the handler ran, its raise was lost
      signals._state["received"] = "SIGTERM"
  with pytest.raises(errors.Interrupted, match="stopped by SIGTERM"):
    single.run(config, str(tmp_path), source=MNIST, on_round=on_round, progress=False)
  assert not (tmp_path / "summary.json").exists()
  assert _rounds(str(tmp_path)) == list(range(1, config.num_rounds + 1))  # all rows kept
  signals.restore_default()


def test_an_interrupted_raise_is_not_printed_as_ignored(installed, capsys):
  import sys
  sys.unraisablehook(type("U", (), {"exc_value": errors.Interrupted("stopped by SIGINT"),
                                    "exc_type": errors.Interrupted, "exc_traceback": None,
                                    "err_msg": None, "object": None})())
  assert "Exception ignored" not in capsys.readouterr().err


@pytest.mark.parametrize("delay", [0.3, 1.0])
def test_ctrl_c_while_launch_starts_is_one_line(tmp_path, delay):
  """Ctrl-C while absl, the config and JAX load: the process aborted (nanobind, rc 134), went
  on as if nothing came (rc 0) or printed a traceback."""
  write_idx_dir(tmp_path / "idx", num_train=2000, num_test=300)
  proc = start_launch(["--config=configs/mnist.py:fedprox", "--config.data_source=idx",
                       f"--config.data_dir={tmp_path / 'idx'}",
                       "--config.allow_modified_mnist=True", "--config.model=mlr",
                       "--config.num_clients=20", "--config.clients_per_round=5",
                       "--config.num_rounds=200", f"--workdir={tmp_path / 'run'}"])
  time.sleep(delay)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  last = err.strip().splitlines()[-1]
  assert proc.returncode == 130, err[-3000:]
  assert last.startswith("stopped by SIGINT"), err[-3000:]
  assert "Traceback" not in err and "Exception ignored" not in err
