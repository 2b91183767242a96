"""Sweeps: vmapped grid == experiments one by one, common random numbers, dissimilarity, outputs."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedprox_jax import errors
from fedprox_jax import schema
from fedprox_jax.run import experiment, loop, sweep
from fedprox_jax.run import grid as grid_lib, program as program_lib
from fedprox_jax.run import config as config_lib
from fedprox_jax.core import metrics, models, rounds
from fedprox_jax.report import results as results_lib
from helpers import ROOT, assert_same_rows, make_federated_data
from helpers import tiny_mnist as _tiny_mnist
from helpers import tiny_sweep_config as _tiny_config



def test_vmapped_sweep_equals_experiments_one_by_one():
  c = _tiny_config(inexactness=True)
  setup = experiment.prepare(c, _tiny_mnist(), lanes_over_devices=False)
  specs = grid_lib.experiment_grid(c)
  assert len(specs) == 8  # 2 algorithms x 2 straggler levels x 2 seeds
  schedule = loop.Schedule(3, eval_every=2, checkpoint_every=3)  # rows after rounds 2 and 3
  together, diverged = program_lib.run_program(setup, specs, schedule)
  assert diverged == {}
  # Every column is one of the schema's (one name, one meaning), the sweep's extras included.
  assert {k for r in together[specs[0].name] for k in r} == set(schema.ROW_FIELDS)
  for s in specs[::2]:  # one seed of each (algorithm, stragglers): 4 programs of one
    alone = program_lib.run_program(setup, [s], schedule)[0][s.name]
    assert_same_rows(together[s.name], alone, ("test_accuracy", "test_loss", "global_train_loss",
                                               "local_train_loss", "dissimilarity",
                                               "b_dissimilarity"),
                     rtol=2e-4, atol=2e-5, rounds=[2, 3])
    # A ratio of gradient norms near a solution: float32 noise of the parameters shows more.
    assert_same_rows(together[s.name], alone, ("gamma_mean", "gamma_max"), rtol=2e-3)
  # FedProx (mu > 0) and FedAvg really differ, so the comparison above could fail.
  names = [s.name for s in specs]
  assert together[names[0]][-1]["global_train_loss"] != together[names[2]][-1]["global_train_loss"]


def test_common_random_numbers_across_algorithms():
  data = make_federated_data([5, 9, 14, 30, 8, 11, 40, 3])
  spec = rounds.RoundSpec(clients_per_round=5, local_epochs=4, batch_size=4,
                          max_client_size=40, num_lanes=1, sampling="uniform", straggler_rule="exact", weighting="samples")
  for seed in range(5):
    key = jax.random.fold_in(jax.random.key(seed), 7)
    plans = [rounds.plan_round(key, data, rounds.HParams.create(0.03, mu, 0.6, drop, 5), spec)
             for mu, drop in ((0.0, True), (0.0, False), (1.0, False))]
    for p in plans[1:]:
      np.testing.assert_array_equal(p.ids, plans[0].ids)
      np.testing.assert_array_equal(p.is_straggler, plans[0].is_straggler)
      np.testing.assert_array_equal(jax.random.key_data(p.keys), jax.random.key_data(plans[0].keys))
    np.testing.assert_array_equal(plans[1].epochs, plans[2].epochs)  # same straggler epochs
    kept = ~np.asarray(plans[0].is_straggler)
    np.testing.assert_array_equal(np.asarray(plans[0].epochs)[kept], np.asarray(plans[1].epochs)[kept])


def _client_gradients(model, params, data):
  grads = []
  for o, n in zip(np.asarray(data.offsets), np.asarray(data.sizes)):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
        model.apply(p, data.x[o:o + n]), data.y[o:o + n]).mean()
    grads.append(np.concatenate([np.ravel(g) for g in jax.tree_util.tree_leaves(jax.grad(loss)(params))]))
  return np.stack(grads).astype(np.float64)


def test_dissimilarities_equal_direct_per_client_computation():
  data = make_federated_data([3, 17, 8, 40])
  model = models.LogisticRegression()
  params = models.init_params(model, jax.random.key(0))
  grads = _client_gradients(model, params, data)
  weights = np.asarray(data.sizes) / np.asarray(data.sizes).sum()
  g = weights @ grads
  got = metrics.dissimilarities(model.apply, params, data, chunk=5)
  # The authors' code's: a plain mean over clients around the n_k-weighted mean gradient.
  np.testing.assert_allclose(float(got["dissimilarity"]),
                             np.mean(np.sum((grads - g) ** 2, axis=1)), rtol=1e-4)
  # The paper's Definition 3: B^2 = E_k ||grad F_k||^2 / ||grad f||^2, E_k with p_k = n_k / n.
  b = np.sqrt(weights @ np.sum(grads ** 2, axis=1)) / np.linalg.norm(g)
  assert b > 1.05  # these clients differ, so B = 1 below is a real check
  np.testing.assert_allclose(float(got["b_dissimilarity"]), b, rtol=1e-4)


def test_b_dissimilarity_is_one_when_every_client_holds_the_same_data():
  one = make_federated_data([12])
  data = one._replace(x=jnp.tile(one.x, (3, 1, 1, 1)), y=jnp.tile(one.y, 3),
                      offsets=jnp.array([0, 12, 24], jnp.int32), sizes=jnp.full(3, 12, jnp.int32))
  model = models.LogisticRegression()
  got = metrics.dissimilarities(model.apply, models.init_params(model, jax.random.key(1)), data,
                                chunk=5)
  np.testing.assert_allclose(float(got["b_dissimilarity"]), 1.0, rtol=1e-5)
  np.testing.assert_allclose(float(got["dissimilarity"]), 0.0, atol=1e-5)


def test_sweep_writes_results_table_and_figure(tmp_path):
  c = _tiny_config(eval_every=2)
  sweep.run(c, str(tmp_path), source=_tiny_mnist())
  for name in ("results.csv", "summary.md", "figure1.png", "summary.json", "config.json",
               "partition_stats.json"):
    assert (tmp_path / name).exists(), name
  rows = results_lib.read_results_csv(str(tmp_path / "results.csv"))
  assert len(rows) == 8 * 2 and {r["round"] for r in rows} == {2, 3}
  table = (tmp_path / "summary.md").read_text()
  assert table.count("\n| ") == 4 and "FedProx (mu>0)" in table and "±" in table
  assert "2 runs (1 partition x 2 seeds)" in table
  os.remove(tmp_path / "figure1.png")
  result = subprocess.run([sys.executable, "-m", "fedprox_jax.report.plots", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert (tmp_path / "figure1.png").exists()
  with pytest.raises(errors.WorkdirError, match="holds a finished sweep"):
    sweep.run(c, str(tmp_path), source=_tiny_mnist())


def test_partition_axis_sweep_equals_its_experiments_run_one_by_one(tmp_path):
  c = _tiny_config(partition_seed=5, num_rounds=2)
  c.sweep.update(dict(stragglers="0.5", partitions=2))  # 2 partitions x 2 algorithms x 2 seeds
  mnist = _tiny_mnist()
  results = sweep.run(c, str(tmp_path), source=mnist)
  specs = grid_lib.experiment_grid(c)
  assert [(s.partition, s.seed) for s in specs if s.algorithm == "fedprox"] == \
      [(5, 0), (5, 1), (6, 0), (6, 1)]
  assert set(results) == {s.name for s in specs} and specs[0].name.endswith("_seed0_p5")
  stats = json.loads((tmp_path / "partition_stats.json").read_text())
  assert list(stats["datasets"]) == ["partition5", "partition6"]
  assert stats["datasets"]["partition5"]["data_sha256"] != \
      stats["datasets"]["partition6"]["data_sha256"]
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["partition_seed"] == 5 and saved["sweep"]["partitions"] == 2
  rows = results_lib.read_results_csv(str(tmp_path / "results.csv"))
  assert {r["partition"] for r in rows} == {5, 6}
  table = results_lib.summary_table(rows)
  assert {(e["runs"], e["final_accuracy"]["partitions"]) for e in table} == {(4, 2)}
  schedule = loop.Schedule(2, eval_every=1, checkpoint_every=2)
  for s in (specs[1], specs[-1]):  # a seed of each partition, each on its own data
    setup = experiment.prepare(grid_lib.data_config(c, None, s.partition), mnist,
                               lanes_over_devices=False)
    alone = program_lib.run_program(setup, [s], schedule)[0][s.name]
    assert_same_rows(results[s.name], alone, ("test_accuracy", "test_loss", "global_train_loss",
                                              "dissimilarity", "b_dissimilarity"),
                     rtol=2e-4, atol=2e-5, rounds=[1, 2])
  # The same seed on the other partition is another run (so the comparison could fail).
  other = results[specs[1].name.replace("_p5", "_p6")]
  assert other[-1]["global_train_loss"] != results[specs[1].name][-1]["global_train_loss"]


def test_partition_per_seed_gives_each_seed_its_own_partition():
  c = _tiny_config(seed=3)
  c.sweep.partition_per_seed = True
  specs = grid_lib.experiment_grid(c)
  assert len(specs) == 8 and all(s.partition == s.seed for s in specs)
  assert {s.data_key for s in specs} == {("", 3), ("", 4)}
  assert specs[0].name == "fedavg_s0.5_seed3_p3"
  c.sweep.partitions = 2
  with pytest.raises(errors.ConfigError, match="sweep.partitions=2: .*one partition per seed"):
    config_lib.resolve(c)


def test_plot_entry_point_explains_its_usage(tmp_path):
  result = subprocess.run([sys.executable, "-m", "fedprox_jax.report.plots", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 2 and "usage" in result.stderr


@pytest.mark.parametrize("field,value,match", [
    ("algorithms", "fedavg,scafold", "'scafold' is not one of"),
    ("stragglers", "0,1.5", "1.5 is not between 0 and 1"),
    ("stragglers", "0,half", "not a comma-separated list"),
    ("seeds", 0, "must be an integer >= 1"),
    ("mu", float("nan"), "sweep.mu=nan: must be a finite number > 0"),
    ("mu", -1.0, "sweep.mu=-1.0: must be a finite number > 0"),
    ("mu", 0.0, "'fedprox_mu0' is the mu = 0 one"),
    ("experiments_per_program", -2, "must be an integer >= 0"),
    ("concurrent_programs", -1, "sweep.concurrent_programs=-1: must be an integer >= 0"),
    ("algorithms", "fedavg,fedavg", "lists fedavg more than once"),
    ("stragglers", "0.5,0.50", "lists 0.5 more than once"),
    ("algorithms", "", "is empty"),
])
def test_bad_sweep_grids(field, value, match):
  c = _tiny_config()
  c.sweep[field] = value
  with pytest.raises(errors.ConfigError, match=match):
    grid_lib.experiment_grid(config_lib.resolve(c))


def test_programs_side_by_side_stop_together_and_raise_the_first_failure():
  """Program 0 fails while program 1 runs beside it: program 1 sees the sweep stopping and
  stops (as on a signal), programs 2-3 never start, and program 0's error is what is raised."""
  import threading
  started, failed = [], threading.Event()

  def run_program(i, sweep_stopping):
    started.append(i)
    if i == 0:
      while len(started) < 2:  # fail once the program beside it runs
        pass
      failed.set()
      raise ZeroDivisionError("program 0")
    assert failed.wait(30) and sweep_stopping.wait(30), "program 1 never saw the sweep stop"
    raise errors.Interrupted("stopped by the sweep's stop after round 1")

  with pytest.raises(ZeroDivisionError, match="program 0"):
    sweep._run_side_by_side(run_program, 4, 2)
  assert sorted(started) == [0, 1]
  # A stop (a signal) in both programs: one line that says the other one stopped too.
  both_running = threading.Barrier(2, timeout=30)

  def stopped(i, sweep_stopping):
    both_running.wait()
    raise errors.Interrupted(f"stopped by SIGTERM after round {i + 3}")

  with pytest.raises(errors.Interrupted, match=r"after round [34] \(1 other program\(s\)"):
    sweep._run_side_by_side(stopped, 2, 2)
  # Without failures: every program's result, in program order, whatever order they end in.
  assert sweep._run_side_by_side(lambda i, stop: i * i, 5, 3) == [0, 1, 4, 9, 16]
  assert sweep._run_side_by_side(lambda i, stop: (i, stop), 2, 1) == [(0, None), (1, None)]


