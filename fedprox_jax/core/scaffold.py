"""SCAFFOLD (Karimireddy et al. 2020, "Stochastic Controlled Averaging for Federated Learning"),
control variates option II.

State: the server's variate c and one c_i per client, for all clients, on the device. Client i
trains with the corrected step y <- y - lr (g - c_i + c) (after its optimizer's own step, as
NIID-Bench's and Flower's ``ScaffoldOptimizer``), and after its K_i steps
c_i+ = c_i - c + (x - y_i) / (K_i lr). The server moves x with its learning rate towards the
clients' average and sets c <- c + (1/N) sum_{i in S} (c_i+ - c_i); only sampled clients change
their c_i. The lanes return each sampled client's c_i change by its slot in the round's plan,
so the per-client variates are read, never written, during local steps; ``update`` adds them
at the clients' ids once per round.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedprox_jax.core import fedopt
from fedprox_jax.core.hooks import Hooks, Looped


class Control(NamedTuple):
  server: object   # c: a parameter tree
  clients: object  # c_i: a parameter tree with a leading [num_clients] axis


def init(params, num_clients: int) -> Control:
  """Zero variates (the paper's and NIID-Bench's start)."""
  return Control(server=jax.tree_util.tree_map(jnp.zeros_like, params),
                 clients=jax.tree_util.tree_map(
                     lambda p: jnp.zeros((num_clients,) + p.shape, p.dtype), params))


def correction(control: Control, client_id):
  """c - c_i: what the corrected step adds to client ``client_id``'s gradient."""
  return jax.tree_util.tree_map(lambda c, ci: c - ci[client_id], control.server, control.clients)


def client_delta(control: Control, global_params, params, steps, lr):
  """c_i+ - c_i = (x - y_i) / (K_i lr) - c (option II) for a client that ran ``steps`` > 0."""
  scale = 1.0 / (jnp.maximum(steps, 1) * lr)
  return jax.tree_util.tree_map(lambda x, y, c: (x - y) * scale - c, global_params, params,
                                control.server)


def update(control: Control, ids, slot_deltas) -> Control:
  """c_i <- c_i + delta_i at the sampled ``ids`` (a client drawn twice gets both), c <- c +
  sum_i delta_i / N; ``slot_deltas`` [K, ...]: zero for a client that ran no step."""
  num_clients = jax.tree_util.tree_leaves(control.clients)[0].shape[0]
  clients = jax.tree_util.tree_map(lambda ci, d: ci.at[ids].add(d), control.clients, slot_deltas)
  server = jax.tree_util.tree_map(lambda c, d: c + jnp.sum(d, axis=0) / num_clients,
                                  control.server, slot_deltas)
  return Control(server, clients)


def _init(params, num_clients, hp=None):
  del hp
  return init(params, num_clients)


def _correction(control: Control, client_id, global_params, params, hp):
  del global_params, params
  return jax.tree_util.tree_map(lambda d: -hp.lr * d, correction(control, client_id))


def _client_result(control: Control, global_params, params, steps, hp):
  return client_delta(control, global_params, params, steps, hp.lr)


def _server_step(control: Control, x, average, plan, results, hp, all_dropped):
  """x moves by the server's learning rate towards the average; the variates by ``update``."""
  stepped, _ = fedopt.apply("sgd", hp.server, x, average, fedopt.init_state("sgd", x))
  return fedopt.keep_if(all_dropped, x, stepped), update(control, plan.ids, results)


# The looped reference (core/reference.py), from the paper's Algorithm 1.

def _looped_client_args(control: Control, client_id: int, x, hp):
  return jax.tree_util.tree_map(lambda c, ci: c - ci[client_id], control.server, control.clients)


def _looped_step_correction(c_minus_ci, params, hp):
  """y <- y - lr (g - c_i + c): the optimizer's step, then -lr (c - c_i)."""
  del params
  return jax.tree_util.tree_map(lambda d: -hp.lr * d, c_minus_ci)


def _looped_server(control: Control, x, average, ys, steps, plan, hp, num_clients,
                   all_dropped):
  params = average if all_dropped else fedopt.looped_step("sgd", hp.server, x, average, ())[0]
  tree = jax.tree_util.tree_map
  clients, total = control.clients, tree(jnp.zeros_like, control.server)
  for i, k in enumerate(steps):
    if k == 0:
      continue
    cid = int(plan.ids[i])
    # c_i+ = c_i - c + (x - y_i) / (K_i lr)
    new_ci = tree(lambda ci, c, x, y: ci[cid] - c + (x - y) / (k * hp.lr), clients,
                  control.server, x, ys[i])
    total = tree(lambda t, n, ci: t + n - ci[cid], total, new_ci, clients)
    clients = tree(lambda ci, n: ci.at[cid].set(n), clients, new_ci)
  # c <- c + (1 / N) sum_i (c_i+ - c_i)
  return params, Control(tree(lambda c, t: c + t / num_clients, control.server, total), clients)


HOOKS = Hooks("SCAFFOLD", init_state=_init, correction=_correction,
              client_result=_client_result, server_step=_server_step,
              per_client_state="a control variate",
              looped=Looped(client_args=_looped_client_args,
                            step_correction=_looped_step_correction, server=_looped_server))
