"""FedOpt (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2): the server applies
an optimizer to the round's pseudo-gradient, the global model minus the clients' average.

Each server optimizer is an optax ``GradientTransformation`` of traced ``ServerHParams``, so a
sweep vmaps experiments with different server learning rates in one program. The pseudo-
gradient g = x - avg is what optax calls the gradient: server SGD at lr 1 gives x - g = avg,
plain FedAvg. FedAdam / FedYogi / FedAdagrad follow the paper's pseudo-code: m_{-1} = 0,
v_{-1} = tau^2, no bias correction (unlike ``optax.adam``), x <- x - eta m / (sqrt(v) + tau).
FedAvgM (Hsu et al. 2019) is server SGD with momentum: v <- beta v + g, x <- x - eta v.
``HOOKS[name]``: each optimizer as an algorithm's hooks (its state, its step, its looped
reference ``looped_step``); SCAFFOLD's server step is the 'sgd' one.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedprox_jax.core.hooks import Hooks, Looped, ServerHParams

SERVER_OPTIMIZERS = ("sgd", "avgm", "adam", "yogi", "adagrad")


class AdaptiveState(NamedTuple):
  m: optax.Params
  v: optax.Params


def adaptive(kind: str, hp: ServerHParams) -> optax.GradientTransformation:
  """Reddi et al.'s FedAdagrad / FedYogi / FedAdam (``kind`` adagrad | yogi | adam)."""

  def init_fn(params):
    return AdaptiveState(m=jax.tree_util.tree_map(jnp.zeros_like, params),
                         v=jax.tree_util.tree_map(lambda p: jnp.full_like(p, hp.tau ** 2),
                                                  params))

  def second_moment(v, g):
    g2 = g * g
    if kind == "adagrad":
      return v + g2
    if kind == "yogi":
      return v - (1 - hp.beta2) * g2 * jnp.sign(v - g2)
    return hp.beta2 * v + (1 - hp.beta2) * g2

  def update_fn(grads, state, params=None):
    del params
    delta = jax.tree_util.tree_map(jnp.negative, grads)  # the paper's Delta = avg - x
    m = jax.tree_util.tree_map(lambda m, d: hp.momentum * m + (1 - hp.momentum) * d, state.m,
                               delta)
    v = jax.tree_util.tree_map(second_moment, state.v, delta)
    updates = jax.tree_util.tree_map(lambda m, v: hp.lr * m / (jnp.sqrt(v) + hp.tau), m, v)
    return updates, AdaptiveState(m, v)

  return optax.GradientTransformation(init_fn, update_fn)


def server_optimizer(name: str, hp: ServerHParams) -> optax.GradientTransformation:
  """The server's optax transformation ``name`` (one of SERVER_OPTIMIZERS)."""
  if name == "sgd":
    return optax.sgd(hp.lr)
  if name == "avgm":
    return optax.sgd(hp.lr, momentum=hp.momentum)
  if name in ("adam", "yogi", "adagrad"):
    return adaptive(name, hp)
  raise ValueError(f"server optimizer {name!r} is not one of {SERVER_OPTIMIZERS}")


def init_state(name: str, params, hp: ServerHParams | None = None):
  """The server optimizer's initial state."""
  return server_optimizer(name, hp or ServerHParams()).init(params)


def apply(name: str, hp: ServerHParams, params, average, opt_state):
  """(new global model, new state) from the clients' ``average``: x - eta * ... of the
  pseudo-gradient x - average."""
  tx = server_optimizer(name, hp)
  pseudo_grad = jax.tree_util.tree_map(jnp.subtract, params, average)
  updates, opt_state = tx.update(pseudo_grad, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def keep_if(all_dropped, old, new):
  """``old`` where every client was dropped (the round changes nothing), else ``new``."""
  return jax.tree_util.tree_map(lambda o, n: jnp.where(all_dropped, o, n), old, new)


def _hooks(name: str) -> Hooks:
  def init(params, num_clients, hp=None):
    del num_clients
    return init_state(name, params, hp and hp.server)

  def server_step(state, x, average, plan, results, hp, all_dropped):
    del plan, results
    stepped, stepped_state = apply(name, hp.server, x, average, state)
    return keep_if(all_dropped, x, stepped), keep_if(all_dropped, state, stepped_state)

  def looped_server(state, x, average, ys, steps, plan, hp, num_clients, all_dropped):
    if all_dropped:
      return average, state
    return looped_step(name, hp.server, x, average, state)

  return Hooks(f"FedOpt ({name} on the server)", init_state=init, server_step=server_step,
               looped=Looped(server=looped_server))


def _tree(f, *trees):
  return jax.tree_util.tree_map(f, *trees)


def looped_step(name: str, shp: ServerHParams, x, average, opt_state):
  """Reddi et al.'s Algorithm 2 (and FedAvgM, server SGD), written out for the looped
  reference: Delta = average - x."""
  delta = _tree(jnp.subtract, average, x)
  if name == "sgd":
    return _tree(lambda x, d: x + shp.lr * d, x, delta), opt_state
  if name == "avgm":  # v <- beta v + (x - average); x <- x - eta v
    (trace, *rest) = opt_state
    v = _tree(lambda v, d: shp.momentum * v - d, trace.trace, delta)
    return _tree(lambda x, v: x - shp.lr * v, x, v), (trace._replace(trace=v), *rest)
  m = _tree(lambda m, d: shp.momentum * m + (1 - shp.momentum) * d, opt_state.m, delta)
  if name == "adagrad":
    v = _tree(lambda v, d: v + d * d, opt_state.v, delta)
  elif name == "yogi":
    v = _tree(lambda v, d: v - (1 - shp.beta2) * d * d * jnp.sign(v - d * d), opt_state.v, delta)
  else:
    v = _tree(lambda v, d: shp.beta2 * v + (1 - shp.beta2) * d * d, opt_state.v, delta)
  new_x = _tree(lambda x, m, v: x + shp.lr * m / (jnp.sqrt(v) + shp.tau), x, m, v)
  return new_x, opt_state._replace(m=m, v=v)


# One Hooks value per server optimizer, made once: algorithms sharing one share a program.
HOOKS = {name: _hooks(name) for name in SERVER_OPTIMIZERS}