def test_paper_protocol_splits_each_client_90_10():
  c = _tiny_config(protocol="paper")
  exp = experiment.prepare(c, _tiny_mnist(num_train=1800, num_test=200), lanes_over_devices=False).data
  stats = exp.stats
  assert stats["examples"] == stats["train_examples"] + stats["test_examples"]
  assert 0.85 < stats["train_examples"] / stats["examples"] < 0.95
  # Per-pixel standardisation over the pooled data.
  assert float(jnp.abs(jnp.concatenate([exp.train.x, exp.test_x]).mean())) < 0.05


def _results(workdir):
  """results.csv rows without the wall time (which differs between identical sweeps)."""
  rows = results_lib.read_results_csv(os.path.join(workdir, "results.csv"))
  for r in rows:
    r.pop("wall_time")
    for k, v in r.items():
      if isinstance(v, float) and np.isnan(v):
        r[k] = None  # an empty cell (e.g. no local loss when all were dropped): equal to itself
  return rows


class Killed(Exception):
  pass


def _sweep_config():
  # 8 experiments in 4 programs of 2, a checkpoint every round; their state besides the model
  # (FedAdam's moments, SCAFFOLD's variates, the clients' momentum) must resume exactly too.
  return _tiny_config(checkpoint_every=1, momentum=0.5, sweep=dict(
      algorithms="fedadam,scaffold", stragglers="0.5,0.9", seeds=2, mu=1.0, dissimilarity=True,
      experiments_per_program=2))


