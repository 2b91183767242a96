"""Files a hostile user (or a crash) leaves where a run reads them back, and what a run writes:
the probe of 2026-12-03 (issue 31). Deep JSON, rows without their keys, a row written twice,
a config.json edited under checkpoints, a FIFO or a link to /dev/zero as the autotuner's cache,
TensorBoard on a full disk, output files' permissions, a sweep stopped between programs."""

import json
import re
import os
import stat
import threading
import time

import pytest

from fedprox_jax import cache, errors, files, outputs
from fedprox_jax.run import autotune, single, sweep
from helpers import (read_rows, start_launch, tiny_mnist, tiny_run_config, tiny_sweep_config,
                     write_idx_dir)
from test_resume import Killed, _kill_at
from test_safety import tiny_filesystem  # noqa: F401  (a fixture)

MNIST = tiny_mnist()
DEEP = "[" * 100_000 + "]" * 100_000  # deeper than Python's recursion limit


def _rows(workdir):
  return read_rows(os.path.join(workdir, "metrics.jsonl"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  single.run(tiny_run_config(), workdir, source=MNIST, progress=False)
  return _rows(workdir)


def _killed_after(tmp_path, t: int, **overrides) -> str:
  workdir = str(tmp_path / "run")
  with pytest.raises(Killed):
    single.run(tiny_run_config(**overrides), workdir, source=MNIST, on_round=_kill_at(t),
               progress=False)
  return workdir


# --- JSON nested past the recursion limit ----------------------------------------------------

def test_deep_json_is_a_value_error_not_a_recursion_error(tmp_path):
  path = tmp_path / "deep.json"
  path.write_text(DEEP)
  with pytest.raises(ValueError, match="nested too deeply"):
    outputs.read_json(str(path))
  with pytest.raises(ValueError, match="nested too deeply"):
    outputs.loads(DEEP)


def test_a_deep_config_json_is_one_line(tmp_path):
  workdir = _killed_after(tmp_path, 4)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(DEEP)
  with pytest.raises(errors.WorkdirError, match=r"config.json is damaged \(its JSON is nested "
                                                r"too deeply to read\): pass a new --workdir"):
    single.run(tiny_run_config(), workdir, source=MNIST)


@pytest.mark.parametrize("line,match", [
    (DEEP, "line 2 is damaged"),
    ('{"test_accuracy": 0.5}', "line 2 is not a row \\(no 'round'\\)"),
    ('{"round": "2"}', "line 2 is not a row \\(round '2' is not an integer\\)"),
    ("[1, 2]", "line 2 is not a row \\(no 'round'\\)"),
], ids=["deep", "no_round", "round_a_string", "a_list"])
def test_a_damaged_row_before_the_last_is_one_line(tmp_path, line, match):
  workdir = _killed_after(tmp_path, 4)
  path = os.path.join(workdir, "metrics.jsonl")
  rows = open(path).read().splitlines()
  with open(path, "w") as f:
    f.write("\n".join([rows[0], line] + rows[1:]) + "\n")
  with pytest.raises(errors.WorkdirError, match=match):
    single.run(tiny_run_config(), workdir, source=MNIST)


def test_a_sweep_row_without_its_experiment_is_one_line(tmp_path):
  c = tiny_sweep_config(num_rounds=2)
  c.sweep.update(dict(algorithms="fedavg", stragglers="0.5", seeds=1))
  workdir = tmp_path / "sweep"
  sweep.run(c, str(workdir), source=MNIST, progress=False)
  (workdir / "summary.json").unlink()  # as if it had been stopped before its end
  rows = (workdir / "rows.jsonl").read_text().splitlines()
  (workdir / "rows.jsonl").write_text("\n".join(
      [json.dumps({k: v for k, v in json.loads(rows[0]).items() if k != "experiment"})]
      + rows[1:]) + "\n")
  with pytest.raises(errors.WorkdirError, match="rows.jsonl line 1 is not a row \\(no "
                                                "'experiment'\\)"):
    sweep.run(c, str(workdir), source=MNIST, progress=False)


# --- rows written twice ------------------------------------------------------------------------

def test_a_row_written_twice_is_kept_once(tmp_path, uninterrupted):
  workdir = _killed_after(tmp_path, 4)
  path = os.path.join(workdir, "metrics.jsonl")
  lines = open(path).read().splitlines()
  with open(path, "a") as f:
    f.write(lines[2] + "\n")  # round 3 again, after round 4
  single.run(tiny_run_config(), workdir, source=MNIST, progress=False)
  assert _rows(workdir) == uninterrupted
  assert [r["round"] for r in _rows(workdir)] == list(range(1, 7))


def test_two_different_rows_of_one_round_are_computed_again(tmp_path, uninterrupted):
  workdir = _killed_after(tmp_path, 4)
  path = os.path.join(workdir, "metrics.jsonl")
  lines = open(path).read().splitlines()
  other = {**json.loads(lines[2]), "test_accuracy": 0.123}
  with open(path, "a") as f:
    f.write(json.dumps(other) + "\n")  # which round 3 is right is unknown: it is recomputed
  single.run(tiny_run_config(), workdir, source=MNIST, progress=False)
  assert _rows(workdir) == uninterrupted


# --- config.json edited under the checkpoints --------------------------------------------------

def test_an_edited_config_json_cannot_resume_under_another_config(tmp_path):
  workdir = _killed_after(tmp_path, 4)
  path = os.path.join(workdir, "config.json")
  saved = json.load(open(path))
  json.dump({**saved, "lr": 0.3}, open(path, "w"))
  # The command agrees with the edited file, so config.json alone cannot see the change.
  with pytest.raises(errors.ConfigError, match="the checkpoint of round 4 in .* was computed "
                                               "with another config .*config.json edited"):
    single.run(tiny_run_config(lr=0.3), workdir, source=MNIST)
  assert [r["round"] for r in _rows(workdir)] == [1, 2, 3, 4]  # nothing was redone or lost
  json.dump(saved, open(path, "w"))  # the original config resumes
  single.run(tiny_run_config(), workdir, source=MNIST, progress=False)
  assert [r["round"] for r in _rows(workdir)] == list(range(1, 7))


# --- the autotuner's cache: a FIFO, a link to /dev/zero, deep JSON ---------------------------

@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "deep", "huge"])
def test_a_hostile_autotune_cache_is_measured_again_at_once(tmp_path, monkeypatch, kind):
  monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
  monkeypatch.setattr(autotune, "_load_per_core", lambda: 0.0)
  autotune.choose.cache_clear()
  measured = []
  monkeypatch.setattr(autotune, "measure", lambda *a: measured.append(a) or autotune.Choice(
      "im2col", 1, "xla", 0.5, {"im2col/1": 1.0}, {"xla": 1.0}))
  path = tmp_path / autotune.CACHE_FILE
  if kind == "fifo":
    os.mkfifo(path)
  elif kind == "dev_zero":
    os.symlink("/dev/zero", path)
  elif kind == "deep":
    path.write_text(DEEP)
  else:
    with open(path, "wb") as f:
      f.truncate(outputs.MAX_JSON_BYTES + 1)  # sparse: no disk used
  done = []
  worker = threading.Thread(target=lambda: done.append(autotune.choose("cnn", 10, 1, 50)),
                            daemon=True)
  worker.start()
  worker.join(30)
  assert done and done[0].conv_impl == "im2col" and len(measured) == 1, "read hung or failed"
  autotune.choose.cache_clear()


