"""The looped reference: the oracle the vectorized round is tested against.

Each client trains alone in a Python loop (``client_update``), then the server averages
(``weighted_average``). It runs the same plan and the same step function
(``client.local_step``) as the lanes, so any difference is the vectorization's. Tests and
benchmarks import this module; production code never does.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedprox_jax.core import server
from fedprox_jax.core.client import (ApplyFn, FederatedData, LocalHParams, epoch_permutations,
                                local_optimizer, local_step, num_local_steps)
from fedprox_jax.core.lanes import LaneStats


class ClientMetrics(NamedTuple):
  loss: jax.Array       # mean minibatch loss over the local steps (0 when no step ran)
  num_steps: jax.Array  # steps run


def client_update(apply_fn: ApplyFn, global_params, data: FederatedData, offset, size, epochs,
                  key: jax.Array, hp: LocalHParams, *, batch_size: int, max_size: int,
                  max_epochs: int, num_steps=None, client_optimizer=local_optimizer,
                  correction=None):
  """One client's local training from the global model -> (params, ClientMetrics).

  ``max_size``/``max_epochs`` fix the shape of the shuffles (the largest client, the largest
  epoch count), so every client shares one compiled program; the loop's trip count is dynamic.
  ``num_steps`` overrides epochs * ceil(size / B) (e.g. to stop after k steps). The optimizer
  state is carried from step to step (the lanes carry none: a stateful local optimizer would
  make the two differ, and the equality tests catch that). ``correction`` (SCAFFOLD's c - c_i):
  each step also moves the parameters by -lr * correction.
  """
  perms = epoch_permutations(key, size, max_size, max_epochs)
  if num_steps is None:
    num_steps = num_local_steps(size, epochs, batch_size)
  tx = client_optimizer(hp)
  extra = None if correction is None else jax.tree_util.tree_map(lambda c: -hp.lr * c,
                                                                 correction)

  def body(step, carry):
    params, opt_state, loss_sum = carry
    params, opt_state, loss = local_step(apply_fn, tx, data, offset, size, perms, step,
                                         batch_size, params, opt_state, extra_update=extra)
    return params, opt_state, loss_sum + loss

  params, _, loss_sum = jax.lax.fori_loop(
      0, num_steps, body, (global_params, tx.init(global_params), jnp.zeros((), jnp.float32)))
  return params, ClientMetrics(loss_sum / jnp.maximum(num_steps, 1), jnp.asarray(num_steps))


def weighted_average(client_params: list, weights):
  """sum_k weights_k * params_k over a list of parameter trees."""
  stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *client_params)
  return jax.tree_util.tree_map(lambda s: jnp.tensordot(weights, s, axes=1), stacked)


_plan_round_jit = jax.jit(server.plan_round, static_argnums=3)
_client_update_jit = jax.jit(client_update, static_argnums=0,
                             static_argnames=("batch_size", "max_size", "max_epochs",
                                                 "client_optimizer"))


def _tree(f, *trees):
  return jax.tree_util.tree_map(f, *trees)


def fednova_a(steps: int, lr: float, mu: float, momentum: float) -> float:
  """FedNova's ||a_i||_1, by the paper's closed forms where they apply, else by running the
  local solver's recursion (every gradient 1) in float64 on the host."""
  if mu == 0 and momentum == 0:
    return float(steps)
  if mu == 0:
    return (steps - momentum * (1 - momentum ** steps) / (1 - momentum)) / (1 - momentum)
  if momentum == 0:
    return (1 - (1 - lr * mu) ** steps) / (lr * mu)
  displacement, buf = 0.0, 0.0
  for _ in range(steps):
    buf = momentum * buf + 1.0 + mu * displacement
    displacement -= lr * buf
  return -displacement / lr


def server_optimizer_step(name: str, shp, x, average, opt_state):
  """Reddi et al.'s Algorithm 2 (and FedAvgM, server SGD), written out: Delta = average - x."""
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


def looped_round(apply_fn: ApplyFn, spec: server.RoundSpec, global_params, data: FederatedData,
                 hp: server.HParams, round_key):
  """``server.run_round``'s plan, each client trained alone in a Python loop, then averaged.

  The oracle for ``run_round`` (and the baseline it is benchmarked against).
  """
  state, m = looped_round_step(apply_fn, spec, server.ServerState(global_params), data, hp,
                               round_key)
  return state.params, m


def looped_round_step(apply_fn: ApplyFn, spec: server.RoundSpec, state: server.ServerState,
                      data: FederatedData, hp: server.HParams, round_key):
  """``server.round_step`` written from the papers' pseudo-code: the same plan, each client
  alone, then FedAvg's average, FedNova's normalised one, FedOpt's server step or SCAFFOLD's
  variates.
  """
  x = state.params
  # The plan's sampling, stragglers and data orders; FedNova's weights are computed below.
  plan = _plan_round_jit(round_key, data, hp, dataclasses.replace(spec, aggregation="average"))
  control = state.control if spec.control_variates else None
  results = []
  for i in range(spec.clients_per_round):
    correction = None
    if control is not None:  # c - c_i
      correction = _tree(lambda c, ci: c - ci[int(plan.ids[i])], control.server,
                         control.clients)
    results.append(_client_update_jit(
        apply_fn, x, data, plan.offsets[i], plan.sizes[i], plan.epochs[i], plan.keys[i],
        hp.local, batch_size=spec.batch_size, max_size=spec.max_client_size,
        max_epochs=spec.local_epochs,
        # by epochs the reference counts the steps itself
        num_steps=plan.steps[i] if spec.straggler_work == "iterations" else None,
        client_optimizer=spec.client_optimizer, correction=correction))
  client_params = [p for p, _ in results]
  steps = [int(m.num_steps) for _, m in results]
  p = [float(w) for w in plan.weights]
  if spec.aggregation == "normalized":
    momentum = float(hp.momentum) if spec.per_lane_state else 0.0
    a = [fednova_a(k, float(hp.lr), float(hp.mu), momentum) for k in steps]
    tau_eff = sum(p_i * a_i for p_i, a_i in zip(p, a))
    kept = [i for i in range(len(a)) if a[i] > 0]
    # x - tau_eff sum_i p_i (x - y_i) / a_i
    aggregate = _tree(lambda x, *ys: x - tau_eff * sum(p[i] / a[i] * (x - ys[i]) for i in kept),
                      x, *client_params)
    plan = plan._replace(weights=jnp.array([p[i] * tau_eff / a[i] if a[i] > 0 else 0.0
                                            for i in range(len(a))], jnp.float32))
  else:
    aggregate = weighted_average(client_params, plan.weights)
  client_loss = jnp.stack([m.loss for _, m in results])
  steps_array = jnp.array(steps)
  stats = LaneStats(useful_steps=jnp.sum(steps_array), executed_steps=jnp.sum(steps_array),
                    critical_path=jnp.max(steps_array), loop_steps=jnp.sum(steps_array))
  params, m = server.finish_round(x, aggregate, plan, client_loss, stats)
  opt_state, new_control = state.opt_state, state.control
  if spec.server_optimizer != "none" and not bool(m.all_dropped):
    params, opt_state = server_optimizer_step(spec.server_optimizer, hp.server, x, params,
                                              state.opt_state)
  if control is not None:
    num_clients = data.sizes.shape[0]
    clients, total = control.clients, _tree(jnp.zeros_like, control.server)
    for i, k in enumerate(steps):
      if k == 0:
        continue
      cid = int(plan.ids[i])
      # c_i+ = c_i - c + (x - y_i) / (K_i lr)
      new_ci = _tree(lambda ci, c, x, y: ci[cid] - c + (x - y) / (k * hp.lr), clients,
                     control.server, x, client_params[i])
      total = _tree(lambda t, n, ci: t + n - ci[cid], total, new_ci, clients)
      clients = _tree(lambda ci, n: ci.at[cid].set(n), clients, new_ci)
    # c <- c + (1 / N) sum_i (c_i+ - c_i)
    new_control = type(control)(_tree(lambda c, t: c + t / num_clients, control.server, total),
                                clients)
  return server.ServerState(params, opt_state, new_control), m