@pytest.fixture(scope="module")
def uninterrupted_sweep(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("sweep_full"))
  sweep.run(_sweep_config(), workdir, source=_tiny_mnist())
  rows = _results(workdir)
  assert len(rows) == 8 * 3
  return rows


def test_sweep_killed_at_many_points_resumes_to_identical_results(tmp_path, monkeypatch,
                                                                  uninterrupted_sweep):
  """Kills before checkpoint saves (after the rows of the round are written) and in the middle
  of writing rows, in several programs; each re-run continues the same workdir."""
  from fedprox_jax.run import checkpoints
  from fedprox_jax import outputs
  real_save, real_append = checkpoints.Checkpoints.save, outputs.append_jsonl
  counter = {"save": 0, "append": 0}

  def save(self, t, state):
    counter["save"] += 1
    if counter["save"] in kill_saves:
      raise Killed()
    return real_save(self, t, state)

  def append(workdir, name, rows):
    counter["append"] += 1
    if counter["append"] in kill_appends:  # half a line on disk, then the kill
      with open(os.path.join(workdir, name), "a") as f:
        f.write('{"experiment": "half')
      raise Killed()
    return real_append(workdir, name, rows)

  monkeypatch.setattr(checkpoints.Checkpoints, "save", save)
  monkeypatch.setattr(outputs, "append_jsonl", append)
  kills = 0
  # Each re-run counts anew: a kill at its 2nd save, in its 3rd row write, at its 4th save.
  for kill_saves, kill_appends in (({2}, set()), (set(), {3}), ({4}, set())):
    counter.update(save=0, append=0)
    with pytest.raises(Killed):
      sweep.run(_sweep_config(), str(tmp_path), source=_tiny_mnist())
    kills += 1
  kill_saves, kill_appends = set(), set()
  c = _sweep_config()
  c.sweep.experiments_per_program = 4  # the programs' layout cannot change on resume ...
  with pytest.raises(errors.ConfigError, match="was started with 2"):
    sweep.run(c, str(tmp_path), source=_tiny_mnist())
  c.sweep.experiments_per_program = 0  # ... and 0 (the default) means the one it started with
  sweep.run(c, str(tmp_path), source=_tiny_mnist())
  assert kills == 3
  assert _results(str(tmp_path)) == uninterrupted_sweep


