"""What a hostile (or unlucky) user does to a run, and what the run must do about it: data that
is not genuine MNIST, non-finite numbers, damaged checkpoints and rows, files deleted or
symlinked under a running run, paths and values that used to end in tracebacks or hangs.

Each case is compared with what an uninterrupted run writes, or expects one clear line."""

import glob
import gzip
import json
import os
import shutil
import signal
import subprocess
import threading
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from fedprox_jax.report import bands, plots
from fedprox_jax.report import results as results_lib
from fedprox_jax.data import mnist as data
from fedprox_jax import errors, files, outputs
from fedprox_jax.run import experiment
from fedprox_jax.run import grid as grid_lib, single
from fedprox_jax.run import workdir as workdir_lib
from helpers import (SHARED_DATA, read_rows, start_launch, tiny_mnist, tiny_run_config,
                     wait_for_lines, write_idx_dir)
from test_resume import Killed, _kill_at, _read_scalars

MNIST = tiny_mnist()
IDX_DIR = os.path.join(SHARED_DATA, "mnist")
TFDS_DIR = os.path.join(SHARED_DATA, "tensorflow_datasets")
needs_mnist = pytest.mark.skipif(not os.path.isdir(IDX_DIR),
                                 reason=f"genuine MNIST not found at {IDX_DIR}")


