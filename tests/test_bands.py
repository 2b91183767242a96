"""Bands and results tables over (partition, seed) runs: the statistics against numpy and hand
computations on fixed tables (ddof 1), and bands refusing runs that differ."""

import csv
import json

import numpy as np
import pytest

from fedprox_jax.report import bands, statistics
from fedprox_jax.report import results as results_lib

# A fixed table: final accuracy of 2 partitions x 3 seeds.
TABLE = {(0, 0): 0.80, (0, 1): 0.82, (0, 2): 0.84, (1, 0): 0.70, (1, 1): 0.74, (1, 2): 0.72}


def test_spread_over_partitions_and_seeds_against_numpy_and_by_hand():
  got = statistics.spread(TABLE)
  values = np.array(list(TABLE.values()))
  assert (got["n"], got["partitions"], got["seeds"]) == (6, 2, 3)
  np.testing.assert_allclose(got["mean"], values.mean())
  np.testing.assert_allclose(got["std"], np.std(values, ddof=1))
  assert got["std"] != pytest.approx(np.std(values, ddof=0))  # the ddof is not moot here
  # By hand: partition means 0.82 and 0.72 -> std 0.1 / sqrt(2); within each partition the
  # seeds' variance is 0.0004 -> pooled std 0.02.
  np.testing.assert_allclose(got["std_over_partitions"], 0.1 / np.sqrt(2))
  np.testing.assert_allclose(got["std_over_seeds"], 0.02)
  one_seed_each = statistics.spread({(p, p): v for (p, s), v in TABLE.items() if s == 0})
  assert one_seed_each["std_over_seeds"] is None and one_seed_each["std_over_partitions"] > 0
  assert statistics.spread({(0, 0): 0.5})["std"] is None  # one run: no std, not 0


def test_last_rounds_mean_and_rounds_to_target_on_hand_built_curves():
  rounds = list(range(1, 21))
  acc = [0.1 * (t % 10) for t in rounds]  # 0.1 .. 0.9, 0, 0.1 .. 0.9, 0
  # Rounds 11..20: 0.1 .. 0.9 and 0 -> 4.5 / 10.
  assert statistics.last_rounds_mean(rounds, acc) == pytest.approx(0.45)
  assert statistics.last_rounds_mean([5, 10, 15, 20], [0.1, 0.2, 0.3, 0.5]) == pytest.approx(0.4)
  assert statistics.rounds_to_target(rounds, acc, 0.8) == 8
  assert statistics.rounds_to_target(rounds, acc, 0.95) is None


def _rows(table, algorithm="fedprox"):
  """results.csv rows: each run's accuracy rises to its final value at round 10; training loss
  1 - accuracy."""
  rows = []
  for (p, s), final in table.items():
    for t in range(1, 11):
      a = final * t / 10
      rows.append({"experiment": f"{algorithm}_p{p}_seed{s}", "federation": "",
                   "partition": p, "algorithm": algorithm, "stragglers": 0.9, "seed": s,
                   "mu": 1.0, "round": t, "test_accuracy": a, "global_train_loss": 1 - a,
                   "dissimilarity": float("nan"), "diverged_at_round": None})
  return rows


def test_summary_table_reports_every_statistic_over_partitions_and_seeds():
  rows = _rows(TABLE) + [dict(r, algorithm="fedavg", partition=9, seed=9, diverged_at_round=4,
                              experiment="fedavg_p9") for r in _rows({(9, 9): 0.5})][:3]
  table = results_lib.summary_table(rows)
  (fedavg,) = [e for e in table if e["algorithm"] == "fedavg"]
  assert fedavg["runs"] == 0 and fedavg["runs_diverged"] == 1
  (e,) = [e for e in table if e["algorithm"] == "fedprox"]
  values = np.array(list(TABLE.values()))
  assert e["runs"] == 6 and e["runs_diverged"] == 0
  np.testing.assert_allclose(e["final_accuracy"]["std"], np.std(values, ddof=1))
  np.testing.assert_allclose(e["final_train_loss"]["mean"], 1 - values.mean())
  # Every evaluation of the last 10 rounds: final * (1 .. 10) / 10, mean final * 0.55.
  np.testing.assert_allclose(e["last10_accuracy"]["mean"], values.mean() * 0.55)
  np.testing.assert_allclose(e["last10_accuracy"]["std_over_seeds"], 0.02 * 0.55)
  # 80 %: only partition 0's runs (0.80, 0.82, 0.84) reach it, at round 10 each.
  assert (e["rounds_to_80"], e["runs_reaching_80"]) == (10.0, 3)
  assert e["rounds_to_90"] is None and e["runs_reaching_90"] == 0
  # The gain over FedAvg is paired run by run: FedAvg at 0.9 x the final accuracy of each run.
  fedavg_rows = [dict(r, algorithm="fedavg", experiment=r["experiment"].replace("fedprox", "fedavg"),
                      test_accuracy=0.9 * r["test_accuracy"]) for r in _rows(TABLE)]
  (paired,) = [e for e in results_lib.summary_table(_rows(TABLE) + fedavg_rows)
               if e["algorithm"] == "fedprox"]
  gains = 0.1 * 0.55 * values  # the last-10 means' differences, run by run
  np.testing.assert_allclose(paired["last10_gain_over_fedavg"]["mean"], gains.mean())
  np.testing.assert_allclose(paired["last10_gain_over_fedavg"]["std"], np.std(gains, ddof=1))
  assert "last10_gain_over_fedavg" not in e  # no FedAvg runs to pair with
  md = results_lib.format_markdown(table)
  assert "6 runs (2 partitions x 3 seeds)" in md and "ddof 1" in md
  assert f"{values.mean():.4f} ± {np.std(values, ddof=1):.4f}" in md
  assert "10 (3/6 runs)" in md and "| 0 (1 diverged) | diverged" in md
  assert "+" + statistics.format_band(paired["last10_gain_over_fedavg"]) + " |" in \
      results_lib.format_markdown(results_lib.summary_table(_rows(TABLE) + fedavg_rows))


