"""benchmarks/gpu_suite.py runs end to end at toy sizes on CPU (--smoke), so it never rots."""

import json
import os
import subprocess
import sys

from fedprox_jax.core import models
from helpers import write_idx_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_suite_smoke(tmp_path):
  write_idx_dir(tmp_path / "idx", num_train=600, num_test=100)
  out = tmp_path / "out"
  proc = subprocess.run(
      [sys.executable, "benchmarks/gpu_suite.py", "--smoke", f"--out={out}",
       "--data_source=idx", f"--data_dir={tmp_path / 'idx'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=900,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  report = json.loads((out / "gpu_suite.json").read_text())
  assert report["smoke"] and set(report["items"]) == {"default_run", "round", "figure1",
                                                             "niid_bench"}
  run = report["items"]["default_run"]
  assert run["rounds"] == 2 and run["total_seconds"] > run["seconds_per_round_after_first"] > 0
  paths = report["items"]["round"]["paths"]
  assert {p["path"] for p in paths} >= {"looped", "1 lane", "lane per client"}
  assert {p["conv_impl"] for p in paths} == set(models.CONV_IMPLS[:2]) == {"im2col", "xla"}
  assert all(p["median_ms"] > 0 for p in paths)
  runs = report["items"]["figure1"]["runs"]
  assert [r["experiments_per_program"] for r in runs] == [1, 3]
  assert all(r["experiments"] == 3 and r["full_grid_seconds_extrapolated"] > r["measured_seconds"]
             for r in runs)
  niid = report["items"]["niid_bench"]
  assert niid["experiments"] == 4 and niid["rounds"] == 2 and niid["seconds"] > 0
  assert "SCAFFOLD" in niid["table"] and "FedNova" in niid["table"]
  # sweep.global_train_loss=False (NIID-Bench's config): no training-loss column values
  assert all(line.split("|")[-4].strip() == "–" for line in niid["table"].splitlines()[2:])
  table = (out / "gpu_suite.md").read_text()
  assert "SMOKE" in table and "| im2col | looped |" in table and "extrapolated" in table
  assert "NIID-Bench MNIST grid" in table
  assert report["environment"]["backend"] == "cpu" and report["environment"]["cpu"]
