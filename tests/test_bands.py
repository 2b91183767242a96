"""Seed bands over finished single runs: mean ± std per round, refusing runs that differ."""

import csv
import json

import numpy as np
import pytest

from fedprox_jax.report import bands


def _run(tmp_path, seed, accuracies, **config):
  w = tmp_path / f"seed{seed}"
  w.mkdir()
  (w / "config.json").write_text(json.dumps({"seed": seed, "lr": 0.03, **config}))
  (w / "metrics.jsonl").write_text("".join(
      json.dumps({"round": t + 1, "test_accuracy": a}) + "\n" for t, a in enumerate(accuracies)))
  (w / "summary.json").write_text("{}")
  return str(w)


def test_band_is_mean_and_sample_std_per_round(tmp_path):
  runs = [_run(tmp_path, 0, [0.1, 0.5]), _run(tmp_path, 1, [0.3, 0.7]), _run(tmp_path, 2, [0.2, 0.9])]
  band = bands.write_band(str(tmp_path / "out"), "b", runs)
  np.testing.assert_allclose(band[:, 1], [0.2, 0.7])
  np.testing.assert_allclose(band[:, 2], [0.1, 0.2])
  with open(tmp_path / "out" / "b.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 2 and rows[1]["seed2"] == "0.900000" and rows[0]["n"] == "3"
  assert (tmp_path / "out" / "b.png").stat().st_size > 0


def test_band_refuses_runs_that_differ_in_more_than_the_seed(tmp_path):
  runs = [_run(tmp_path, 0, [0.1]), _run(tmp_path, 1, [0.2], lr=0.1)]
  with pytest.raises(ValueError, match="differ in more than the seed: lr"):
    bands.write_band(str(tmp_path / "out"), "b", runs)


def test_band_refuses_unfinished_or_misaligned_runs(tmp_path):
  a, b = _run(tmp_path, 0, [0.1, 0.2]), _run(tmp_path, 1, [0.2])
  with pytest.raises(ValueError, match="evaluated rounds"):
    bands.write_band(str(tmp_path / "out"), "b", [a, b])
  (tmp_path / "seed1" / "summary.json").unlink()
  with pytest.raises(ValueError, match="not a finished run"):
    bands.write_band(str(tmp_path / "out"), "b", [a, b])