def test_sweep_config_change_on_resume_is_refused(tmp_path, monkeypatch):
  from fedprox_jax.run import checkpoints
  monkeypatch.setattr(checkpoints.Checkpoints, "save", lambda *a: (_ for _ in ()).throw(Killed()))
  with pytest.raises(Killed):
    sweep.run(_sweep_config(), str(tmp_path), source=_tiny_mnist())
  monkeypatch.undo()
  c = _sweep_config()
  c.sweep.mu = 0.5
  with pytest.raises(errors.ConfigError, match=r"sweep.mu: 1.0 -> 0.5"):
    sweep.run(c, str(tmp_path), source=_tiny_mnist())


def test_sweep_names_each_diverged_experiment_and_writes_no_nan(tmp_path):
  # lr * mu = 50 > 2: FedProx's proximal step explodes; FedAvg (mu = 0) trains normally.
  c = _tiny_config(lr=0.5, sweep=dict(algorithms="fedavg,fedprox", stragglers="0.5", seeds=2,
                                      mu=100.0, dissimilarity=False, experiments_per_program=0))
  with pytest.raises(errors.DivergenceError) as e:
    sweep.run(c, str(tmp_path), source=_tiny_mnist())
  assert "2 of 4 experiments diverged (fedprox_s0.5_seed0 at round" in str(e.value)
  assert "lower --config.mu" in str(e.value)
  rows = results_lib.read_results_csv(str(tmp_path / "results.csv"))
  fedavg = [r for r in rows if r["algorithm"] == "fedavg"]
  fedprox = [r for r in rows if r["algorithm"] == "fedprox"]
  assert len(fedavg) == 2 * 3 and all(r["diverged_at_round"] is None for r in fedavg)
  assert all(np.isfinite(r["test_accuracy"]) and np.isfinite(r["global_train_loss"])
             for r in fedavg)
  # FedProx: finite rows before its divergence, then one marker row without metrics.
  for seed in (0, 1):
    mine = [r for r in fedprox if r["seed"] == seed]
    assert mine[-1]["round"] == mine[-1]["diverged_at_round"]
    assert np.isnan(mine[-1]["test_accuracy"]) and all(np.isfinite(r["test_accuracy"])
                                                       for r in mine[:-1])
  table = (tmp_path / "summary.md").read_text()
  assert "| 0 (2 diverged) | diverged |" in table  # both runs of the cell
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert set(summary["diverged"]) == {"fedprox_s0.5_seed0", "fedprox_s0.5_seed1"}


