"""A worked example: an algorithm registered from outside the package (docs/extending.md).

FedExP (Jhunjhunwala, Wang and Joshi, "FedExP: Speeding Up Federated Averaging via
Extrapolation", ICLR 2023, Algorithm 1): the server extrapolates along the clients' average
update by a step computed each round from how much the updates agree,

    eta = max(1, sum_i p_i ||Delta_i||^2 / (2 (||Delta||^2 + epsilon))),  x <- x + eta Delta,

with Delta_i = y_i - x client i's update and Delta = sum_i p_i Delta_i their average (the
paper's p_i = 1/M: ``--config.weighting=uniform``). It needs two hooks (``core/hooks.py``): each
client reports ||Delta_i||^2 (``client_result``) and the server takes the step
(``server_step``); epsilon is its own hyper-parameter. Its looped reference is written with
NumPy in float64, for the oracle test.

From the command line (this file is the config; it registers the algorithm first):

    python launch.py --config=docs/examples/fedexp.py --config.num_rounds=20 \
        --config.hparams.fedexp.epsilon=0.01

From Python: import this file (it registers ``fedexp``), then
``single.run(get_config(), workdir)`` or set ``algorithm='fedexp'`` on any config built after
the import (a sweep: ``sweep.algorithms='fedavg,fedexp'``).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from configs import mnist
from fedprox_jax.core import algorithms, hooks


class HParams(NamedTuple):
  epsilon: float = 1e-3


def _squared_norm(tree):
  return sum(jnp.sum(leaf ** 2) for leaf in jax.tree_util.tree_leaves(tree))


def client_result(state, x, params, steps, hp):
  """||Delta_i||^2, a scalar per client."""
  return _squared_norm(jax.tree_util.tree_map(jnp.subtract, params, x))


def server_step(state, x, average, plan, results, hp, all_dropped):
  spread = jnp.sum(plan.weights * results)
  mean = _squared_norm(jax.tree_util.tree_map(jnp.subtract, average, x))
  eta = jnp.maximum(1.0, spread / (2 * (mean + hp.algorithm.epsilon)))
  params = jax.tree_util.tree_map(lambda x, a: jnp.where(all_dropped, x, x + eta * (a - x)),
                                  x, average)
  return params, state


def looped_server(state, x, average, ys, steps, plan, hp, num_clients, all_dropped):
  """The same step, client by client, in float64."""
  if all_dropped:
    return average, state
  flat = lambda t: np.concatenate([np.ravel(np.asarray(l, np.float64))
                                   for l in jax.tree_util.tree_leaves(t)])
  p = np.asarray(plan.weights, np.float64)
  deltas = [flat(y) - flat(x) for y in ys]
  mean = sum(p_i * d for p_i, d in zip(p, deltas))
  spread = sum(p_i * d @ d for p_i, d in zip(p, deltas))
  eta = max(1.0, spread / (2 * (mean @ mean + float(hp.algorithm.epsilon))))
  return jax.tree_util.tree_map(lambda x, a: x + eta * (a - x), x, average), state


HOOKS = hooks.Hooks(
    "FedExP", client_result=client_result, server_step=server_step, hparams=HParams(),
    help=(("epsilon", "keeps the step finite when the clients' updates cancel (the paper's "
           "epsilon)"),),
    check=lambda hp: "" if hp.epsilon > 0 else f"epsilon={hp.epsilon!r}: must be > 0",
    looped=hooks.Looped(server=looped_server))

if "fedexp" not in algorithms.REGISTRY:  # a second import of this file registers nothing
  algorithms.register(algorithms.Algorithm(
      "fedexp", "FedExP: the server extrapolates along the average update", hooks=HOOKS,
      drop_stragglers=False, mu_rule="zero", paper="Jhunjhunwala et al. 2023"))


def get_config(variant: str = "fedprox"):
  """configs/mnist.py's ``variant`` running FedExP (a sweep variant: beside FedAvg). Built
  after the registration, so it has ``hparams.fedexp``."""
  c = mnist.get_config(variant)
  if c.mode == "sweep":
    c.sweep.algorithms = "fedavg,fedexp"
  else:
    c.update(dict(algorithm="fedexp", mu=0.0, drop_stragglers=False))
  return c