# --- TensorBoard on a full disk ----------------------------------------------------------------

def test_tensorboard_on_a_full_disk_warns_once_and_never_blocks(tmp_path, monkeypatch, caplog):
  from tensorboardX import event_file_writer
  board = outputs.TensorBoard(str(tmp_path / "tb"))
  board.write(1, {"round": 1, "test_accuracy": 0.5})

  def full(self, event_str):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(event_file_writer.EventsWriter, "_write_serialized_event", full)
  done = threading.Event()

  def write_many():
    for t in range(2, 200):  # tensorboardX's own writer blocked at its 11th queued event
      board.write(t, {"round": t, "test_accuracy": 0.5, "test_loss": 1.0})
    board.close()
    done.set()
  threading.Thread(target=write_many, daemon=True).start()
  assert done.wait(30), "a TensorBoard write blocked"
  warnings = [r for r in caplog.records if "TensorBoard events can no longer" in r.getMessage()]
  assert len(warnings) == 1 and "No space left on device" in warnings[0].getMessage()


# --- permissions -------------------------------------------------------------------------------

def test_output_files_follow_the_umask(tmp_path):
  old = os.umask(0o022)
  try:
    mode = 0o666 & ~files._umask()
    assert mode == 0o644
    workdir = tmp_path / "run"
    single.run(tiny_run_config(num_rounds=2, tensorboard=False), str(workdir), source=MNIST,
               progress=False)
  finally:
    os.umask(old)
  for name in ("config.json", "environment.json", "partition_stats.json", "metrics.jsonl",
               "summary.json", "metrics.png"):
    assert stat.S_IMODE(os.stat(workdir / name).st_mode) == files.FILE_MODE == 0o644, name


