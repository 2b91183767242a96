"""configs/mnist.py variants and overrides, config validation, and launch.py end to end."""

import glob
import json
import os
import re
import subprocess
import sys

import pytest

from fedprox_jax import errors
from fedprox_jax.run import single
from fedprox_jax.run import config as config_lib
from helpers import start_launch, wait_for_lines, write_idx_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import mnist as mnist_config  # noqa: E402


def test_variants():
  fedprox, fedavg, mu0 = (mnist_config.get_config(v) for v in ("fedprox", "fedavg", "fedprox_mu0"))
  assert (fedprox.mu, fedprox.stragglers_fraction, fedprox.drop_stragglers) == (1.0, 0.9, False)
  assert (fedavg.mu, fedavg.stragglers_fraction, fedavg.drop_stragglers) == (0.0, 0.9, True)
  assert (mu0.mu, mu0.drop_stragglers) == (0.0, False)
  for c in (fedprox, fedavg, mu0):  # the seed's defaults
    c.autotune = False  # (timing the CNN's paths is test_autotune's)
    c = config_lib.resolve(c)
    assert (c.num_clients, c.clients_per_round, c.num_rounds, c.local_epochs, c.batch_size,
            c.lr, c.model) == (1000, 10, 100, 10, 10, 0.03, "cnn")


def test_unknown_variant_lists_valid_ones():
  with pytest.raises(ValueError, match="fedprox, fedavg, fedprox_mu0"):
    mnist_config.get_config("scaffold")


@pytest.mark.parametrize("field,value,match", [
    ("mu", -0.1, "config.mu=-0.1: must be a finite number >= 0"),
    ("lr", 0.0, "config.lr=0.0: must be a finite number > 0"),
    ("stragglers_fraction", 1.5, "config.stragglers_fraction=1.5: must be between 0 and 1"),
    ("clients_per_round", 2000, "config.clients_per_round=2000: cannot exceed num_clients=1000"),
    ("batch_size", 0, "config.batch_size=0: must be an integer >= 1"),
    ("local_epochs", 0, "config.local_epochs=0: must be an integer >= 1"),
    ("eval_every", 0, "config.eval_every=0: must be an integer >= 1"),
    ("model", "resnet", "config.model='resnet': use one of"),
    ("conv_impl", "fft", "config.conv_impl='fft': use one of"),
    ("data_source", "csv", "config.data_source='csv': use one of"),
    ("sampling", "random", "config.sampling='random': use one of"),
    ("straggler_rule", "coin", "config.straggler_rule='coin': use one of"),
    ("weighting", "equal", "config.weighting='equal': use one of"),
    ("num_lanes", -1, "config.num_lanes=-1: must be an integer >= 0"),
    ("num_rounds", 0, "config.num_rounds=0: must be an integer >= 1"),
    ("num_clients", 0, "config.num_clients=0: must be an integer >= 1"),
    ("clients_per_round", 0, "config.clients_per_round=0: must be an integer >= 1"),
    ("checkpoint_every", 0, "config.checkpoint_every=0: must be an integer >= 1"),
    ("min_per_client", 0, "config.min_per_client=0: must be an integer >= 1"),
    ("labels_per_client", 11, "config.labels_per_client=11: must be between 1 and 10"),
    ("lognormal_sigma", 0.0, "config.lognormal_sigma=0.0: must be > 0"),
    ("eval_batch_size", -1, "config.eval_batch_size=-1: must be an integer >= 0"),
    ("train_subset", -5, "config.train_subset=-5: must be an integer >= 0"),
    ("mode", "grid", "config.mode='grid': use 'single' or 'sweep'"),
    ("protocol", "flower", "config.protocol='flower': use one of"),
    ("mu", float("nan"), "config.mu=nan: must be a finite number >= 0"),
    ("lr", float("inf"), "config.lr=inf: must be a finite number > 0"),
    # 0 and inf in float32, the precision training computes in
    ("lr", 1e-46, "config.lr=1e-46: is too small in float32"),
    ("mu", 1e39, "config.mu=1e.39: overflows to inf in float32"),
    ("weight_decay", 1e-45, "config.weight_decay=1e-45: is too small in float32"),
])
def test_validate_config_names_field_value_and_fix(field, value, match):
  c = mnist_config.get_config("fedprox")
  c[field] = value
  with pytest.raises(errors.ConfigError, match=match):
    config_lib.resolve(c)


