"""Each protocol matches its source row by row: the seed's Flower baseline and the authors' code."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mnist as mnist_config
from fedprox_jax.core import client, models, rounds
from fedprox_jax import errors
from fedprox_jax.run import experiment, protocols
from fedprox_jax.run import config as config_lib
from fedprox_jax.data import partition
from helpers import tiny_mnist as _tiny_mnist

FLOWER = dict(client_val_fraction=0.1, weight_decay=0.001, weighting="batches",
              straggler_rule="bernoulli", sampling="uniform", local_epochs=10, mlr_init="torch")
AUTHORS = dict(client_val_fraction=0.0, weight_decay=0.0, weighting="samples",
               straggler_rule="exact", sampling="uniform", local_epochs=20, mlr_init="glorot")


@pytest.mark.parametrize("variant", ["fedprox", "fedavg", "fedprox_mu0", "figure1"])
def test_default_variants_are_the_seed_protocol(variant):
  c = config_lib.resolve(mnist_config.get_config(variant))
  assert c.protocol == "seed"
  assert {k: c[k] for k in FLOWER} == FLOWER
  assert (c.lr, c.batch_size, c.clients_per_round, c.num_clients) == (0.03, 10, 10, 1000)


def test_paper_protocol_has_the_authors_values():
  c = config_lib.resolve(mnist_config.get_config("figure1_paper"))
  assert c.protocol == "paper" and {k: c[k] for k in AUTHORS} == AUTHORS
  c = mnist_config.get_config("fedprox")
  c.protocol = "paper"  # switching the protocol switches every unset field with it
  assert {k: v for k, v in config_lib.resolve(c).items() if k in AUTHORS} == AUTHORS


def test_every_protocol_field_can_be_set_on_its_own():
  assert set(protocols.PROTOCOL_FIELDS) == set(FLOWER)
  c = mnist_config.get_config("fedprox")
  c.weight_decay, c.weighting, c.mlr_init = 0.0, "samples", "glorot"
  r = config_lib.resolve(c)
  assert (r.weight_decay, r.weighting, r.mlr_init) == (0.0, "samples", "glorot")
  assert r.straggler_rule == "bernoulli" and r.client_val_fraction == 0.1  # the rest: seed


@pytest.mark.parametrize("field,value,match", [
    ("weight_decay", -0.1, "must be a finite number >= 0"),
    ("weight_decay", float("nan"), "must be a finite number >= 0"),
    ("client_val_fraction", 1.0, r"must be in \[0, 1\)"),
    ("mlr_init", "he", "use one of"),
    ("sampling", "stratified", "use one of"),
    ("straggler_work", "seconds", "use one of"),
    ("straggler_work", "iterations", "use it with straggler_rule='exact'"),  # seed: bernoulli
])
def test_bad_protocol_fields_are_named(field, value, match):
  c = mnist_config.get_config("fedprox")
  c[field] = value
  with pytest.raises(errors.ConfigError, match=f"config.{field}=.*{match}"):
    config_lib.resolve(c)


def test_paper_protocol_refuses_a_validation_split():
  c = mnist_config.get_config("figure1_paper")
  c.client_val_fraction = 0.1
  with pytest.raises(errors.ConfigError, match="applies to protocol='seed' only"):
    config_lib.resolve(c)


def test_weight_decay_is_torch_sgd_weight_decay():
  # torch.optim.SGD(weight_decay=wd) adds wd * w to the gradient: one step equals plain SGD on
  # CE + mu/2 ||w - w_global||^2 + wd/2 ||w||^2, differentiated by autodiff.
  model = models.LogisticRegression()
  anchor = models.init_params(model, jax.random.key(0))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(6, 28, 28, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, 6), jnp.int32)
  w = jax.tree_util.tree_map(lambda a: a + 0.01, anchor)  # away from the anchor
  lr, mu, wd = 0.1, 0.7, 0.05
  hp = client.LocalHParams(lr=jnp.float32(lr), mu=jnp.float32(mu), weight_decay=jnp.float32(wd))
  tx = client.local_optimizer(hp)
  state = tx.init(anchor)
  stepped, _, _ = client.sgd_step(model.apply, tx, w, state, x, y, jnp.ones(6, bool))

  def objective(p):
    sq = lambda t: sum(jnp.sum(v ** 2) for v in jax.tree_util.tree_leaves(t))
    diff = jax.tree_util.tree_map(lambda a, b: a - b, p, anchor)
    return (client.masked_cross_entropy(model.apply(p, x), y, jnp.ones(6, bool))
            + mu / 2 * sq(diff) + wd / 2 * sq(p))
  grads = jax.grad(objective)(w)
  expected = jax.tree_util.tree_map(lambda p, g: p - lr * g, w, grads)
  for a, b in zip(jax.tree_util.tree_leaves(stepped), jax.tree_util.tree_leaves(expected),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # And weight decay really acts (the comparison above could fail).
  plain = client.local_optimizer(client.LocalHParams(jnp.float32(lr), jnp.float32(mu)))
  stepped0, _, _ = client.sgd_step(model.apply, plain, w, plain.init(anchor), x, y,
                                   jnp.ones(6, bool))
  assert not np.allclose(jax.tree_util.tree_leaves(stepped)[0],
                         jax.tree_util.tree_leaves(stepped0)[0])


@pytest.mark.parametrize("n", [10, 11, 19, 20, 29, 99, 100, 3746])
def test_hold_out_keeps_n_minus_int_n_over_10(n):
  split = partition.Partition(order=np.arange(1000, 1000 + n), offsets=np.array([0], np.int32),
                              sizes=np.array([n], np.int32))
  kept = partition.hold_out(split, 0.1, seed=42)
  assert int(kept.sizes[0]) == n - int(n / (1 / 0.1))  # Flower: len_val = int(n / (1 / 0.1))
  assert len(set(kept.order.tolist())) == kept.sizes[0]
  assert set(kept.order.tolist()) <= set(range(1000, 1000 + n))


def test_seed_protocol_trains_on_90_percent_and_weighs_by_batches():
  c = mnist_config.get_config("fedprox")
  c.update(dict(num_clients=20, clients_per_round=5, train_subset=1500, model="mlr"))
  c = config_lib.resolve(c)
  exp = experiment.prepare(c, _tiny_mnist(num_train=1500, num_test=100), lanes_over_devices=False).data
  full = partition.split(c, _tiny_mnist(num_train=1500, num_test=100).train_labels[:1500])
  expected_train = full.sizes - (full.sizes / 10).astype(int)
  np.testing.assert_array_equal(np.asarray(exp.train.sizes), expected_train)
  assert exp.stats["held_out_examples"] == int(full.sizes.sum() - expected_train.sum()) > 0
  spec = experiment.round_spec(c, exp.stats["max_train"])
  hp = rounds.HParams.create(c.lr, c.mu, 0.0, False, c.clients_per_round, c.weight_decay)
  plan = rounds.plan_round(jax.random.key(3), exp.train, hp, spec)
  batches = np.ceil(np.asarray(plan.sizes) / c.batch_size)
  np.testing.assert_allclose(plan.weights, batches / batches.sum(), rtol=1e-6)


def test_glorot_init_of_the_authors_mlr():
  params = models.init_params(models.make_model("mlr", mlr_init="glorot"), jax.random.key(0))
  kernel, bias = params["params"]["Dense_0"]["kernel"], params["params"]["Dense_0"]["bias"]
  limit = np.sqrt(6 / (784 + 10))
  assert np.all(np.asarray(bias) == 0)
  assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.95 * limit
  torch_params = models.init_params(models.make_model("mlr"), jax.random.key(0))
  assert np.abs(torch_params["params"]["Dense_0"]["bias"]).max() > 0  # PyTorch's: not zero


def test_weighted_sampling_with_replacement_can_repeat_a_client():
  sizes = jnp.array([1000, 1, 1, 1])
  picks = [np.asarray(rounds.sample_clients(jax.random.key(s), sizes, 3, "weighted_replacement"))
           for s in range(5)]
  assert any(len(set(p.tolist())) < 3 for p in picks)
  assert all(len(set(np.asarray(rounds.sample_clients(jax.random.key(s), sizes, 3,
                                                      "weighted")).tolist())) == 3
             for s in range(5))
