"""FedOpt (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2): the server applies
an optimizer to the round's pseudo-gradient, the global model minus the clients' average.

Each server optimizer is an optax ``GradientTransformation`` of traced ``ServerHParams``, so a
sweep vmaps experiments with different server learning rates in one program. The pseudo-
gradient g = x - avg is what optax calls the gradient: server SGD at lr 1 gives x - g = avg,
plain FedAvg. FedAdam / FedYogi / FedAdagrad follow the paper's pseudo-code: m_{-1} = 0,
v_{-1} = tau^2, no bias correction (unlike ``optax.adam``), x <- x - eta m / (sqrt(v) + tau).
FedAvgM (Hsu et al. 2019) is server SGD with momentum: v <- beta v + g, x <- x - eta v.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

# "none": the server takes the clients' average itself (FedAvg, FedProx, FedNova): no state.
SERVER_OPTIMIZERS = ("none", "sgd", "avgm", "adam", "yogi", "adagrad")


class ServerHParams(NamedTuple):
  """Traced server hyper-parameters (a sweep may vmap over them)."""
  lr: jax.Array | float = 1.0        # eta, the server learning rate
  momentum: jax.Array | float = 0.9  # beta_1: FedAvgM's momentum, the adaptive ones' first moment
  beta2: jax.Array | float = 0.99    # beta_2 of FedAdam / FedYogi
  tau: jax.Array | float = 1e-3      # the adaptivity tau (the paper's epsilon)


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
  """The server's optax transformation ``name`` (one of SERVER_OPTIMIZERS but 'none')."""
  if name == "sgd":
    return optax.sgd(hp.lr)
  if name == "avgm":
    return optax.sgd(hp.lr, momentum=hp.momentum)
  if name in ("adam", "yogi", "adagrad"):
    return adaptive(name, hp)
  raise ValueError(f"server optimizer {name!r} is not one of {SERVER_OPTIMIZERS[1:]}")


def init_state(name: str, params, hp: ServerHParams | None = None):
  """The server optimizer's initial state (() for 'none')."""
  if name == "none":
    return ()
  return server_optimizer(name, hp or ServerHParams()).init(params)


def apply(name: str, hp: ServerHParams, params, average, opt_state):
  """(new global model, new state) from the clients' ``average``: x - eta * ... of the
  pseudo-gradient x - average."""
  tx = server_optimizer(name, hp)
  pseudo_grad = jax.tree_util.tree_map(jnp.subtract, params, average)
  updates, opt_state = tx.update(pseudo_grad, opt_state, params)
  return optax.apply_updates(params, updates), opt_state