def _rows(workdir):
  return read_rows(os.path.join(workdir, "metrics.jsonl"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  single.run(tiny_run_config(), workdir, source=MNIST)
  return _rows(workdir)


# --- data that is not genuine MNIST ---------------------------------------------------------

@pytest.fixture(scope="module")
def genuine():
  if not os.path.isdir(IDX_DIR):
    pytest.skip(f"genuine MNIST not found at {IDX_DIR}")
  return data.load_idx_dir(IDX_DIR)


def _tampered(m: data.Mnist):
  rng = np.random.default_rng(0)
  flipped = m.train_images.copy().reshape(-1)
  flipped[rng.choice(flipped.size, 2000, replace=False)] ^= 0xFF
  return {
      "training labels permuted": m._replace(train_labels=rng.permutation(m.train_labels)),
      "images mirrored": m._replace(train_images=m.train_images[:, :, ::-1]),
      "1000 examples dropped": m._replace(train_images=m.train_images[1000:],
                                          train_labels=m.train_labels[1000:]),
      "test split from training examples": m._replace(test_images=m.train_images[:10000],
                                                      test_labels=m.train_labels[:10000]),
      "2000 pixel bytes flipped": m._replace(train_images=flipped.reshape(m.train_images.shape)),
  }


def test_every_tampering_is_refused_and_accepted_only_when_asked(genuine, caplog):
  assert data.check_genuine(genuine, "the IDX files", allow_modified=False)
  shuffled = np.random.default_rng(1).permutation(len(genuine.train_labels))
  assert data.check_genuine(genuine._replace(train_images=genuine.train_images[shuffled],
                                             train_labels=genuine.train_labels[shuffled]),
                            "another order", allow_modified=False)  # same examples
  for what, m in _tampered(genuine).items():
    with pytest.raises(data.DataError, match="is not genuine MNIST.*allow_modified_mnist=True"):
      data.check_genuine(m, what, allow_modified=False)
    assert data.check_genuine(m, what, allow_modified=True) is False, what
  assert "training on it, as allow_modified_mnist=True asks" in caplog.text


def _write_idx(directory, m: data.Mnist, gz: bool):
  os.makedirs(directory, exist_ok=True)
  for key, stem in data.IDX_FILES.items():
    a = np.asarray(getattr(m, key), np.uint8)
    a = a[..., 0] if a.ndim == 4 else a
    raw = bytes([0, 0, 8, a.ndim]) + b"".join(d.to_bytes(4, "big") for d in a.shape) + a.tobytes()
    with (gzip.open if gz else open)(os.path.join(directory, stem + (".gz" if gz else "")),
                                     "wb") as f:
      f.write(raw)


def test_modified_idx_files_are_refused_then_recorded_when_allowed(genuine, tmp_path):
  m = _tampered(genuine)["training labels permuted"]
  _write_idx(tmp_path / "idx", m, gz=False)
  c = tiny_run_config(data_source="idx", data_dir=str(tmp_path / "idx"), train_subset=2000)
  with pytest.raises(data.DataError, match="is not genuine MNIST"):
    single.run(c, str(tmp_path / "refused"), source=None)
  assert not os.path.exists(tmp_path / "refused")  # a failed start leaves nothing
  c.allow_modified_mnist = True
  single.run(c, str(tmp_path / "allowed"), source=None)
  assert outputs.read_json(str(tmp_path / "allowed" / "config.json"))["genuine_mnist"] is False
  single.run(tiny_run_config(data_source="idx", data_dir=IDX_DIR, train_subset=2000),
               str(tmp_path / "genuine"), source=None)
  assert outputs.read_json(str(tmp_path / "genuine" / "config.json"))["genuine_mnist"] is True


def test_an_uncompressed_idx_file_that_disagrees_with_its_gz_is_refused(genuine, tmp_path):
  idx = tmp_path / "idx"
  shutil.copytree(IDX_DIR, idx)
  _write_idx(idx, _tampered(genuine)["images mirrored"], gz=False)  # beside the genuine .gz
  with pytest.raises(data.DataError, match="both exist and hold different data"):
    data.load_idx_dir(str(idx))


@needs_mnist
def test_a_tampered_array_cache_is_rebuilt_from_tfds(tmp_path, monkeypatch, genuine):
  monkeypatch.setenv("FEDPROX_JAX_CACHE", str(tmp_path))
  path = data.tfds_cache_path(data.tfds_data_dir(TFDS_DIR))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  for what, m in _tampered(genuine).items():  # each a valid array file, not genuine MNIST
    np.savez(path, **m._asdict())
    assert data._read_cache(path) is None, what
  np.savez(path, **_tampered(genuine)["test split from training examples"]._asdict())
  mnist = data.load_mnist("tfds", TFDS_DIR, download=False)  # rebuilt through the worker
  assert data.fingerprint(mnist) == data.MNIST_FINGERPRINT
  assert data._read_cache(path) is not None


def _finishes(fn, seconds=30):
  """Runs fn in a thread; its result or exception, or a failure when it has not returned."""
  out = {}

  def target():
    try:
      out["value"] = fn()
    except BaseException as e:  # noqa: BLE001
      out["error"] = e
  thread = threading.Thread(target=target, daemon=True)
  thread.start()
  thread.join(seconds)
  assert not thread.is_alive(), f"still blocked after {seconds} s"
  return out


def test_a_fifo_in_place_of_a_data_file_is_refused_not_waited_on(tmp_path):
  write_idx_dir(tmp_path / "idx", num_train=20, num_test=10, gz=False)
  fifo = tmp_path / "idx" / "train-images-idx3-ubyte"
  os.remove(fifo)
  os.mkfifo(fifo)
  out = _finishes(lambda: data.load_idx_dir(str(tmp_path / "idx")))
  assert isinstance(out.get("error"), data.DataError) and "not a regular file" in str(out["error"])
  os.mkfifo(tmp_path / "cache.npz")
  assert _finishes(lambda: data._read_cache(str(tmp_path / "cache.npz"))) == {"value": None}


@pytest.mark.parametrize("limit,match", [
    ({"FEDPROX_JAX_DATA_TIMEOUT": "15"}, "took more than 15 s"),
    # TFDS reads 8 kB blocks: a trickle shows no bytes at all, and is stopped as stalled.
    ({"FEDPROX_JAX_DATA_STALL": "3", "FEDPROX_JAX_DATA_TIMEOUT": "120"},
     r"downloading MNIST stalled: no data arrived for 3 s \(0 bytes so far, 0.0 bytes/s\)"),
])
def test_a_stalled_download_ends_with_one_line(tmp_path, monkeypatch, limit, match):
  """A mirror that sends one byte every 0.5 s: TFDS never times out by itself."""
  import http.server

  class Trickle(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
      pass

    def do_GET(self):
      self.send_response(200)
      self.send_header("Content-Length", "10000000")
      self.end_headers()
      try:
        for _ in range(400):
          self.wfile.write(b"\x1f")
          self.wfile.flush()
          time.sleep(0.5)
      except OSError:
        pass
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  monkeypatch.setenv("FEDPROX_JAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("FEDPROX_JAX_MNIST_URL", f"http://127.0.0.1:{server.server_address[1]}/")
  for name, value in limit.items():
    monkeypatch.setenv(name, value)
  start = time.time()
  try:
    with pytest.raises(data.DataError, match=match):
      data.load_mnist("tfds", str(tmp_path / "tfds"), download=True)
  finally:
    server.shutdown()
    server.server_close()
  assert time.time() - start < 60


# --- numbers that are not numbers ------------------------------------------------------------

def test_a_non_finite_test_loss_stops_the_run_and_every_row_is_valid_json(tmp_path, monkeypatch):
  real = experiment.make_evaluate_fn
  calls = []

  def make_evaluate_fn(apply_fn, batch_size):
    evaluate = real(apply_fn, batch_size)

    def overflowing(params, x, y):
      calls.append(1)
      accuracy, loss = evaluate(params, x, y)
      return accuracy, loss * (np.inf if len(calls) >= 3 else 1.0)
    return overflowing
  monkeypatch.setattr(experiment, "make_evaluate_fn", make_evaluate_fn)
  with pytest.raises(errors.DivergenceError, match="diverged at round 3: the test loss is inf"):
    single.run(tiny_run_config(), str(tmp_path), source=MNIST)
  with open(tmp_path / "metrics.jsonl") as f:
    rows = [json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl"))
            for line in f]
  assert [r["round"] for r in rows] == [1, 2]
  with pytest.raises(ValueError):
    outputs.append_jsonl(str(tmp_path), "metrics.jsonl", [{"round": 9, "test_loss": np.inf}])
  assert len(open(tmp_path / "metrics.jsonl").read().splitlines()) == 2  # nothing half-written


# --- damaged checkpoints and rows ------------------------------------------------------------

def test_a_checkpoint_whose_arrays_changed_falls_back_to_the_previous(tmp_path, uninterrupted,
                                                                     caplog):
  """orbax does not checksum arrays: a changed value in a file that still loads (here
  rewritten through orbax itself, with the digest of the original) must not be resumed."""
  workdir = str(tmp_path)
  with pytest.raises(Killed):
    single.run(tiny_run_config(), workdir, source=MNIST, on_round=_kill_at(5))
  directory = os.path.join(workdir, "checkpoints")
  manager = ocp.CheckpointManager(directory)
  state = manager.restore(4, args=ocp.args.StandardRestore())
  shutil.rmtree(os.path.join(directory, "4"))
  manager.reload()
  leaf = state["params"]["params"]["Dense_0"]["kernel"]
  leaf = np.array(leaf)
  leaf.flat[0] = np.nextafter(leaf.flat[0], np.inf)  # one bit of one weight
  state["params"]["params"]["Dense_0"]["kernel"] = leaf
  manager.save(4, args=ocp.args.StandardSave(state), force=True)
  manager.wait_until_finished()
  manager.close()
  summary = single.run(tiny_run_config(), workdir, source=MNIST)
  assert "do not match the digest saved with them" in caplog.text
  assert summary["resumed_after_round"] == 2
  assert _rows(workdir) == uninterrupted


def test_a_checkpointed_rounds_damaged_row_is_computed_again(tmp_path, uninterrupted):
  workdir = str(tmp_path)
  with pytest.raises(Killed):
    single.run(tiny_run_config(), workdir, source=MNIST, on_round=_kill_at(4))
  metrics = tmp_path / "metrics.jsonl"
  text = metrics.read_text()
  metrics.write_text(text[:len(text) - len(text.splitlines()[-1]) // 2 - 1])  # row 4 cut in half
  single.run(tiny_run_config(), workdir, source=MNIST)
  assert _rows(workdir) == uninterrupted  # round 4 is there again


def test_rows_deleted_while_the_run_goes_on_are_written_again(tmp_path, uninterrupted, caplog):
  def on_round(t, row):
    if t == 3:
      os.remove(tmp_path / "metrics.jsonl")
  single.run(tiny_run_config(), str(tmp_path), source=MNIST, on_round=on_round)
  assert "was changed or deleted while the run went on (3 of its 6 rows as computed)" in \
      caplog.text
  assert _rows(str(tmp_path)) == uninterrupted


def test_tensorboard_after_a_resume_holds_every_round(tmp_path):
  c = tiny_run_config(tensorboard=True)
  with pytest.raises(Killed):
    single.run(c, str(tmp_path), source=MNIST, on_round=_kill_at(5))
  for path in glob.glob(str(tmp_path / "tensorboard" / "*")):
    os.remove(path)  # as a kill before the writer's flush loses them
  single.run(c, str(tmp_path), source=MNIST)
  scalars = _read_scalars(str(tmp_path / "tensorboard"))
  assert [step for step, _ in scalars["test_accuracy"]] == [1, 2, 3, 4, 5, 6]
  assert [v for _, v in scalars["test_accuracy"]] == pytest.approx(
      [r["test_accuracy"] for r in _rows(str(tmp_path))], rel=1e-6)


def test_a_garbled_partition_stats_on_resume_is_one_line(tmp_path):
  with pytest.raises(Killed):
    single.run(tiny_run_config(), str(tmp_path), source=MNIST, on_round=_kill_at(3))
  (tmp_path / "partition_stats.json").write_text("{garbled")
  with pytest.raises(errors.WorkdirError, match="partition_stats.json is missing or damaged"):
    single.run(tiny_run_config(), str(tmp_path), source=MNIST)


# --- the workdir: symlinks, locks, paths -----------------------------------------------------

@pytest.mark.parametrize("name", [".lock", "config.json.tmp", "checkpoints", "tensorboard",
                                  "metrics.jsonl"])
def test_a_symlink_inside_the_workdir_is_refused_and_its_target_untouched(tmp_path, name):
  victim = tmp_path / "victim"
  victim.mkdir()
  (victim / "precious").write_text("keep me")
  target = victim if name in ("checkpoints", "tensorboard") else victim / "precious"
  workdir = tmp_path / "run"
  workdir.mkdir()
  os.symlink(target, workdir / name)
  with pytest.raises(errors.WorkdirError, match="holds a symbolic link"):
    single.run(tiny_run_config(tensorboard=True), str(workdir), source=MNIST)
  assert os.listdir(victim) == ["precious"] and (victim / "precious").read_text() == "keep me"


def test_files_are_never_written_through_a_planted_symlink(tmp_path):
  victim = tmp_path / "victim"
  victim.write_text("keep me")
  os.symlink(victim, tmp_path / "summary.json")
  outputs.write_json(str(tmp_path), "summary.json", {"a": 1})
  assert victim.read_text() == "keep me" and not os.path.islink(tmp_path / "summary.json")
  os.symlink(victim, tmp_path / "rows.jsonl")
  with pytest.raises(OSError):
    outputs.append_jsonl(str(tmp_path), "rows.jsonl", [{"a": 1}])
  assert victim.read_text() == "keep me"
  with files.atomic_write(str(tmp_path / "x")) as f:
    f.write("new")
  assert (tmp_path / "x").read_text() == "new"
  assert sorted(os.listdir(tmp_path)) == ["rows.jsonl", "summary.json", "victim", "x"]


def test_deleting_the_lock_file_does_not_let_a_second_run_in(tmp_path):
  with workdir_lib.Workdir(str(tmp_path), "run"):
    os.remove(tmp_path / ".lock")
    with pytest.raises(errors.WorkdirError, match="is in use by"):
      workdir_lib.Workdir(str(tmp_path), "run")


@pytest.mark.parametrize("name", ["a[1]", "runs**", "what?"])
def test_glob_characters_in_the_workdir_path_are_one_line(tmp_path, name):
  with pytest.raises(errors.WorkdirError, match=r"pass a --workdir without \*, \?, \[ or \]"):
    single.run(tiny_run_config(), str(tmp_path / name), source=MNIST)


def test_a_plan_too_large_for_memory_is_refused_before_compiling(tmp_path):
  start = time.time()
  with pytest.raises(errors.ConfigError, match=r"config.local_epochs=10000000000: .* GiB"):
    single.run(tiny_run_config(local_epochs=10**10), str(tmp_path / "run"), source=MNIST)
  assert time.time() - start < 60


# --- the report commands on damaged workdirs -------------------------------------------------

def _sweep_workdir(tmp_path):
  specs = [grid_lib.GridPoint("fedavg", 0.0, True, 0.5, 0)]  # named fedavg_s0.5_seed0
  rows = {"fedavg_s0.5_seed0": [{"round": t, "test_accuracy": 0.1 * t, "test_loss": 1.0,
                                 "global_train_loss": 1.0, "local_train_loss": 1.0,
                                 "num_stragglers": 1, "wall_time": 1.0} for t in (1, 2)]}
  results_lib.write_results_csv(str(tmp_path / "results.csv"), specs, rows, {})


@pytest.mark.parametrize("damage, expected", [
    ("config_garbled", 0), ("config_list", 0), ("no_round", 2), ("no_experiment", 2),
    ("metrics_line", 2), ("missing", 2), ("killed_sweep", 2), ("option", 2)])
def test_plots_on_damaged_workdirs_is_one_line(tmp_path, capsys, damage, expected):
  workdir = tmp_path / "w"
  workdir.mkdir()
  _sweep_workdir(workdir)
  argv = ["plots", str(workdir)]
  if damage == "config_garbled":
    (workdir / "config.json").write_text("{not json")
  elif damage == "config_list":
    (workdir / "config.json").write_text("[1, 2]")
  elif damage in ("no_round", "no_experiment"):
    column = "round" if damage == "no_round" else "experiment"
    lines = (workdir / "results.csv").read_text().splitlines()
    header = lines[0].split(",")
    i = header.index(column)
    (workdir / "results.csv").write_text("\n".join(
        ",".join(v for j, v in enumerate(line.split(",")) if j != i) for line in lines) + "\n")
  elif damage == "metrics_line":
    os.remove(workdir / "results.csv")
    (workdir / "metrics.jsonl").write_text('{"round": 1, "test_accuracy": 0.5}\n{"rou\n'
                                           '{"round": 3, "test_accuracy": 0.5}\n')
  elif damage == "missing":
    argv = ["plots", str(tmp_path / "nowhere")]
  elif damage == "killed_sweep":
    os.remove(workdir / "results.csv")
    (workdir / "config.json").write_text('{"mode": "sweep"}')
    (workdir / "rows.jsonl").write_text('{"experiment": "x", "round": 1}\n')
  elif damage == "option":
    argv = ["plots", "--bogus"]
  assert plots.main(argv) == expected
  err = capsys.readouterr().err
  lines = [line for line in err.splitlines() if line.strip()]
  assert len(lines) <= 2 and "Traceback" not in err, err
  if expected:
    assert lines[0].startswith(("error:", "usage:")), err
  if damage == "killed_sweep":
    assert "unfinished sweep: resume it" in err
  if damage.startswith("config"):
    assert "figures drawn without its title" in err


def test_plots_and_bands_help(capsys):
  assert plots.main(["plots", "--help"]) == 0 and "python -m fedprox_jax.report.plots" in \
      capsys.readouterr().out
  assert bands.main(["bands", "--help"]) == 0 and "python -m fedprox_jax.report.bands" in \
      capsys.readouterr().out


@pytest.mark.parametrize("damage", ["config_garbled", "config_list", "no_round"])
def test_bands_on_damaged_runs_is_one_line(tmp_path, capsys, damage):
  workdirs = []
  for seed in (0, 1):
    w = tmp_path / f"run{seed}"
    w.mkdir()
    (w / "summary.json").write_text("{}")
    (w / "config.json").write_text(json.dumps({"seed": seed, "lr": 0.1}))
    (w / "metrics.jsonl").write_text('{"round": 1, "test_accuracy": 0.5}\n')
    workdirs.append(str(w))
  w = tmp_path / "run1"
  if damage == "config_garbled":
    (w / "config.json").write_text("{")
  elif damage == "config_list":
    (w / "config.json").write_text("[]")
  else:
    (w / "metrics.jsonl").write_text('{"test_accuracy": 0.5}\n')
  assert bands.main(["bands", str(tmp_path / "out"), "band", *workdirs]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "is damaged" in err and len(err.splitlines()) == 1


def test_a_sweep_of_10_to_the_10_rounds_starts_at_once(tmp_path):
  """The evaluated rounds used to be built as a set first (past 6 GB, no round, no message)."""
  write_idx_dir(tmp_path / "idx", num_train=400, num_test=50)
  args = ["--config=configs/mnist.py:figure1_paper", "--config.data_source=idx",
          f"--config.data_dir={tmp_path / 'idx'}", "--config.allow_modified_mnist=True",
          "--config.model=mlr", "--config.num_clients=10", "--config.clients_per_round=2",
          "--config.local_epochs=1", "--config.min_per_client=5", "--config.num_rounds=10000000000",
          "--config.eval_every=1", "--config.sweep.algorithms=fedavg",
          "--config.sweep.stragglers=0.5", "--config.sweep.seeds=1",
          "--config.sweep.dissimilarity=False", f"--workdir={tmp_path / 'sweep'}"]
  proc = start_launch(args)
  try:
    wait_for_lines(proc, tmp_path / "sweep" / "rows.jsonl", 2, timeout=120)
  finally:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err[-3000:]
  assert "stopped by SIGTERM after round" in err


def test_a_sweep_experiment_whose_evaluation_overflows_is_a_divergence(tmp_path, monkeypatch):
  from fedprox_jax.run import sweep
  from fedprox_jax.run import program as program_lib
  from helpers import tiny_sweep_config
  real = program_lib.make_sweep_fns

  def make_sweep_fns(*args):
    round_fn, evaluate_fn = real(*args)

    def overflowing(params, train, test_x, test_y):
      out = dict(evaluate_fn(params, train, test_x, test_y))
      out["test_loss"] = out["test_loss"].at[0].set(np.inf)  # experiment 0 of each program
      return out
    return round_fn, overflowing
  monkeypatch.setattr(program_lib, "make_sweep_fns", make_sweep_fns)
  c = tiny_sweep_config()
  c.sweep.update(dict(algorithms="fedavg", stragglers="0.5", seeds=2, experiments_per_program=2))
  with pytest.raises(errors.DivergenceError, match=r"1 of 2 experiments diverged \(fedavg.* at "
                     r"round 1\)"):
    sweep.run(c, str(tmp_path), source=MNIST)
  for name in ("results.csv", "summary.md", "rows.jsonl"):
    text = (tmp_path / name).read_text().lower()
    assert "inf" not in text and "nan" not in text, name


@pytest.mark.parametrize("replaced", [False, True])
def test_a_workdir_deleted_under_a_running_run_is_an_error_not_a_success(tmp_path, replaced):
  # The checkpointer recreates missing parent directories: without the check, the rest of the
  # run went into a new directory at the same path and the run ended as a success.
  def on_round(t, row):
    if t == 3:
      while (tmp_path / "run").exists():  # the checkpointer may still be writing into it
        shutil.rmtree(tmp_path / "run", ignore_errors=True)
      if replaced:
        (tmp_path / "run").mkdir()
  with pytest.raises(errors.WorkdirError, match="was deleted or replaced while the run went on"):
    single.run(tiny_run_config(), str(tmp_path / "run"), source=MNIST, on_round=on_round)
  assert not (tmp_path / "run" / "summary.json").exists()


@pytest.fixture
def tiny_filesystem(tmp_path):
  """A 160 KiB tmpfs (as root); skipped with its reason where it cannot be mounted."""
  mount = tmp_path / "small"
  mount.mkdir()
  made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount)],
                        capture_output=True, text=True)
  if made.returncode != 0:
    pytest.skip(f"cannot mount a small tmpfs here ({made.stderr.strip()}): needs root")
  try:
    yield mount
  finally:
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_with_one_line_and_the_run_resumes_exactly(tmp_path, tiny_filesystem,
                                                                     uninterrupted):
  c = tiny_run_config(checkpoint_every=1, num_rounds=6)
  workdir = tiny_filesystem / "run"
  filler = tiny_filesystem / "filler"
  filler.write_bytes(b"x" * 60_000)  # so that the disk fills within the six rounds
  with pytest.raises((OSError, errors.UserError)) as e:
    single.run(c, str(workdir), source=MNIST)
  assert "No space left" in str(e.value) or "free disk space" in str(e.value), e.value
  moved = tmp_path / "moved"
  shutil.copytree(workdir, moved)  # the user frees space (here: moves the workdir)
  single.run(c, str(moved), source=MNIST)
  assert _rows(str(moved)) == uninterrupted
