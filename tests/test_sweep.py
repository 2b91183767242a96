"""Sweeps: vmapped grid == experiments one by one, common random numbers, dissimilarity, outputs."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedprox_jax import data as data_lib
from fedprox_jax import metrics, models, plots, server, simulate, sweep
from helpers import make_federated_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import mnist as mnist_config  # noqa: E402


def _tiny_mnist(num_train=2000, num_test=200, seed=0):
  rng = np.random.default_rng(seed)
  labels = (np.arange(num_train) % 10).astype(np.int32)
  # Digit-dependent images so that the model can learn something.
  means = rng.integers(0, 256, (10, 28, 28, 1))
  noise = lambda n: rng.integers(-40, 40, (n, 28, 28, 1))
  train = np.clip(means[labels] + noise(num_train), 0, 255).astype(np.uint8)
  test_labels = (np.arange(num_test) % 10).astype(np.int32)
  test = np.clip(means[test_labels] + noise(num_test), 0, 255).astype(np.uint8)
  return data_lib.Mnist(train, labels, test, test_labels)


def _tiny_config(variant="figure1_paper", **overrides):
  c = mnist_config.get_config(variant)
  c.update(dict(model="mlr", num_clients=20, clients_per_round=5, num_rounds=3,
                local_epochs=2, min_per_client=10))
  c.sweep.update(dict(algorithms="fedavg,fedprox", stragglers="0.5,0.9", seeds=2))
  c.update(overrides)
  return simulate.validate_config(c)  # protocol values filled in, as run_sweep does


def test_vmapped_sweep_equals_experiments_one_by_one():
  c = _tiny_config()
  exp = simulate.prepare_experiment(c, _tiny_mnist())
  specs = sweep.experiment_grid(c)
  assert len(specs) == 8  # 2 algorithms x 2 straggler levels x 2 seeds
  model = models.make_model("mlr")
  together = sweep.run_experiments(c, exp, specs, model, eval_rounds={2, 3})
  for s in specs:
    alone = sweep.run_experiments(c, exp, [s], model, eval_rounds={2, 3})[s.name]
    for a, b in zip(together[s.name], alone):
      assert a["round"] == b["round"] and a["num_stragglers"] == b["num_stragglers"]
      for k in ("test_accuracy", "test_loss", "train_loss", "dissimilarity"):
        np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=2e-5)
  # FedProx (mu > 0) and FedAvg really differ, so the comparison above could fail.
  names = [s.name for s in specs]
  assert together[names[0]][-1]["train_loss"] != together[names[2]][-1]["train_loss"]


def test_common_random_numbers_across_algorithms():
  data = make_federated_data([5, 9, 14, 30, 8, 11, 40, 3])
  spec = server.RoundSpec(clients_per_round=5, local_epochs=4, batch_size=4,
                          max_client_size=40, num_lanes=1)
  for seed in range(5):
    key = jax.random.fold_in(jax.random.key(seed), 7)
    plans = [server.plan_round(key, data, server.HParams.create(0.03, mu, 0.6, drop, 5), spec)
             for mu, drop in ((0.0, True), (0.0, False), (1.0, False))]
    for p in plans[1:]:
      np.testing.assert_array_equal(p.ids, plans[0].ids)
      np.testing.assert_array_equal(p.is_straggler, plans[0].is_straggler)
      np.testing.assert_array_equal(jax.random.key_data(p.keys), jax.random.key_data(plans[0].keys))
    np.testing.assert_array_equal(plans[1].epochs, plans[2].epochs)  # same straggler epochs
    kept = ~np.asarray(plans[0].is_straggler)
    np.testing.assert_array_equal(np.asarray(plans[0].epochs)[kept], np.asarray(plans[1].epochs)[kept])


def test_dissimilarity_equals_direct_per_client_computation():
  data = make_federated_data([3, 17, 8, 40])
  model = models.LogisticRegression()
  params = models.init_params(model, jax.random.key(0))
  grads = []
  for o, n in zip(np.asarray(data.offsets), np.asarray(data.sizes)):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
        model.apply(p, data.x[o:o + n]), data.y[o:o + n]).mean()
    grads.append(np.concatenate([np.ravel(g) for g in jax.tree_util.tree_leaves(jax.grad(loss)(params))]))
  grads = np.stack(grads).astype(np.float64)
  weights = np.asarray(data.sizes) / np.asarray(data.sizes).sum()
  g = weights @ grads
  expected = np.mean(np.sum((grads - g) ** 2, axis=1))
  got = metrics.dissimilarity(model.apply, params, data, chunk=5)
  np.testing.assert_allclose(float(got), expected, rtol=1e-4)


def test_sweep_writes_results_table_and_figure(tmp_path):
  c = _tiny_config(eval_every=2)
  sweep.run_sweep(c, str(tmp_path), mnist=_tiny_mnist())
  for name in ("results.csv", "summary.md", "figure1.png", "summary.json", "config.json",
               "partition_stats.json"):
    assert (tmp_path / name).exists(), name
  rows = plots.read_results_csv(str(tmp_path / "results.csv"))
  assert len(rows) == 8 * 2 and {r["round"] for r in rows} == {2, 3}
  table = (tmp_path / "summary.md").read_text()
  assert table.count("\n") == 2 + 4 and "FedProx (mu>0)" in table and "±" in table
  os.remove(tmp_path / "figure1.png")
  result = subprocess.run([sys.executable, "-m", "fedprox_jax.plots", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert (tmp_path / "figure1.png").exists()
  with pytest.raises(simulate.ConfigError, match="already holds a sweep"):
    sweep.run_sweep(c, str(tmp_path), mnist=_tiny_mnist())


def test_plot_entry_point_explains_its_usage(tmp_path):
  result = subprocess.run([sys.executable, "-m", "fedprox_jax.plots", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 2 and "usage" in result.stderr


@pytest.mark.parametrize("field,value,match", [
    ("algorithms", "fedavg,scaffold", "'scaffold' is not one of"),
    ("stragglers", "0,1.5", "1.5 is not between 0 and 1"),
    ("stragglers", "0,half", "not a comma-separated list"),
    ("seeds", 0, "must be an integer >= 1"),
    ("algorithms", "", "is empty"),
])
def test_bad_sweep_grids(field, value, match):
  c = _tiny_config()
  c.sweep[field] = value
  with pytest.raises(simulate.ConfigError, match=match):
    sweep.experiment_grid(c)


def test_paper_protocol_splits_each_client_90_10():
  c = _tiny_config(protocol="paper")
  exp = simulate.prepare_experiment(c, _tiny_mnist(num_train=1800, num_test=200))
  stats = exp.stats
  assert stats["examples"] == stats["train_examples"] + stats["test_examples"]
  assert 0.85 < stats["train_examples"] / stats["examples"] < 0.95
  # Per-pixel standardisation over the pooled data.
  assert float(jnp.abs(jnp.concatenate([exp.train.x, exp.test_x]).mean())) < 0.05
