"""The client update: proximal math, data order, partial batches, masking."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedprox_jax.core import client, models, reference
from fedprox_jax.core.lanes import ClientPlan, run_lanes
from helpers import make_federated_data, tree_max_abs_diff

MLR = models.LogisticRegression()


def _params(seed=0):
  return models.init_params(MLR, jax.random.key(seed))


def test_proximal_gradient_equals_autodiff_of_explicit_loss():
  data = make_federated_data([12])
  x, y = data.x[:12], data.y[:12]
  w_global = _params(0)
  # A point away from the anchor, so the proximal term is not zero.
  w = jax.tree_util.tree_map(lambda a: a + 0.1, _params(1))
  mu = 0.7

  def explicit_loss(p):
    ce = optax.softmax_cross_entropy_with_integer_labels(MLR.apply(p, x), y).mean()
    sq = sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree_util.tree_leaves(p),
                                                    jax.tree_util.tree_leaves(w_global)))
    return ce + mu / 2 * sq

  ce_grad = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
      MLR.apply(p, x), y).mean())(w)
  prox = client.proximal(mu)
  updates, _ = prox.update(ce_grad, prox.init(w_global), w)
  assert tree_max_abs_diff(updates, jax.grad(explicit_loss)(w)) < 1e-6
  # The squared norm's gradient is mu * (w - w_g) exactly: not normalised by ||w - w_g||.
  zero = jax.tree_util.tree_map(jnp.zeros_like, w)
  prox_only, _ = prox.update(zero, prox.init(w_global), w)
  expected = jax.tree_util.tree_map(lambda a, b: mu * (a - b), w, w_global)
  assert tree_max_abs_diff(prox_only, expected) < 1e-7


def test_proximal_requires_params():
  prox = client.proximal(1.0)
  with pytest.raises(ValueError, match="needs the current params"):
    prox.update(_params(), prox.init(_params()))


def test_mu_zero_is_plain_sgd_exactly():
  grads = jax.tree_util.tree_map(lambda a: jnp.cos(a) * 3.0, _params(2))
  w_global, w = _params(0), _params(1)
  tx = client.local_optimizer(client.LocalHParams(lr=jnp.float32(0.03), mu=jnp.float32(0.0)))
  ours, _ = tx.update(grads, tx.init(w_global), w)
  plain, _ = optax.sgd(0.03).update(grads, optax.sgd(0.03).init(w), w)
  for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(plain)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("size,max_size", [(1, 1), (7, 95), (16, 95), (17, 95), (23, 23), (64, 300), (95, 95)])
def test_each_epoch_visits_every_example_once(size, max_size):
  perms = client.epoch_permutations(jax.random.key(3), size, max_size, num_epochs=4)
  for row in np.asarray(perms):
    assert sorted(row[:size]) == list(range(size))
  if size > 2:  # fresh order each epoch
    assert len({tuple(r[:size]) for r in np.asarray(perms)}) > 1


def test_minibatches_cover_epoch_with_partial_last_batch():
  data = make_federated_data([5, 10])  # client 1: offset 5, size 10, B = 4 -> batches 4, 4, 2
  perms = client.epoch_permutations(jax.random.key(0), 10, 10, 2)
  seen = []
  for step in range(3):
    x, y, valid = client.minibatch(data, 5, 10, perms, step, 4)
    assert int(valid.sum()) == (2 if step == 2 else 4)
    idx = [int(np.argmin(np.abs(np.asarray(data.x) - np.asarray(xi)).sum(axis=(1, 2, 3))))
           for xi in x[np.asarray(valid)]]
    seen += idx
  assert sorted(seen) == list(range(5, 15))


def test_partial_batch_loss_is_mean_over_real_examples():
  logits = jax.random.normal(jax.random.key(0), (4, 10))
  labels = jnp.array([1, 2, 3, 4])
  valid = jnp.array([True, True, False, False])
  expected = optax.softmax_cross_entropy_with_integer_labels(logits[:2], labels[:2]).mean()
  np.testing.assert_allclose(client.masked_cross_entropy(logits, labels, valid), expected, rtol=1e-6)


def _explicit_sgd(data, offset, size, key, steps, hp, batch_size, max_size, max_epochs, w0):
  """A plain Python loop of SGD steps on explicitly gathered batches (no masking, no lax loop)."""
  perms = client.epoch_permutations(key, size, max_size, max_epochs)
  tx = client.local_optimizer(hp)
  params, opt_state = w0, tx.init(w0)
  for step in range(steps):
    x, y, valid = client.minibatch(data, offset, size, perms, step, batch_size)
    params, opt_state, _ = client.sgd_step(MLR.apply, tx, params, opt_state, x[valid], y[valid],
                                           jnp.ones(int(valid.sum()), bool))
  return params


def test_client_update_runs_epochs_times_ceil_n_over_b_steps():
  data = make_federated_data([3, 23])
  hp = client.LocalHParams(lr=jnp.float32(0.05), mu=jnp.float32(0.5))
  w0, key = _params(), jax.random.key(7)
  params, metrics = reference.client_update(MLR.apply, w0, data, 3, 23, 2, key, hp,
                                            batch_size=4, max_size=23, max_epochs=3)
  assert int(metrics.num_steps) == 2 * 6
  explicit = _explicit_sgd(data, 3, 23, key, 12, hp, 4, 23, 3, w0)
  assert tree_max_abs_diff(params, explicit) < 1e-5


def test_k_active_steps_inside_a_longer_masked_loop_equal_exactly_k_steps():
  data = make_federated_data([9, 40])
  hp = client.LocalHParams(lr=jnp.float32(0.05), mu=jnp.float32(1.0))
  w0 = _params()
  keys = jax.random.split(jax.random.key(5), 2)
  # Client 0: 1 epoch of 9 examples at B = 4 -> 3 steps; client 1: 3 epochs -> 30 steps.
  # Two lanes: the loop runs 30 steps and masks client 0's lane for 27 of them.
  plan = ClientPlan(ids=jnp.array([0, 1]), offsets=data.offsets, sizes=data.sizes,
                    epochs=jnp.array([1, 3]), steps=jnp.array([3, 30]),
                    weights=jnp.array([1.0, 0.0]),
                    is_straggler=jnp.array([True, False]), keys=keys)
  aggregate, _, stats, _, _ = run_lanes(MLR.apply, w0, data, plan, hp, batch_size=4, max_size=40,
                                  max_epochs=3, num_lanes=2)
  assert int(stats.loop_steps) == 30
  exactly_k, metrics = reference.client_update(MLR.apply, w0, data, 0, 9, 1, keys[0], hp,
                                               batch_size=4, max_size=40, max_epochs=3)
  assert int(metrics.num_steps) == 3
  assert tree_max_abs_diff(aggregate, exactly_k) < 1e-6
  # ... and it moved: the masked lane did real work for its 3 steps.
  assert tree_max_abs_diff(aggregate, w0) > 1e-3
  explicit = _explicit_sgd(data, 0, 9, keys[0], 3, hp, 4, 40, 3, w0)
  assert tree_max_abs_diff(aggregate, explicit) < 1e-5


@pytest.mark.parametrize("width,size", [(16, 16), (16, 5), (1024, 700), (4096, 4096), (5000, 4321)])
def test_packed_key_sort_gives_the_argsort_of_uniform_keys_exactly(width, size):
  """The data orders are those of a stable argsort of uniform floats (slots past the client's
  size last), element for element: the fast sort changed no result."""
  for seed in range(3):
    k = jax.random.key(seed)
    floats = jnp.where(jnp.arange(width) < size, jax.random.uniform(k, (width,)), 2.0)
    expected = jnp.argsort(floats, stable=True)
    got = client._argsort_random_keys(jax.random.bits(k, (width,), jnp.uint32),
                                      jnp.arange(width) < size)
    np.testing.assert_array_equal(got, expected)
    assert sorted(np.asarray(got[:size]).tolist()) == list(range(size))
