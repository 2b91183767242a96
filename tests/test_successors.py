"""SCAFFOLD, FedNova, FedOpt, FedDyn and momentum clients: each vmapped round equals the looped
reference written from its paper's pseudo-code (core/reference.py), over two rounds with
stragglers' partial work and unequal data, and each algorithm's own claims."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedprox_jax.core import (algorithms, feddyn, fednova, fedopt, hooks, models, reference,
                              rounds, scaffold)
from helpers import HETERO_SIZES, make_federated_data, tree_max_abs_diff

SIZES = HETERO_SIZES + (4, 31)  # 7 clients, 4 sampled a round: some c_i stay untouched
SPEC = rounds.RoundSpec(clients_per_round=4, local_epochs=3, batch_size=4,
                        max_client_size=max(SIZES), num_lanes=2, sampling="uniform",
                        straggler_rule="exact", weighting="samples")
MODEL = models.LogisticRegression()


@pytest.fixture(scope="module")
def data():
  return make_federated_data(SIZES, seed=3)


# Hyper-parameters of the algorithms' own for these tests (else their defaults): FedDyn's
# alpha 0.1, one of the paper's, large enough that two rounds move its state visibly.
OWN = {"feddyn": feddyn.HParams(alpha=0.1)}


def _setup(name, momentum=0.0, stragglers=0.5, mu=0.0, server_lr=None):
  a = algorithms.get(name)
  spec = dataclasses.replace(SPEC, **algorithms.round_statics(a, momentum))
  hp = rounds.HParams.create(
      lr=0.05, mu=mu, stragglers_fraction=stragglers, drop_stragglers=a.drop_stragglers,
      clients_per_round=spec.clients_per_round, momentum=momentum,
      server=fedopt.ServerHParams(lr=a.server_lr if server_lr is None else server_lr),
      algorithm=OWN.get(name, a.hparams))
  return spec, hp


def _two_rounds(spec, hp, data, step):
  params = models.init_params(MODEL, jax.random.key(0))
  state = rounds.init_server_state(spec, params, len(SIZES), hp)
  states = []
  for t in (1, 2):
    state, m = step(MODEL.apply, spec, state, data, hp, jax.random.key(t))
    states.append((state, m))
  return params, states


_round_step = jax.jit(rounds.round_step, static_argnums=(0, 1))


# The oracle's cases for the algorithms with hooks of their own: every such registered
# algorithm must have one (test_every_registered_algorithm_has_an_oracle_case); the
# averaging ones are all covered by tests/test_algorithms.py, which iterates the registry.
ORACLE_CASES = [
    ("scaffold", 0.0, 0.0), ("scaffold", 0.9, 0.0), ("fednova", 0.0, 0.0),
    ("fednova", 0.9, 0.0), ("fednova", 0.0, 0.5), ("fednova", 0.5, 0.5), ("fedavgm", 0.0, 0.0),
    ("fedadam", 0.0, 0.0), ("fedyogi", 0.0, 0.0), ("fedadagrad", 0.9, 0.0),
    ("fedprox", 0.9, 0.5), ("feddyn", 0.0, 0.0), ("feddyn", 0.9, 0.5)]


def test_every_registered_algorithm_has_an_oracle_case():
  """A registered algorithm without a vmapped-vs-looped case fails the suite."""
  others = {name for name, a in algorithms.REGISTRY.items() if a.hooks != hooks.AVERAGE}
  assert others and others <= {name for name, _, _ in ORACLE_CASES}, (
      others - {name for name, _, _ in ORACLE_CASES})


@pytest.mark.parametrize("name, momentum, mu", ORACLE_CASES)
def test_vmapped_equals_looped_over_two_rounds(data, name, momentum, mu):
  spec, hp = _setup(name, momentum, mu=mu)
  x0, vmapped = _two_rounds(spec, hp, data, _round_step)
  _, looped = _two_rounds(spec, hp, data, reference.looped_round_step)
  for (v, mv), (l, ml) in zip(vmapped, looped):
    assert int(mv.num_stragglers) == 2 and int(mv.num_aggregated) == 4  # partial work kept
    assert tree_max_abs_diff(v.params, x0) > 1e-3
    assert tree_max_abs_diff(v.params, l.params) < 3e-5, name
    if spec.hooks.per_client_state:  # (x - y) / (K lr): differences grow by 1 / (K lr)
      assert tree_max_abs_diff(v.state, l.state) < 5e-4
      server_part = v.state[0]  # SCAFFOLD's c, FedDyn's h
      assert tree_max_abs_diff(server_part, jax.tree_util.tree_map(
          jnp.zeros_like, server_part)) > 1e-3
    elif jax.tree_util.tree_leaves(v.state):  # FedOpt's server state (m, v or momentum)
      assert tree_max_abs_diff(v.state, l.state) < 3e-5
    np.testing.assert_allclose(mv.train_loss, ml.train_loss, rtol=1e-5)


def test_scaffold_variates_after_two_rounds_by_hand(data):
  """Round 1 from zero variates: c_i = (x0 - y_i) / (K_i lr) for the sampled clients, 0 for the
  others, c = sum_i c_i / N; round 2 corrects the sampled clients' steps with c - c_i and moves
  their c_i by -c + (x1 - y_i) / (K_i lr)."""
  spec, hp = _setup("scaffold")
  x0, [(s1, m1), (s2, m2)] = _two_rounds(spec, hp, data, _round_step)
  n = len(SIZES)
  lr = 0.05
  plan1 = rounds.plan_round(jax.random.key(1), data, hp, spec)
  expected_ci = jax.tree_util.tree_map(lambda p: np.zeros((n,) + p.shape, np.float32), x0)
  for i in range(spec.clients_per_round):
    k = int(plan1.steps[i])
    y, _ = reference.client_update(
        MODEL.apply, x0, data, plan1.offsets[i], plan1.sizes[i], plan1.epochs[i], plan1.keys[i],
        hp.local, batch_size=spec.batch_size, max_size=spec.max_client_size,
        max_epochs=spec.local_epochs)
    for e, a, b in zip(jax.tree_util.tree_leaves(expected_ci), jax.tree_util.tree_leaves(x0),
                       jax.tree_util.tree_leaves(y)):
      e[int(plan1.ids[i])] = (np.asarray(a) - np.asarray(b)) / (k * lr)
  untouched = sorted(set(range(n)) - set(np.asarray(plan1.ids).tolist()))
  assert len(untouched) == 3
  for e, got, c in zip(jax.tree_util.tree_leaves(expected_ci),
                       jax.tree_util.tree_leaves(s1.state.clients),
                       jax.tree_util.tree_leaves(s1.state.server)):
    np.testing.assert_allclose(got, e, atol=2e-4)
    assert np.all(np.asarray(got)[untouched] == 0)
    np.testing.assert_allclose(c, e.sum(axis=0) / n, atol=5e-5)
  # Round 2: the clients not sampled in either round keep c_i = 0; c moved by the mean change.
  plan2 = rounds.plan_round(jax.random.key(2), data, hp, spec)
  never = sorted(set(untouched) - set(np.asarray(plan2.ids).tolist()))
  change = jax.tree_util.tree_map(jnp.subtract, s2.state.clients, s1.state.clients)
  for d, c1, c2 in zip(jax.tree_util.tree_leaves(change),
                       jax.tree_util.tree_leaves(s1.state.server),
                       jax.tree_util.tree_leaves(s2.state.server)):
    assert np.all(np.asarray(d)[never] == 0)
    np.testing.assert_allclose(c2 - c1, np.asarray(d).sum(axis=0) / n, atol=5e-5)


def test_an_algorithms_own_hyper_parameters_are_checked_in_one_line():
  from configs import mnist as mnist_config
  from fedprox_jax.errors import ConfigError
  from fedprox_jax.run import config as config_lib
  c = mnist_config.get_config("fedprox")
  c.update(dict(algorithm="feddyn", mu=0.0))
  c.hparams.feddyn.alpha = 0.1
  resolved = config_lib.resolve(c)
  assert resolved.hparams.to_dict() == {"feddyn": {"alpha": 0.1}}
  from fedprox_jax.run import experiment
  assert float(experiment.hparams(resolved).algorithm.alpha) == np.float32(0.1)
  for alpha, match in ((0.0, "alpha=0.0: must be > 0"),
                       (1e39, r"alpha=1e\+39: must be a finite number \(float32"),
                       (float("nan"), "alpha=nan: must be a finite number")):
    c.hparams.feddyn.alpha = alpha
    with pytest.raises(ConfigError, match=f"config.hparams.feddyn.{match}") as e:
      config_lib.resolve(c)
    assert "\n" not in str(e.value)
  c.hparams.feddyn.alpha = 0.5
  c.algorithm = "scaffold"  # alpha would be ignored
  with pytest.raises(ConfigError, match="applies to the algorithm feddyn, which this run does "
                     "not run: add --config.algorithm=feddyn"):
    config_lib.resolve(c)


def test_feddyn_first_round_by_hand(data):
  """From zero state (Acar et al.'s Algorithm 1): a client's objective is its loss plus
  alpha/2 ||theta - x0||^2, so it trains as a FedProx client with mu = alpha; then
  g_k = -alpha (theta_k - x0) for the sampled clients (0 for the others),
  h = -alpha/m sum_k (theta_k - x0) and x1 = average_k theta_k - h / alpha."""
  spec, hp = _setup("feddyn")
  alpha = float(OWN["feddyn"].alpha)
  x0, [(s1, m1), _] = _two_rounds(spec, hp, data, _round_step)
  plan = rounds.plan_round(jax.random.key(1), data, hp, spec)
  prox = hp.local._replace(mu=jnp.float32(alpha))
  ys = [reference.client_update(MODEL.apply, x0, data, plan.offsets[i], plan.sizes[i],
                                plan.epochs[i], plan.keys[i], prox, batch_size=spec.batch_size,
                                max_size=spec.max_client_size, max_epochs=spec.local_epochs)[0]
        for i in range(spec.clients_per_round)]
  n = len(SIZES)
  p = np.asarray(plan.weights)
  leaves = lambda t: [np.asarray(l, np.float64) for l in jax.tree_util.tree_leaves(t)]
  for k, (x, *y) in enumerate(zip(leaves(x0), *map(leaves, ys))):
    moved = [yi - x for yi in y]
    h = -alpha / n * sum(moved)
    np.testing.assert_allclose(leaves(s1.state.h)[k], h, atol=1e-6)
    g = np.zeros((n,) + x.shape)
    for i, cid in enumerate(np.asarray(plan.ids)):
      g[cid] -= alpha * moved[i]
    np.testing.assert_allclose(leaves(s1.state.grads)[k], g, atol=1e-6)
    untouched = sorted(set(range(n)) - set(np.asarray(plan.ids).tolist()))
    assert np.all(leaves(s1.state.grads)[k][untouched] == 0)
    expected = sum(p[i] * y[i] for i in range(len(y))) - h / alpha
    np.testing.assert_allclose(leaves(s1.params)[k], expected, atol=2e-6)
  assert np.abs(leaves(s1.state.h)[1]).max() > 1e-3


def test_fednova_equals_fedavg_with_equal_work_and_not_otherwise():
  data = make_federated_data((12, 12, 12, 12), seed=1)
  spec = dataclasses.replace(SPEC, clients_per_round=4, max_client_size=12)
  nova_spec, hp = _setup("fednova", stragglers=0.0)
  nova_spec = dataclasses.replace(nova_spec, clients_per_round=4, max_client_size=12)
  x0 = models.init_params(MODEL, jax.random.key(0))
  avg, _ = rounds.run_round(MODEL.apply, spec, x0, data, hp, jax.random.key(3))
  nova, m = rounds.run_round(MODEL.apply, nova_spec, x0, data, hp, jax.random.key(3))
  assert tree_max_abs_diff(avg, x0) > 1e-3
  assert tree_max_abs_diff(nova, avg) < 1e-6
  # Stragglers run fewer steps: FedNova weighs client i by p_i tau_eff / a_i, FedAvg by p_i.
  _, hp = _setup("fednova", stragglers=0.5)
  avg, _ = rounds.run_round(MODEL.apply, spec, x0, data, hp, jax.random.key(3))
  nova, _ = rounds.run_round(MODEL.apply, nova_spec, x0, data, hp, jax.random.key(3))
  plan = rounds.plan_round(jax.random.key(3), data, hp, spec)
  steps = np.asarray(plan.steps)
  assert len(set(steps.tolist())) > 1
  a = steps.astype(np.float64)  # plain SGD: a_i = tau_i
  p = np.asarray(plan.weights, np.float64)
  w = p * (p * a).sum() / a
  ys = [reference.client_update(MODEL.apply, x0, data, plan.offsets[i], plan.sizes[i],
                                plan.epochs[i], plan.keys[i], hp.local, batch_size=4,
                                max_size=12, max_epochs=3)[0] for i in range(4)]
  expected = jax.tree_util.tree_map(
      lambda x, *y: x + sum(w[i] * (y[i] - x) for i in range(4)), x0, *ys)
  assert tree_max_abs_diff(nova, expected) < 2e-6
  assert tree_max_abs_diff(nova, avg) > 1e-4


def test_fednova_effective_steps_closed_forms():
  steps = jnp.array([0, 1, 7, 40])
  np.testing.assert_allclose(fednova.effective_steps(steps, 0.1, 0.0, 0.0), [0, 1, 7, 40])
  for lr, mu, rho in ((0.05, 0.0, 0.9), (0.05, 2.0, 0.0), (0.05, 1.0, 0.5)):
    got = fednova.effective_steps(steps, lr, mu, rho)
    want = [fednova.looped_a(int(k), lr, mu, rho) for k in steps]
    np.testing.assert_allclose(got, want, rtol=2e-5)
  # NIID-Bench's momentum formula at tau = 40, rho = 0.9
  np.testing.assert_allclose(fednova.effective_steps(jnp.array([40]), 0.01, 0.0, 0.9),
                             [(40 - 0.9 * (1 - 0.9 ** 40) / 0.1) / 0.1], rtol=1e-5)


def test_fedopt_with_server_sgd_at_lr_1_is_fedavg(data):
  spec, hp = _setup("fedprox_mu0")
  x0 = models.init_params(MODEL, jax.random.key(0))
  avg, _ = rounds.run_round(MODEL.apply, spec, x0, data, hp, jax.random.key(4))
  sgd_spec = dataclasses.replace(spec, hooks=fedopt.HOOKS["sgd"])
  state, _ = rounds.round_step(MODEL.apply, sgd_spec, rounds.init_server_state(
      sgd_spec, x0, len(SIZES), hp), data, hp, jax.random.key(4))
  assert tree_max_abs_diff(avg, x0) > 1e-3
  assert tree_max_abs_diff(state.params, avg) < 1e-6
  # Server lr 0.5: halfway between the old model and the average.
  hp = hp._replace(server=hp.server._replace(lr=jnp.float32(0.5)))
  state, _ = rounds.round_step(MODEL.apply, sgd_spec, rounds.init_server_state(
      sgd_spec, x0, len(SIZES), hp), data, hp, jax.random.key(4))
  half = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, x0, avg)
  assert tree_max_abs_diff(state.params, half) < 1e-6


def test_every_successor_is_registered_with_its_statics():
  expect = {"scaffold": scaffold.HOOKS, "fednova": fednova.HOOKS,
            "fedavgm": fedopt.HOOKS["avgm"], "fedadam": fedopt.HOOKS["adam"],
            "fedyogi": fedopt.HOOKS["yogi"], "fedadagrad": fedopt.HOOKS["adagrad"],
            "feddyn": feddyn.HOOKS}
  for name, statics in expect.items():
    a = algorithms.get(name)
    assert algorithms.round_statics(a, 0.0)["hooks"] is statics
    assert a.paper and not a.drop_stragglers and a.mu_rule == "zero"
  assert algorithms.round_statics(algorithms.FEDAVG, 0.9)["per_lane_state"]
  assert not algorithms.round_statics(algorithms.FEDAVG, 0.0)["per_lane_state"]
  with pytest.raises(ValueError, match="server optimizer 'adamw' is not one of"):
    fedopt.server_optimizer("adamw", fedopt.ServerHParams())


def test_scaffold_state_size():
  from fedprox_jax.run import distributed, server_state as server_state_lib
  assert server_state_lib.per_client_bytes(1000, 1_663_370) == 2 * 4 * 1000 * 1_663_370
  assert distributed.device_memory_bytes() > 2**28


@pytest.mark.parametrize("field, value, match", [
    ("algorithm", "scafold", "config.algorithm: 'scafold' is not one of"),
    ("algorithm", "fedprox_mu0.010", "write it fedprox_mu0.01"),
    ("momentum", 1.0, "config.momentum=1.0: must be in"),
    ("server_lr", 0.0, "config.server_lr=0.0: must be a finite number > 0"),
    ("partition", "dirichlet", "use one of"),
    ("dirichlet_beta", 0.0, "config.dirichlet_beta=0.0: must be a finite number > 0"),
])
def test_bad_inputs_are_one_line(field, value, match):
  from configs import mnist as mnist_config
  from fedprox_jax.errors import ConfigError
  from fedprox_jax.run import config as config_lib
  c = mnist_config.get_config("fedprox")
  c.partition = "labeldir"
  c[field] = value
  with pytest.raises(ConfigError, match=match) as e:
    config_lib.resolve(c)
  assert "\n" not in str(e.value)


def test_scaffold_state_too_large_is_refused_before_any_work(monkeypatch):
  from configs import mnist as mnist_config
  from fedprox_jax.errors import ConfigError
  from fedprox_jax.run import config as config_lib, distributed
  from fedprox_jax.run import server_state as server_state_lib
  c = config_lib.resolve(mnist_config.get_config("fedprox"))
  c.algorithm = "scaffold"
  params = models.init_params(models.make_model("cnn", "xla"), jax.random.key(0))
  spec = dataclasses.replace(SPEC, hooks=scaffold.HOOKS)
  monkeypatch.setattr(distributed, "device_memory_bytes", lambda: 8 * 2**30)  # an 8 GiB device
  with pytest.raises(ConfigError, match=r"1000 clients x 1663370 parameters .* = 12\.4 GiB, "
                     r"more than half of the device's 8\.0 GiB: use fewer clients"):
    server_state_lib.check_memory(c, spec, params)
  server_state_lib.check_memory(c, dataclasses.replace(spec, hooks=hooks.AVERAGE), params)
  c.num_clients = 100
  server_state_lib.check_memory(c, spec, params)  # 1.2 GiB fits


def test_a_sweeps_successor_equals_its_single_run(tmp_path):
  """The sweep's path (grid point -> hyper-parameters, server state vmapped over experiments)
  and the run's (config.algorithm) give the same rows: SCAFFOLD and FedAdam, two seeds each, in
  programs of their own, with momentum clients."""
  from fedprox_jax.run import single, sweep
  from helpers import assert_same_rows, tiny_mnist, tiny_run_config, tiny_sweep_config
  mnist = tiny_mnist()
  c = tiny_sweep_config(variant="figure1", momentum=0.5, num_rounds=3, eval_every=1)
  c.sweep.update(dict(algorithms="scaffold,fedadam", stragglers="0.5", seeds=2,
                      dissimilarity=False, global_train_loss=False))
  together = sweep.run(c, str(tmp_path / "sweep"), source=mnist)
  assert len(together) == 4
  for name, algorithm in (("scaffold_s0.5_seed1", "scaffold"), ("fedadam_s0.5_seed0", "fedadam")):
    seed = int(name[-1])
    run = tiny_run_config(algorithm=algorithm, mu=0.0, drop_stragglers=False, seed=seed,
                          momentum=0.5, num_rounds=3, local_epochs=2, checkpoint_every=10,
                          protocol="seed", model="mlr", eval_every=1)
    single.run(run, str(tmp_path / name), source=mnist)
    from helpers import read_rows
    alone = read_rows(str(tmp_path / name / "metrics.jsonl"))
    assert_same_rows(together[name], alone, ("test_accuracy", "test_loss", "local_train_loss"),
                     rtol=2e-4, atol=2e-5)
  assert together["scaffold_s0.5_seed0"][-1]["test_loss"] != \
      together["fedadam_s0.5_seed0"][-1]["test_loss"]


def test_a_sweep_too_large_for_scaffold_writes_nothing(tmp_path, monkeypatch):
  from fedprox_jax.errors import ConfigError
  from fedprox_jax.run import distributed, sweep
  from helpers import tiny_mnist, tiny_sweep_config
  c = tiny_sweep_config()
  c.sweep.algorithms = "fedavg,scaffold"
  monkeypatch.setattr(distributed, "device_memory_bytes", lambda: 2**20)  # a 1 MiB device
  with pytest.raises(ConfigError, match="SCAFFOLD keeps a control variate per client"):
    sweep.run(c, str(tmp_path / "w"), source=tiny_mnist())
  assert not (tmp_path / "w" / "config.json").exists()