def test_a_sweep_past_the_last_seed_names_the_seed_field():
  c = mnist_config.get_config("figure1")
  c.seed = config_lib.MAX_SEED
  with pytest.raises(errors.ConfigError, match=r"config.seed=2147483647: a sweep runs seeds seed "
                     r"\.\. seed \+ sweep.seeds - 1 = 2147483651"):
    config_lib.resolve(c)


def test_unwritable_workdir_is_a_clear_error(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  with pytest.raises(errors.WorkdirError, match="cannot be written.*writable place"):
    single.run(mnist_config.get_config("fedprox"), str(blocker / "run"))


def _launch(*args, cwd=ROOT, env=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args], cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=300)


def _tiny_args(data_dir, workdir, *extra):
  return ["--config=" + os.path.join(ROOT, "configs", "mnist.py") + ":fedprox",
          "--config.data_source=idx", f"--config.data_dir={data_dir}",
          "--config.allow_modified_mnist=True", "--config.model=mlr",
          "--config.num_clients=20", "--config.clients_per_round=5", "--config.num_rounds=3",
          "--config.local_epochs=2", f"--workdir={workdir}",
          # a run's mu (a sweep refuses it: its mu is sweep.mu); before extra, which may set it
          *([] if "--config.mode=sweep" in extra else ["--config.mu=0.5"]), *extra]


def test_launch_tiny_run_writes_complete_workdir(tmp_path):
  write_idx_dir(tmp_path / "idx", num_train=2000, num_test=300)
  workdir = tmp_path / "run"
  result = _launch(*_tiny_args(tmp_path / "idx", workdir, "--config.eval_every=2"))
  assert result.returncode == 0, result.stderr[-3000:]
  for name in ("config.json", "environment.json", "partition_stats.json", "metrics.jsonl",
               "summary.json", "metrics.png"):
    assert (workdir / name).exists(), name
  config = json.loads((workdir / "config.json").read_text())
  assert config["mu"] == 0.5 and config["num_clients"] == 20 and config["model"] == "mlr"
  # The values the run used, with the seed protocol's filled in (not None).
  assert (config["weight_decay"], config["straggler_rule"], config["weighting"]) == (
      0.001, "bernoulli", "batches")
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["round"] for r in rows] == [2, 3]  # every 2nd round, and always the last
  for r in rows:
    assert 0.0 <= r["test_accuracy"] <= 1.0 and r["test_loss"] > 0 and 0 <= r["num_stragglers"] <= 5
    assert r["useful_steps"] > 0 and 0 < r["step_efficiency"] <= 1
  stats = json.loads((workdir / "partition_stats.json").read_text())
  assert stats["clients"] == 20 and stats["labels_per_client_max"] == 2
  env = json.loads((workdir / "environment.json").read_text())
  assert env["backend"] == "cpu" and "jax" in env["packages"]
  assert {"orbax-checkpoint", "tensorboardX"} <= set(env["packages"])
  assert re.fullmatch(r"[0-9a-f]{40}(\+changes)?", env["fedprox_jax"]["commit"])
  assert config["genuine_mnist"] is False  # generated digits, allowed by the flag
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["final_round"] == 3 and summary["seed"] == 0
  assert summary["round_compilations"] == 1
  assert "round 3/3" in result.stderr and "rounds/s" in result.stderr and "ETA" in result.stderr
  # Round 1's time includes the compilation: no ETA from it.
  assert "round 2/3" in result.stderr and "ETA estimating (from round 2 on)" in result.stderr
  assert "Unable to initialize backend" not in result.stderr  # reads like an error; it is not

  # Same config and seed, same metrics (the wall time aside).
  again = _launch(*_tiny_args(tmp_path / "idx", tmp_path / "run2", "--config.eval_every=2"))
  assert again.returncode == 0, again.stderr[-3000:]
  rows2 = [json.loads(line) for line in (tmp_path / "run2" / "metrics.jsonl").read_text().splitlines()]
  strip = lambda rs: [{k: v for k, v in r.items() if k != "wall_time"} for r in rs]
  assert len(rows) == 2 and strip(rows) == strip(rows2)

  # A finished workdir is not overwritten.
  third = _launch(*_tiny_args(tmp_path / "idx", workdir))
  assert third.returncode == 2 and "holds a finished run" in third.stderr