def _run(tmp_path, seed, accuracies, partition_seed=42, **config):
  w = tmp_path / f"p{partition_seed}_seed{seed}"
  w.mkdir()
  (w / "config.json").write_text(json.dumps({"seed": seed, "partition_seed": partition_seed,
                                             "lr": 0.03, **config}))
  (w / "metrics.jsonl").write_text("".join(
      json.dumps({"round": t + 1, "test_accuracy": a}) + "\n" for t, a in enumerate(accuracies)))
  (w / "summary.json").write_text("{}")
  return str(w)


def test_band_is_mean_and_sample_std_per_round_over_partitions_and_seeds(tmp_path):
  runs = [_run(tmp_path, 0, [0.1, 0.5]), _run(tmp_path, 1, [0.3, 0.7]),
          _run(tmp_path, 0, [0.2, 0.9], partition_seed=7)]
  band, summary = bands.write_band(str(tmp_path / "out"), "b", runs)
  np.testing.assert_allclose(band[:, 1], [0.2, 0.7])
  np.testing.assert_allclose(band[:, 2], [0.1, 0.2])  # ddof 1
  with open(tmp_path / "out" / "b.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 2 and rows[1]["p7_s0"] == "0.900000" and rows[0]["n"] == "3"
  assert "std_test_accuracy_ddof1" in rows[0]
  assert (tmp_path / "out" / "b.png").stat().st_size > 0
  last = summary["last10_accuracy"]
  np.testing.assert_allclose(last["mean"], np.mean([0.3, 0.5, 0.55]))
  # Partition 42's two seeds (0.3, 0.5) and partition 7's one run (0.55).
  np.testing.assert_allclose(last["std_over_partitions"], np.std([0.4, 0.55], ddof=1))
  np.testing.assert_allclose(last["std_over_seeds"], np.std([0.3, 0.5], ddof=1))
  assert "3 runs over 2 partitions and 2 seeds" in bands.format_summary(summary)


def test_band_refuses_runs_that_differ_in_more_than_seed_and_partition(tmp_path):
  runs = [_run(tmp_path, 0, [0.1]), _run(tmp_path, 1, [0.2], lr=0.1)]
  with pytest.raises(ValueError, match="differ in more than the seed and the partition: lr"):
    bands.write_band(str(tmp_path / "out"), "b", runs)
  (tmp_path / "again").mkdir()
  twice = [_run(tmp_path, 3, [0.1], partition_seed=5),
           _run(tmp_path / "again", 3, [0.2], partition_seed=5)]
  with pytest.raises(ValueError, match="two runs with partition_seed 5 and seed 3"):
    bands.write_band(str(tmp_path / "b2"), "b", twice)
  # Same seeds, another algorithm: the differing field is named, not the shared seeds.
  for name in ("fedavg", "scaffold"):
    (tmp_path / name).mkdir()
  algorithms = [_run(tmp_path / "fedavg", 3, [0.1], partition_seed=5, algorithm=""),
                _run(tmp_path / "scaffold", 3, [0.2], partition_seed=5, algorithm="scaffold")]
  with pytest.raises(ValueError, match=r"differ in more than the seed and the partition: "
                                       r"algorithm \(''\, 'scaffold'\)"):
    bands.write_band(str(tmp_path / "b3"), "b", algorithms)


def test_band_refuses_unfinished_or_misaligned_runs(tmp_path):
  a, b = _run(tmp_path, 0, [0.1, 0.2]), _run(tmp_path, 1, [0.2])
  with pytest.raises(ValueError, match="evaluated rounds") as e:
    bands.write_band(str(tmp_path / "out"), "b", [a, b])
  # Where they part, not the same first rounds of both.
  assert "(1 rows vs 2; first at row 2: no row vs round 2)" in str(e.value)
  (tmp_path / "p42_seed1" / "summary.json").unlink()
  with pytest.raises(ValueError, match="not a finished run"):
    bands.write_band(str(tmp_path / "out"), "b", [a, b])
