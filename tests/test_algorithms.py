"""The algorithm registry: each entry's vmapped round equals the looped reference, a plugged-in
client optimizer reaches both, and the sweep grid takes its values from the entries."""

import dataclasses

import jax
import optax
import pytest

from fedprox_jax.core import algorithms, hooks, models, reference, rounds
from fedprox_jax.core.client import proximal
from fedprox_jax.errors import ConfigError
from fedprox_jax.run import grid as grid_lib
from helpers import HETERO_SIZES, tree_max_abs_diff, tiny_sweep_config

K = len(HETERO_SIZES)
SPEC = rounds.RoundSpec(clients_per_round=K, local_epochs=3, batch_size=4,
                        max_client_size=max(HETERO_SIZES), num_lanes=2, sampling="uniform",
                        straggler_rule="exact", weighting="samples")


def _hparams(a: algorithms.Algorithm, mu=0.5):
  return rounds.HParams.create(lr=0.05, mu=0.0 if a.mu_rule == "zero" else mu,
                               stragglers_fraction=0.5, drop_stragglers=a.drop_stragglers,
                               clients_per_round=K)


def test_each_registered_algorithm_vmapped_equals_looped_and_a_plugged_in_optimizer_too(
    hetero_data):
  """One compiled round serves every registered algorithm (their differences are traced); a
  plugged-in client optimizer reaches both the lanes and the looped reference."""
  model = models.LogisticRegression()
  params = models.init_params(model, jax.random.key(0))
  key = jax.random.key(5)
  averaging = {name: a for name, a in algorithms.REGISTRY.items() if a.hooks == hooks.AVERAGE}
  assert list(averaging) == ["fedavg", "fedprox_mu0", "fedprox", "fedprox_adaptive"]
  assert {a.client_optimizer for a in averaging.values()} == {SPEC.client_optimizer}
  round_fn = rounds.make_round_fn(model.apply, SPEC)
  results = {}
  for name, a in averaging.items():  # the successors: tests/test_successors.py
    vmapped, m = round_fn(params, hetero_data, _hparams(a), key)
    looped, _ = reference.looped_round(model.apply, SPEC, params, hetero_data, _hparams(a), key)
    assert tree_max_abs_diff(vmapped, params) > 1e-3, name
    assert tree_max_abs_diff(vmapped, looped) < 2e-5, name
    # FedAvg aggregates only the non-stragglers; the FedProx variants every sampled client.
    assert int(m.num_aggregated) == (K - int(m.num_stragglers) if a.drop_stragglers else K)
    results[name] = vmapped
  assert round_fn.compilations == 1
  assert tree_max_abs_diff(results["fedavg"], results["fedprox"]) > 1e-4  # they differ

  def clipped(hp):  # stateless, as the lanes require
    return optax.chain(proximal(hp.mu), optax.clip_by_global_norm(0.05), optax.sgd(hp.lr))
  a = dataclasses.replace(algorithms.FEDPROX, name="fedprox_clipped", client_optimizer=clipped)
  spec = dataclasses.replace(SPEC, client_optimizer=a.client_optimizer)
  vmapped, _ = rounds.make_round_fn(model.apply, spec)(params, hetero_data, _hparams(a), key)
  looped, _ = reference.looped_round(model.apply, spec, params, hetero_data, _hparams(a), key)
  assert tree_max_abs_diff(vmapped, results["fedprox"]) > 1e-4  # the clipping changed it
  assert tree_max_abs_diff(vmapped, looped) < 2e-5


def test_registry_rules():
  assert list(algorithms.REGISTRY) == ["fedavg", "fedprox_mu0", "fedprox", "fedprox_adaptive",
                                       "scaffold", "fednova", "fedavgm", "fedadagrad", "fedadam",
                                       "fedyogi", "feddyn"]
  with pytest.raises(ValueError, match="'fedsgd' is not one of fedavg, fedprox_mu0"):
    algorithms.get("fedsgd")
  with pytest.raises(ValueError, match="registered already"):
    algorithms.register(algorithms.FEDAVG)
  with pytest.raises(ValueError, match="mu_rule"):
    algorithms.Algorithm("x", "", drop_stragglers=False, mu_rule="sometimes")
  # fedprox_mu<value>: FedProx with that fixed mu (the appendix's mu grids), one name per mu.
  a = algorithms.get("fedprox_mu0.01")
  assert (a.mu, a.mu_rule, a.drop_stragglers) == (0.01, "fixed", False)
  assert algorithms.get("fedprox_mu1e-05").mu == 1e-5
  for bad, match in (("fedprox_mu0.010", "write it fedprox_mu0.01"),
                     ("fedprox_mux", "'x' after fedprox_mu is not a number"),
                     ("fedprox_mu-1", "must be a finite number"),
                     ("fedprox_muinf", "must be a finite number"),
                     ("fedprox_mu1e-50", "must be a finite number")):
    with pytest.raises(ValueError, match=match):
      algorithms.get(bad)


def test_the_sweep_grid_takes_each_algorithms_values():
  c = tiny_sweep_config()
  c.sweep.algorithms, c.sweep.stragglers, c.sweep.seeds, c.sweep.mu = (
      "fedavg,fedprox_mu0,fedprox,fedprox_adaptive,fedprox_mu0.001", "0.5", 1, 0.25)
  grid = {p.algorithm: p for p in grid_lib.experiment_grid(c)}
  assert [(p.mu, p.drop_stragglers, p.adaptive) for p in grid.values()] == [
      (0.0, True, False), (0.0, False, False), (0.25, False, False), (0.0, False, True),
      (0.001, False, False)]
  assert grid["fedprox_mu0.001"].name == "fedprox_mu0.001_s0.5_seed0"
  c.sweep.algorithms = "fedavg,scafold"
  with pytest.raises(ConfigError, match="config.sweep.algorithms: 'scafold' is not one of"):
    grid_lib.experiment_grid(c)
