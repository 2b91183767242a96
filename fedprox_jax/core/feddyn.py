"""FedDyn (Acar et al. 2021, "Federated Learning Based on Dynamic Regularization", Algorithm 1).

Client k keeps g_k = grad L_k(theta_k^{t-1}) (zero at the start) and trains on the dynamically
regularised objective

    L_k(theta) - <g_k, theta> + alpha/2 ||theta - theta^{t-1}||^2,

whose gradient adds alpha (theta - theta^{t-1}) - g_k to its loss's: the hooks add
-lr (alpha (theta - theta^{t-1}) - g_k) to each step's update (after the client optimizer's
step, as SCAFFOLD's correction; with plain SGD, the paper's solver, that is SGD on the
objective). Then g_k <- g_k - alpha (theta_k^t - theta^{t-1}), and the server keeps h:

    h^t = h^{t-1} - alpha (1/m) sum_{k in P_t} (theta_k^t - theta^{t-1})     (m: all clients)
    theta^t = average_k(theta_k^t) - h^t / alpha

The average is the run's ``weighting`` (``weighting='uniform'``: the paper's 1/|P_t|). A round
in which every client was dropped keeps the model. Its own hyper-parameter: ``alpha``
(``--config.hparams.feddyn.alpha``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedprox_jax.core.hooks import Hooks, Looped


class HParams(NamedTuple):
  alpha: float = 0.01


class State(NamedTuple):
  h: object      # the server's h: a parameter tree
  grads: object  # g_k: a parameter tree with a leading [num_clients] axis


def init(params, num_clients: int, hp=None) -> State:
  del hp
  return State(h=jax.tree_util.tree_map(jnp.zeros_like, params),
               grads=jax.tree_util.tree_map(
                   lambda p: jnp.zeros((num_clients,) + p.shape, p.dtype), params))


def correction(state: State, client_id, global_params, params, hp):
  """-lr (alpha (theta - theta^{t-1}) - g_k): the regulariser's part of the step."""
  alpha = hp.algorithm.alpha
  return jax.tree_util.tree_map(lambda g, w, x: -hp.lr * (alpha * (w - x) - g[client_id]),
                                state.grads, params, global_params)


def client_result(state: State, global_params, params, steps, hp):
  """theta_k - theta^{t-1}."""
  del state, steps, hp
  return jax.tree_util.tree_map(jnp.subtract, params, global_params)


def server_step(state: State, x, average, plan, results, hp, all_dropped):
  alpha = hp.algorithm.alpha
  num_clients = jax.tree_util.tree_leaves(state.grads)[0].shape[0]
  grads = jax.tree_util.tree_map(lambda g, d: g.at[plan.ids].add(-alpha * d), state.grads, results)
  h = jax.tree_util.tree_map(lambda h, d: h - alpha * jnp.sum(d, axis=0) / num_clients,
                             state.h, results)
  params = jax.tree_util.tree_map(lambda x, a, h: jnp.where(all_dropped, x, a - h / alpha),
                                  x, average, h)
  return params, State(h, grads)


# The looped reference (core/reference.py): the paper's Algorithm 1, client by client, the
# local objective's extra terms differentiated as written.

def _looped_client_args(state: State, client_id: int, x, hp):
  return jax.tree_util.tree_map(lambda g: g[client_id], state.grads), x


def _looped_step_correction(args, params, hp):
  g_k, x = args

  def regulariser(theta):  # -<g_k, theta> + alpha/2 ||theta - theta^{t-1}||^2
    dot = sum(jnp.vdot(g, t) for g, t in zip(jax.tree_util.tree_leaves(g_k),
                                              jax.tree_util.tree_leaves(theta)))
    sq = sum(jnp.sum((t - p) ** 2) for t, p in zip(jax.tree_util.tree_leaves(theta),
                                                   jax.tree_util.tree_leaves(x)))
    return -dot + hp.algorithm.alpha / 2 * sq

  return jax.tree_util.tree_map(lambda d: -hp.lr * d, jax.grad(regulariser)(params))


def _looped_server(state: State, x, average, ys, steps, plan, hp, num_clients, all_dropped):
  alpha = float(hp.algorithm.alpha)
  tree = jax.tree_util.tree_map
  grads, total = state.grads, tree(jnp.zeros_like, state.h)
  for i, k in enumerate(steps):
    if k == 0:
      continue
    cid = int(plan.ids[i])
    moved = tree(jnp.subtract, ys[i], x)  # theta_k^t - theta^{t-1}
    grads = tree(lambda g, d: g.at[cid].set(g[cid] - alpha * d), grads, moved)
    total = tree(jnp.add, total, moved)
  h = tree(lambda h, t: h - alpha / num_clients * t, state.h, total)
  params = average if all_dropped else tree(lambda a, h: a - h / alpha, average, h)
  return params, State(h, grads)


HOOKS = Hooks(
    "FedDyn", init_state=init, correction=correction, client_result=client_result,
    server_step=server_step, hparams=HParams(),
    help=(("alpha", "the dynamic regulariser's weight (the paper's alpha; it tries 0.1, 0.01 "
           "and 0.001)"),),
    check=lambda hp: "" if hp.alpha > 0 else f"alpha={hp.alpha!r}: must be > 0",
    per_client_state="a gradient state",
    looped=Looped(client_args=_looped_client_args, step_correction=_looped_step_correction,
                  server=_looped_server))
