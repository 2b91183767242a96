"""The vectorized round against the looped reference, and the server's rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedprox_jax.core import models, reference, rounds
from fedprox_jax.core.lanes import pack_lanes
from helpers import HETERO_SIZES, tree_max_abs_diff

K = len(HETERO_SIZES)


def _spec(num_lanes=2, **overrides):
  fields = dict(clients_per_round=K, local_epochs=3, batch_size=4,
                max_client_size=max(HETERO_SIZES), num_lanes=num_lanes,
                sampling="uniform", straggler_rule="exact", weighting="samples")
  return rounds.RoundSpec(**{**fields, **overrides})


@pytest.mark.parametrize("model_name,num_lanes,drop,work", [
    ("mlr", 1, False, "epochs"), ("mlr", 2, False, "iterations"), ("mlr", K, True, "epochs"),
    ("cnn", 2, False, "epochs"), ("cnn", K, True, "epochs"),
])
def test_vmapped_round_equals_looped_round(hetero_data, model_name, num_lanes, drop, work):
  model = models.make_model(model_name)
  params = models.init_params(model, jax.random.key(0))
  spec = _spec(num_lanes, straggler_work=work)
  hp = rounds.HParams.create(lr=0.05, mu=1.0, stragglers_fraction=0.5, drop_stragglers=drop,
                             clients_per_round=K)
  key = jax.random.key(3)
  vmapped, m_vec = rounds.make_round_fn(model.apply, spec)(params, hetero_data, hp, key)
  looped, m_loop = reference.looped_round(model.apply, spec, params, hetero_data, hp, key)
  assert int(m_vec.num_stragglers) == 3  # 5 - round(2.5) = 5 - 2 (round half to even)
  assert m_vec.inexactness is None  # off by default: the round computes none of it
  assert tree_max_abs_diff(vmapped, params) > 1e-3  # the round did train
  assert tree_max_abs_diff(vmapped, looped) < 2e-5
  np.testing.assert_allclose(m_vec.train_loss, m_loop.train_loss, rtol=1e-5)
  assert int(m_vec.lanes.useful_steps) == int(m_loop.lanes.useful_steps)


def test_fedavg_drop_equals_aggregating_only_non_stragglers(hetero_data):
  spec = _spec(2)
  hp = rounds.HParams.create(lr=0.05, mu=0.0, stragglers_fraction=0.5, drop_stragglers=True,
                             clients_per_round=K)
  model = models.LogisticRegression()
  params = models.init_params(model, jax.random.key(0))
  key = jax.random.key(11)
  new_params, metrics = rounds.make_round_fn(model.apply, spec)(params, hetero_data, hp, key)
  plan = rounds.plan_round(key, hetero_data, hp, spec)
  keep = ~np.asarray(plan.is_straggler)
  assert keep.sum() == 2 and int(metrics.num_aggregated) == 2
  trained, sizes = [], []
  for i in np.flatnonzero(keep):
    p, _ = reference.client_update(model.apply, params, hetero_data, plan.offsets[i], plan.sizes[i],
                                spec.local_epochs, plan.keys[i], hp.local,
                                batch_size=spec.batch_size, max_size=spec.max_client_size,
                                max_epochs=spec.local_epochs)
    trained.append(p)
    sizes.append(float(plan.sizes[i]))
  expected = reference.weighted_average(trained, jnp.array(sizes) / sum(sizes))
  assert tree_max_abs_diff(new_params, expected) < 2e-5
  # Dropped stragglers do no work at all.
  assert np.all(np.asarray(plan.epochs)[~keep] == 0)


def test_fedavg_is_fedprox_with_mu_zero_and_stragglers_dropped(hetero_data):
  """With no stragglers, FedProx(mu=0) and FedAvg are the same program and the same numbers."""
  model = models.LogisticRegression()
  params = models.init_params(model, jax.random.key(0))
  round_fn = rounds.make_round_fn(model.apply, _spec(2))
  key = jax.random.key(4)
  fedavg, _ = round_fn(params, hetero_data, rounds.HParams.create(0.05, 0.0, 0.0, True, K), key)
  prox0, _ = round_fn(params, hetero_data, rounds.HParams.create(0.05, 0.0, 0.0, False, K), key)
  for a, b in zip(jax.tree_util.tree_leaves(fedavg), jax.tree_util.tree_leaves(prox0)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("weighting", rounds.WEIGHTINGS)
def test_aggregation_weights(weighting):
  sizes = jnp.array([1, 7, 10, 23, 95])
  kept = jnp.array([True, False, True, True, False])
  w, all_dropped = rounds.aggregation_weights(sizes, kept, weighting, batch_size=4)
  assert not bool(all_dropped)
  np.testing.assert_allclose(float(w.sum()), 1.0, rtol=1e-6)
  assert np.all(np.asarray(w)[~np.asarray(kept)] == 0)
  per_client = {"samples": np.array([1, 7, 10, 23, 95]),
                "batches": np.array([1, 2, 3, 6, 24]),  # ceil(n / 4): Flower's len(trainloader)
                "uniform": np.ones(5)}[weighting]
  raw = np.where(kept, per_client, 0)
  np.testing.assert_allclose(w, raw / raw.sum(), rtol=1e-6)
  w, all_dropped = rounds.aggregation_weights(sizes, jnp.zeros(5, bool), weighting, 4)
  assert bool(all_dropped) and float(w.sum()) == 0.0


def test_all_stragglers_dropped_keeps_global_model_and_says_so(hetero_data):
  model = models.LogisticRegression()
  params = models.init_params(model, jax.random.key(0))
  hp = rounds.HParams.create(lr=0.05, mu=0.0, stragglers_fraction=1.0, drop_stragglers=True,
                             clients_per_round=K)
  new_params, metrics = rounds.make_round_fn(model.apply, _spec(2))(
      params, hetero_data, hp, jax.random.key(0))
  assert bool(metrics.all_dropped) and int(metrics.num_aggregated) == 0
  assert int(metrics.lanes.useful_steps) == 0
  for a, b in zip(jax.tree_util.tree_leaves(new_params), jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(a, b)


def test_round_compiles_once_across_rounds(hetero_data):
  model = models.LogisticRegression()
  spec = _spec(2, clients_per_round=3)
  traces = []

  def counting_round(params, data, hp, key):
    traces.append(1)  # runs only while tracing
    return rounds.run_round(model.apply, spec, params, data, hp, key)

  round_fn = jax.jit(counting_round)
  params = models.init_params(model, jax.random.key(0))
  seen = set()
  for t in range(4):
    hp = rounds.HParams.create(0.05, 0.1 * t, 0.5, t % 2 == 0, 3)  # hyper-parameters change too
    params, metrics = round_fn(params, hetero_data, hp, jax.random.fold_in(jax.random.key(1), t))
    seen.add(tuple(np.asarray(metrics.client_ids)))
  assert len(seen) > 1, "rounds sampled the same clients; the test would prove nothing"
  assert len(traces) == 1


def test_uniform_sampling_is_without_replacement():
  sizes = jnp.arange(1, 51)
  for seed in range(20):
    ids = np.asarray(rounds.sample_clients(jax.random.key(seed), sizes, 10, "uniform"))
    assert len(set(ids)) == 10 and ids.min() >= 0 and ids.max() < 50
    ids = np.asarray(rounds.sample_clients(jax.random.key(seed), sizes, 10, "weighted"))
    assert len(set(ids)) == 10


def test_weighted_sampling_prefers_large_clients():
  sizes = jnp.array([1] * 90 + [1000] * 10)
  picks = np.concatenate([np.asarray(rounds.sample_clients(jax.random.key(s), sizes, 5, "weighted"))
                          for s in range(40)])
  assert np.mean(picks >= 90) > 0.8


def _hp(fraction, k):
  return rounds.HParams.create(0.05, 1.0, fraction, False, k)


@pytest.mark.parametrize("fraction,k,expected", [(0.9, 10, 9), (0.5, 10, 5), (0.0, 10, 0),
                                                 (1.0, 10, 10), (0.5, 5, 3), (0.3, 7, 2),
                                                 (0.85, 10, 8), (0.25, 10, 2), (0.15, 10, 2)])
def test_exact_straggler_count_is_the_authors_rule(fraction, k, expected):
  # The authors' code: round(K * (1 - drop)) clients stay active, in Python floats; 0.85 gives
  # 10 * 0.15000000000000002 = 1.5000000000000002 -> 2 active, 8 stragglers (float32: 9).
  assert expected == k - round(k * (1 - fraction)) == rounds.exact_straggler_count(k, fraction)
  ids = jnp.arange(k)
  for seed in range(5):
    s = rounds.draw_stragglers(jax.random.key(seed), ids, 50, _hp(fraction, k), "exact", 10)
    assert int(s.sum()) == expected


def test_seed_straggler_schedule_is_binomial_per_round_and_per_client():
  k, fraction, num_clients = 10, 0.3, 40
  ids = jnp.arange(k) * 3
  counts = np.array([int(rounds.draw_stragglers(jax.random.key(t), ids, num_clients,
                                                _hp(fraction, k), "bernoulli", 10).sum())
                     for t in range(2000)])
  # Binomial(10, 0.3): mean 3, variance 2.1 (the exact rule would give 3 every round).
  assert abs(counts.mean() - k * fraction) < 0.1
  assert abs(counts.var() - k * fraction * (1 - fraction)) < 0.25
  # A schedule over (round, client): a client's coin does not depend on who else is sampled.
  key = jax.random.key(11)
  a = rounds.draw_stragglers(key, jnp.array([1, 2, 3]), num_clients, _hp(0.5, 3), "bernoulli", 5)
  b = rounds.draw_stragglers(key, jnp.array([7, 2, 30]), num_clients, _hp(0.5, 3), "bernoulli", 5)
  assert bool(a[1]) == bool(b[1])


def test_seed_schedule_has_no_stragglers_with_one_epoch():
  ids = jnp.arange(10)
  for t in range(20):
    assert not bool(rounds.draw_stragglers(jax.random.key(t), ids, 10, _hp(0.9, 10),
                                           "bernoulli", 1).any())


@pytest.mark.parametrize("local_epochs", [1, 2, 10])
@pytest.mark.parametrize("rule", rounds.STRAGGLER_RULES)
def test_straggler_epochs_are_one_to_e_minus_one(hetero_data, local_epochs, rule):
  spec = _spec(2, local_epochs=local_epochs, straggler_rule=rule)
  hp = rounds.HParams.create(0.05, 1.0, 0.9, False, K)
  epochs_seen = set()
  for seed in range(30):
    plan = rounds.plan_round(jax.random.key(seed), hetero_data, hp, spec)
    straggler = np.asarray(plan.is_straggler)
    epochs = np.asarray(plan.epochs)
    assert np.all(epochs[~straggler] == local_epochs)
    epochs_seen |= set(epochs[straggler].tolist())
  if rule == "bernoulli" and local_epochs == 1:  # the seed: nobody straggles with E = 1
    assert epochs_seen == set()
    return
  allowed = set(range(1, local_epochs)) or {1}
  assert epochs_seen <= allowed and len(epochs_seen) == len(allowed)


@pytest.mark.parametrize("local_epochs", [1, 3])
def test_stragglers_by_iterations_run_one_to_int_en_over_b_plus_one_steps(hetero_data,
                                                                         local_epochs):
  """The authors' solve_iters draw, randint(1, int(E n / B) + 2), capped at the full work
  E ceil(n / B); the others run their full work; at E = 1 stragglers do run less."""
  spec = _spec(2, local_epochs=local_epochs, straggler_work="iterations")
  hp = rounds.HParams.create(0.05, 1.0, 0.6, False, K)
  b, sizes = spec.batch_size, np.asarray(hetero_data.sizes)
  fewer = 0
  for seed in range(30):
    plan = rounds.plan_round(jax.random.key(seed), hetero_data, hp, spec)
    straggler, steps = np.asarray(plan.is_straggler), np.asarray(plan.steps)
    n = sizes[np.asarray(plan.ids)]
    full = local_epochs * -(-n // b)
    assert np.all(steps[~straggler] == full[~straggler])
    assert np.all((steps[straggler] >= 1)
                  & (steps[straggler] <= np.minimum(local_epochs * n // b + 1, full)[straggler]))
    # The epochs begun cover the steps (the data orders they need are drawn).
    assert np.all(np.asarray(plan.epochs) == -(-steps // -(-n // b)))
    fewer += int(np.sum(steps[straggler] < full[straggler]))
  assert fewer > 10


def test_pack_lanes_places_every_working_client_once():
  steps = jnp.array([50, 3, 0, 20, 20, 7, 1, 0, 44])
  queue, load = pack_lanes(steps, 3)
  q = np.asarray(queue)
  placed = q[q >= 0]
  assert sorted(placed.tolist()) == [0, 1, 3, 4, 5, 6, 8]
  for lane in range(3):
    assert int(load[lane]) == int(np.asarray(steps)[q[lane][q[lane] >= 0]].sum())
  # Longest first onto the least loaded lane: the biggest client is alone on its lane.
  assert int(load.max()) == 50
  queue, load = pack_lanes(steps, 9)
  assert int(load.max()) == 50 and np.all((np.asarray(queue) >= 0).sum(axis=1) <= 1)


@pytest.mark.parametrize("field,value,match", [
    ("sampling", "random", "sampling='random' is not one of"),
    ("straggler_rule", "coin", "straggler_rule='coin' is not one of"),
    ("weighting", "equal", "weighting='equal' is not one of"),
    ("num_lanes", 0, "num_lanes must be >= 1"),
    ("batch_size", 0, "batch_size must be >= 1"),
])
def test_round_spec_rejects_bad_values(field, value, match):
  with pytest.raises(ValueError, match=match):
    _spec(**{field: value})


def test_oversized_batch_and_lanes_are_capped_without_changing_the_round(hetero_data, caplog):
  """batch_size above the largest client and more lanes than clients only add masked work:
  round_spec caps both (with a warning), and the capped round equals the uncapped one."""
  from fedprox_jax.run import experiment
  from fedprox_jax.run import config as config_lib
  from helpers import mnist_config
  c = config_lib.resolve(mnist_config.get_config("fedprox"))
  c.update(dict(num_clients=5, clients_per_round=K, num_lanes=50, batch_size=1000, local_epochs=3,
                sampling="uniform", weighting="samples", straggler_rule="exact"))
  spec = experiment.round_spec(c, max(HETERO_SIZES))
  assert (spec.num_lanes, spec.batch_size) == (K, max(HETERO_SIZES))
  assert "num_lanes=50" in caplog.text and "batch_size=1000" in caplog.text
  model = models.make_model("mlr")
  params = models.init_params(model, jax.random.key(0))
  hp = rounds.HParams.create(0.05, 1.0, 0.5, False, K)
  key = jax.random.key(3)
  capped, _ = rounds.make_round_fn(model.apply, spec)(params, hetero_data, hp, key)
  uncapped_spec = _spec(num_lanes=K, batch_size=1000, max_client_size=max(HETERO_SIZES))
  uncapped, _ = rounds.make_round_fn(model.apply, uncapped_spec)(params, hetero_data, hp, key)
  assert tree_max_abs_diff(capped, params) > 1e-3
  assert tree_max_abs_diff(capped, uncapped) < 1e-6


def test_production_code_never_imports_the_looped_reference():
  import glob
  import os
  from helpers import ROOT
  sources = (glob.glob(os.path.join(ROOT, "fedprox_jax", "**", "*.py"), recursive=True)
             + [os.path.join(ROOT, "launch.py")])
  importers = [p for p in sources if not p.endswith("reference.py")
               and ("import reference" in open(p).read() or "fedprox_jax.core.reference" in open(p).read()
                    or ", reference" in open(p).read())]
  assert len(sources) > 10 and importers == []


def _softmax_regression_gradient(kernel, bias, x, y):
  """float64 gradient of the mean cross-entropy of a softmax regression."""
  logits = x @ kernel + bias
  p = np.exp(logits - logits.max(axis=1, keepdims=True))
  p /= p.sum(axis=1, keepdims=True)
  p[np.arange(len(y)), y] -= 1
  return x.T @ p / len(y), p.mean(axis=0)


def test_each_clients_gamma_inexactness_against_a_float64_reference(hetero_data):
  """gamma_k = ||grad h_k(w_k)|| / ||grad h_k(w_t)||, h_k = F_k + wd/2 ||w||^2 + mu/2 ||w - w_t||^2,
  at each client's own solution (the looped reference's), in float64: 4 clients packed into 2
  lanes (so clients finish mid-loop) and a dropped straggler (no step, no gamma)."""
  model = models.make_model("mlr")
  params = models.init_params(model, jax.random.key(0))
  num_lanes = 2
  spec = _spec(num_lanes, inexactness=True)
  mu, wd = 0.5, 0.01
  hp = rounds.HParams.create(lr=0.05, mu=mu, stragglers_fraction=0.2, drop_stragglers=True,
                             clients_per_round=K, weight_decay=wd)
  key = jax.random.key(3)
  _, m = rounds.make_round_fn(model.apply, spec)(params, hetero_data, hp, key)
  plan = jax.jit(rounds.plan_round, static_argnums=3)(key, hetero_data, hp, spec)
  x = np.asarray(hetero_data.x, np.float64).reshape(len(hetero_data.y), -1)
  y = np.asarray(hetero_data.y)
  w_t = {k: np.asarray(v, np.float64) for k, v in params["params"]["Dense_0"].items()}

  def grad_h_norm(w, o, n):
    gk, gb = _softmax_regression_gradient(w["kernel"], w["bias"], x[o:o + n], y[o:o + n])
    gk += wd * w["kernel"] + mu * (w["kernel"] - w_t["kernel"])
    gb += wd * w["bias"] + mu * (w["bias"] - w_t["bias"])
    return np.sqrt(np.sum(gk ** 2) + np.sum(gb ** 2))

  client_update = jax.jit(reference.client_update, static_argnums=0,
                          static_argnames=("batch_size", "max_size", "max_epochs"))
  expected = []
  for i in range(K):
    o, n, e = int(plan.offsets[i]), int(plan.sizes[i]), int(plan.epochs[i])
    if e == 0:
      expected.append(np.nan)
      continue
    w_k, _ = client_update(model.apply, params, hetero_data, o, n, e, plan.keys[i], hp.local,
                           batch_size=spec.batch_size, max_size=spec.max_client_size,
                           max_epochs=spec.local_epochs)
    w_k = {k: np.asarray(v, np.float64) for k, v in w_k["params"]["Dense_0"].items()}
    expected.append(grad_h_norm(w_k, o, n) / grad_h_norm(w_t, o, n))
  expected = np.array(expected)
  assert np.isnan(expected).sum() == 1  # the dropped straggler ran no step
  assert np.nanmin(expected) > 0.01 and np.nanmax(expected) < 1  # training reduced grad h
  np.testing.assert_allclose(np.asarray(m.inexactness), expected, rtol=2e-3)