# --- a stop between programs -------------------------------------------------------------------

def test_a_stop_as_side_by_side_programs_finish_is_a_stop_not_a_type_error(monkeypatch):
  """Program 0 finishes its last round as the stop comes; program 1, queued behind it in a pool
  of 2 with program 2 still running, never starts: was a TypeError unpacking its None."""
  from fedprox_jax.run import signals
  monkeypatch.setitem(signals._state, "received", None)
  both_running = threading.Barrier(2, timeout=30)

  def run_program(i, sweep_stopping):
    both_running.wait()
    if i == 0:
      signals._state["received"] = "SIGINT"  # the stop lands as program 0 ends
      return ({"a": []}, {})
    time.sleep(0.3)  # program 2 ends after the pool offered program 1 a thread
    return ({"c": []}, {})

  with pytest.raises(errors.Interrupted, match=r"stopped by SIGINT before 1 of 3 programs "
                                               r"started"):
    sweep._run_side_by_side(lambda i, s: run_program([0, 2, 1][i], s), 3, 2)
  signals._state["received"] = None


# --- progress from Python ----------------------------------------------------------------------

def test_python_runs_and_sweeps_report_progress_with_an_eta(tmp_path, capsys):
  """From Python (absl shows no INFO lines) a run printed nothing unless given on_round, and a
  sweep printed no ETA."""
  single.run(tiny_run_config(num_rounds=3), str(tmp_path / "run"), source=MNIST)
  err = capsys.readouterr().err.splitlines()
  rounds = [l for l in err if l.startswith("round ")]
  assert [l.split()[1] for l in rounds] == ["1/3", "2/3", "3/3"], err
  assert "ETA estimating" in rounds[0] and "ETA 0m0" in rounds[-1]
  assert err[-1].startswith("done: final accuracy")
  c = tiny_sweep_config(num_rounds=3)
  c.sweep.update(dict(algorithms="fedavg,fedprox", stragglers="0.5", seeds=1,
                      experiments_per_program=1))
  sweep.run(c, str(tmp_path / "sweep"), source=MNIST)
  err = capsys.readouterr().err.splitlines()
  rounds = [l for l in err if l.startswith("round ")]
  # The two programs run side by side: their lines interleave, the count is the sweep's.
  counts = sorted(int(re.search(r"\(sweep (\d)/6 program rounds, ETA", l).group(1))
                  for l in rounds)
  assert counts == [1, 2, 3, 4, 5, 6], err
  assert sum("ETA estimating" in l for l in rounds) == 1
  assert sum(bool(re.search(r"ETA \dm\d\ds\)$", l)) for l in rounds) == 5
  assert err[-1].startswith("sweep of 2 experiments done in")
  single.run(tiny_run_config(num_rounds=2), str(tmp_path / "quiet"), source=MNIST, progress=False)
  assert capsys.readouterr().err == ""


# --- a full disk: one line, no library tracebacks ---------------------------------------------

@pytest.mark.parametrize("extra", [["--config.checkpoint_every=10"],
                                   ["--config.checkpoint_every=1", "--config.adaptive_mu=True"]],
                         ids=["tensorboard_first", "adaptive_mu"])
def test_a_full_disk_is_one_line_without_library_tracebacks(tmp_path, tiny_filesystem, extra):
  """Orbax's writer threads logged RESOURCE_EXHAUSTED tracebacks and tensorstore's callbacks
  printed "Event loop is closed" before the clean line; with checkpoints every 10 rounds the
  TensorBoard writer thread died first and the run hung on its queue."""
  write_idx_dir(tmp_path / "idx", num_train=2000, num_test=300)
  (tiny_filesystem / "filler").write_bytes(b"x" * 110_000)
  proc = start_launch(["--config=configs/mnist.py:fedprox", "--config.data_source=idx",
                       f"--config.data_dir={tmp_path / 'idx'}",
                       "--config.allow_modified_mnist=True", "--config.model=mlr",
                       "--config.num_clients=20", "--config.clients_per_round=5",
                       "--config.num_rounds=60", "--config.local_epochs=2",
                       f"--workdir={tiny_filesystem / 'run'}", *extra])
  _, err = proc.communicate(timeout=240)
  assert proc.returncode == 2, err[-3000:]
  assert err.strip().splitlines()[-1].startswith("error: "), err[-3000:]
  assert "space" in err.strip().splitlines()[-1]
  for noise in ("Traceback", "RESOURCE_EXHAUSTED", "Event loop is closed", "Exception"):
    assert noise not in err, (noise, err[-3000:])