@pytest.mark.parametrize("extra,match", [
    (["--config.mu=-1"], "config.mu=-1.0: must be a finite number >= 0"),
    (["--config.num_clients=25", "--config.clients_per_round=5"],
     "must be a positive multiple of 10"),
    (["--config.data_dir=/nonexistent/mnist"], "is not a directory"),
])
def test_launch_bad_inputs_exit_with_one_clear_message(tmp_path, extra, match):
  write_idx_dir(tmp_path / "idx", num_train=200, num_test=20)
  result = _launch(*_tiny_args(tmp_path / "idx", tmp_path / "run", *extra))
  assert result.returncode == 2
  assert match in result.stderr
  assert "Traceback" not in result.stderr
  # Said once: no log line repeats the error line.
  assert [line for line in result.stderr.splitlines() if match in line] == [
      next(line for line in result.stderr.splitlines() if line.startswith("error:"))]


def test_a_failed_start_leaves_no_empty_default_workdir(tmp_path):
  args = [a for a in _tiny_args("/nonexistent/mnist", "x") if not a.startswith("--workdir")]
  for _ in range(2):
    result = _launch(*args, cwd=tmp_path)
    assert result.returncode == 2 and "is not a directory" in result.stderr
  assert not (tmp_path / "outputs").exists() or not os.listdir(tmp_path / "outputs")


@pytest.mark.parametrize("args,match", [
    (["--config=configs/mnist.py:nosuch", "--help"], "cannot load the --config file for --help"),
    (["--config=BAD", "--help"], "cannot load the --config file for --help"),
    (["--config=configs/mnist.py:fedprox", "extra"], "unexpected argument(s) 'extra'"),
    (["--config=nowhere.py:fedprox"], "(looked in "),
])
def test_more_bad_command_lines_are_one_line(tmp_path, args, match):
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config(:\n")
  args = [a.replace("BAD", str(bad)) for a in args]
  result = _launch(*args)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), lines
  assert match in lines[0] and not result.stdout
  if "looked in" in match:
    assert lines[0].count(ROOT) == 1  # launched from the project: its folder is named once

@pytest.mark.parametrize("args,match", [
    (["--config.not_a_field=1"], "the config has no field 'not_a_field'"),
    (["--config.mu=abc"], "could not convert string to float: 'abc'"),
])
def test_launch_rejects_bad_flags_in_one_line(tmp_path, args, match):
  result = _launch("--config=" + os.path.join(ROOT, "configs", "mnist.py") + ":fedprox", *args,
                   f"--workdir={tmp_path}")
  assert result.returncode == 2 and match in result.stderr
  assert "Traceback" not in result.stderr


@pytest.mark.parametrize("config,match", [
    ("mnist.py:scaffold", "unknown variant 'scaffold'"),
    ("missing.py:fedprox", "missing.py' not found"),
])
def test_launch_rejects_unknown_variant_and_config_file(tmp_path, config, match):
  result = _launch("--config=" + os.path.join(ROOT, "configs", config), f"--workdir={tmp_path}")
  assert result.returncode == 2 and match in result.stderr
  assert "fedprox, fedavg, fedprox_mu0" in result.stderr or "missing.py" in result.stderr
  assert "Traceback" not in result.stderr


def _corrupt_gz(directory):
  path = os.path.join(directory, "train-images-idx3-ubyte.gz")
  raw = bytearray(open(path, "rb").read())
  raw[40:60] = bytes(20)  # inside the deflate stream: a zlib error, not a short read
  open(path, "wb").write(bytes(raw))