def test_sweep_with_everything_diverging_fails_clearly(tmp_path):
  c = _tiny_config("figure1", lr=1e30, sweep=dict(algorithms="fedavg", stragglers="0.5", seeds=1, mu=1.0,
                                      dissimilarity=False, experiments_per_program=0))
  with pytest.raises(errors.DivergenceError, match="1 of 1 experiments diverged"):
    sweep.run(c, str(tmp_path), source=_tiny_mnist())
  rows = results_lib.read_results_csv(str(tmp_path / "results.csv"))
  assert len(rows) == 1 and rows[0]["diverged_at_round"] == rows[0]["round"]


@pytest.mark.parametrize("batch_size", [1, 7, 50, 53, 1000])
def test_evaluate_in_batches_equals_the_whole_set_at_once(batch_size):
  data = make_federated_data([53])
  model = models.LogisticRegression()
  params = models.init_params(model, jax.random.key(0))
  logits = model.apply(params, data.x)
  expected_accuracy = float(jnp.mean(jnp.argmax(logits, -1) == data.y))
  expected_loss = float(optax.softmax_cross_entropy_with_integer_labels(logits, data.y).mean())
  accuracy, loss = metrics.evaluate(model.apply, params, data.x, data.y, batch_size)
  assert 0 < expected_accuracy < 1
  np.testing.assert_allclose(float(accuracy), expected_accuracy, rtol=1e-6)
  np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-5)
