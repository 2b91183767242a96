"""docs/examples/fedexp.py, an algorithm registered from outside the package: its vmapped round
equals its looped reference, it runs from the command line (the file is the config) with its
own hyper-parameter, and a bad value or a hyper-parameter of an algorithm not run is one line.

In subprocesses: registering it in this process would add an entry to the registry the other
tests enumerate.
"""

import json
import os
import subprocess
import sys

from helpers import write_idx_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "docs", "examples", "fedexp.py")

ORACLE = r"""
import importlib.util, sys
import jax, numpy as np
sys.path[:0] = [ROOT, ROOT + "/tests"]
spec = importlib.util.spec_from_file_location("fedexp_example", EXAMPLE)
example = importlib.util.module_from_spec(spec); spec.loader.exec_module(example)
from fedprox_jax.core import algorithms, models, reference, server
from helpers import HETERO_SIZES, make_federated_data, tree_max_abs_diff
a = algorithms.get("fedexp")
spec = server.RoundSpec(clients_per_round=4, local_epochs=3, batch_size=4,
                        max_client_size=max(HETERO_SIZES), num_lanes=2, sampling="uniform",
                        straggler_rule="exact", weighting="samples",
                        **algorithms.round_statics(a, 0.0))
hp = server.HParams.create(0.05, 0.0, 0.5, False, 4, algorithm=a.hparams)
data = make_federated_data(HETERO_SIZES, seed=3)
model = models.LogisticRegression()
x0 = models.init_params(model, jax.random.key(0))
avg_spec = server.RoundSpec(**{**spec.__dict__, "hooks": algorithms.FEDAVG.hooks})
step = jax.jit(server.round_step, static_argnums=(0, 1))
v, l, avg = (server.ServerState(x0),) * 3
for t in (1, 2):
  v, _ = step(model.apply, spec, v, data, hp, jax.random.key(t))
  l, _ = reference.looped_round_step(model.apply, spec, l, data, hp, jax.random.key(t))
  avg, _ = step(model.apply, avg_spec, avg, data, hp, jax.random.key(t))
print(tree_max_abs_diff(v.params, l.params), tree_max_abs_diff(v.params, avg.params))
"""


def _python(code):
  return subprocess.run([sys.executable, "-c", f"ROOT, EXAMPLE = {ROOT!r}, {EXAMPLE!r}\n" + code],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_a_registered_algorithm_from_outside_equals_its_looped_reference():
  result = _python(ORACLE)
  assert result.returncode == 0, result.stderr[-3000:]
  to_looped, to_fedavg = map(float, result.stdout.split()[-2:])
  assert to_looped < 3e-5
  assert to_fedavg > 1e-4  # it extrapolated: not FedAvg's average


def _launch(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


def test_a_registered_algorithm_runs_from_the_command_line(tmp_path):
  write_idx_dir(tmp_path / "idx", num_train=2000, num_test=300)
  common = ["--config.data_source=idx", f"--config.data_dir={tmp_path / 'idx'}",
            "--config.allow_modified_mnist=True", "--config.model=mlr",
            "--config.num_clients=20", "--config.clients_per_round=5", "--config.num_rounds=2",
            "--config.local_epochs=2"]
  workdir = tmp_path / "run"
  result = _launch(f"--config={EXAMPLE}", *common, "--config.hparams.fedexp.epsilon=0.01",
                   f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  config = json.loads((workdir / "config.json").read_text())
  assert config["algorithm"] == "fedexp"
  assert config["hparams"] == {"fedexp": {"epsilon": 0.01}}  # only what ran is recorded
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["round"] for r in rows] == [1, 2] and rows[-1]["test_accuracy"] > 0.1

  bad = _launch(f"--config={EXAMPLE}", *common, "--config.hparams.fedexp.epsilon=0.0",
                f"--workdir={tmp_path / 'bad'}")
  assert bad.returncode != 0
  assert "config.hparams.fedexp.epsilon=0.0: must be > 0" in bad.stderr
  assert "Traceback" not in bad.stderr
  # FedDyn's alpha on a run of FedExP would be ignored: refused, naming what to do.
  other = _launch(f"--config={EXAMPLE}", *common, "--config.hparams.feddyn.alpha=0.1",
                  f"--workdir={tmp_path / 'other'}")
  assert other.returncode != 0
  assert ("config.hparams.feddyn.alpha=0.1 applies to the algorithm feddyn, which this run "
          "does not run: add --config.algorithm=feddyn") in other.stderr
  assert not (tmp_path / "bad").exists() and not (tmp_path / "other").exists()