@pytest.mark.parametrize("extra,match", [
    (["--config.num_devices=64"], "num_devices=64: this process sees 1 device"),
    (["--config.seed=99999999999999"], "config.seed=99999999999999: must be an integer from 0"),
    (["--config.mode=sweep", "--config.sweep.experiments_per_program=-1"],
     "experiments_per_program=-1: must be an integer >= 0"),
    (["--config.mode=sweep", "--config.sweep.mu=-1"], "sweep.mu=-1.0: must be a finite number > 0"),
    ("corrupt_gz", "could not be read"),
    ("partial_multihost", "JAX_COORDINATOR_ADDRESS is set but JAX_NUM_PROCESSES and JAX_PROCESS_ID"),
])
def test_launch_more_bad_inputs_exit_with_one_line(tmp_path, extra, match):
  write_idx_dir(tmp_path / "idx", num_train=200, num_test=20)
  env = {}
  if extra == "corrupt_gz":
    _corrupt_gz(tmp_path / "idx")
  if extra == "partial_multihost":
    env = {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234"}
  args = _tiny_args(tmp_path / "idx", tmp_path / "run", *(extra if isinstance(extra, list) else []))
  result = _launch(*args, env=env)
  assert result.returncode == 2, result.stderr[-2000:]
  assert match in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
  # A failed start leaves nothing that blocks the corrected command.
  assert not (tmp_path / "run" / "config.json").exists()
  assert not (tmp_path / "run" / "results.csv").exists()


def test_launch_finds_the_projects_config_from_another_directory(tmp_path):
  # A relative config path that only exists under the project: found there (the run then
  # stops at the device check, before any data is read).
  result = _launch("--config=configs/mnist.py:fedprox", "--config.num_devices=64",
                   f"--workdir={tmp_path}/run", cwd=str(tmp_path))
  assert result.returncode == 2 and "num_devices=64" in result.stderr, result.stderr[-2000:]
  missing = _launch("--config=configs/nope.py:fedprox", "--config.mu=2", cwd=str(tmp_path))
  assert missing.returncode == 2 and "config file 'configs/nope.py' not found" in missing.stderr
  assert "Traceback" not in missing.stderr


def test_help_lists_every_config_field():
  import launch
  documented = launch.config_fields_help(os.path.join(ROOT, "configs", "mnist.py"))
  assert all(documented.values()), [k for k, v in documented.items() if not v]

  def names(d, prefix=""):
    for k, v in d.items():
      yield from names(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k]
  assert set(names(mnist_config.get_config("fedprox").to_dict())) == set(documented)
  # Every config file's fields have help (configs/mnist.py's HELP holds them all).
  for path in glob.glob(os.path.join(ROOT, "configs", "*.py")):
    module = launch._load_module(path)
    for variant in module.VARIANTS:
      fields = set(names(module.get_config(variant).to_dict()))
      assert fields <= set(launch.config_fields_help(path)), (path, variant)
  result = _launch("--help")
  assert result.returncode == 0 and "sweep.experiments_per_program" in result.stdout
  assert "local_epochs" in result.stdout and "the protocol's value" in result.stdout


def test_ctrl_c_stops_in_one_line_and_the_run_resumes(tmp_path):
  import signal
  write_idx_dir(tmp_path / "idx", num_train=2000, num_test=300)
  args = _tiny_args(tmp_path / "idx", tmp_path / "run", "--config.num_rounds=60",
                    "--config.checkpoint_every=50")
  proc = start_launch(args)
  metrics = tmp_path / "run" / "metrics.jsonl"
  wait_for_lines(proc, metrics, 3)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-2000:]
  # A stop is what was asked for: its line is not an "error:".
  assert err.strip().splitlines()[-1].startswith("stopped by SIGINT after round"), err[-2000:]
  assert "error:" not in err and "Traceback" not in err
  stopped_at = int(err.split("stopped by SIGINT after round ")[1].split(",")[0])
  resumed = _launch(*args)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f"resuming {tmp_path / 'run'} after round {stopped_at}" in resumed.stderr
  rows = [json.loads(line) for line in metrics.read_text().splitlines()]
  assert [r["round"] for r in rows] == list(range(1, 61))


def test_plots_on_a_damaged_results_csv_is_one_line(tmp_path):
  (tmp_path / "results.csv").write_text("experiment,algorithm\nx\n")
  result = subprocess.run([sys.executable, "-m", "fedprox_jax.report.plots", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 2 and "is damaged" in result.stderr
  assert "Traceback" not in result.stderr


def test_the_tensorboard_command_the_readme_names_is_installed():
  import shutil
  with open(os.path.join(ROOT, "requirements.txt")) as f:
    assert any(line.startswith("tensorboard") for line in f)
  assert shutil.which("tensorboard"), "pip install -r requirements.txt installs `tensorboard`"
