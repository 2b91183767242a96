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

from fedprox_jax.core import rounds
from fedprox_jax.core.client import (ApplyFn, FederatedData, LocalHParams, epoch_permutations,
                                local_optimizer, local_step, num_local_steps)
from fedprox_jax.core.hooks import AVERAGE
from fedprox_jax.core.lanes import LaneStats


class ClientMetrics(NamedTuple):
  loss: jax.Array       # mean minibatch loss over the local steps (0 when no step ran)
  num_steps: jax.Array  # steps run


def client_update(apply_fn: ApplyFn, global_params, data: FederatedData, offset, size, epochs,
                  key: jax.Array, hp: LocalHParams, *, batch_size: int, max_size: int,
                  max_epochs: int, num_steps=None, client_optimizer=local_optimizer,
                  step_correction=None, correction_args=None):
  """One client's local training from the global model -> (params, ClientMetrics).

  ``max_size``/``max_epochs`` fix the shape of the shuffles (the largest client, the largest
  epoch count), so every client shares one compiled program; the loop's trip count is dynamic.
  ``num_steps`` overrides epochs * ceil(size / B) (e.g. to stop after k steps). The optimizer
  state is carried from step to step (the lanes carry none: a stateful local optimizer would
  make the two differ, and the equality tests catch that). ``step_correction(correction_args,
  params, hp)`` (an algorithm's ``Looped.step_correction``): added to each step's update.
  """
  perms = epoch_permutations(key, size, max_size, max_epochs)
  if num_steps is None:
    num_steps = num_local_steps(size, epochs, batch_size)
  tx = client_optimizer(hp)

  def body(step, carry):
    params, opt_state, loss_sum = carry
    extra = (None if step_correction is None
             else step_correction(correction_args, params, hp))
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


_plan_round_jit = jax.jit(rounds.plan_round, static_argnums=3)
_client_update_jit = jax.jit(client_update, static_argnums=0,
                             static_argnames=("batch_size", "max_size", "max_epochs",
                                              "client_optimizer", "step_correction"))


def looped_round(apply_fn: ApplyFn, spec: rounds.RoundSpec, global_params, data: FederatedData,
                 hp: rounds.HParams, round_key):
  """``rounds.run_round``'s plan, each client trained alone in a Python loop, then averaged.

  The oracle for ``run_round`` (and the baseline it is benchmarked against).
  """
  state, m = looped_round_step(apply_fn, spec, rounds.ServerState(global_params), data, hp,
                               round_key)
  return state.params, m


def looped_round_step(apply_fn: ApplyFn, spec: rounds.RoundSpec, state: rounds.ServerState,
                      data: FederatedData, hp: rounds.HParams, round_key):
  """``rounds.round_step`` with the algorithm's parts written from its paper's pseudo-code
  (``spec.hooks.looped``): the same plan, each client alone, then the plain weighted average
  or the algorithm's aggregate, and its server step in Python loops over the clients.
  """
  x = state.params
  looped = spec.hooks.looped
  local = rounds.local_hparams(hp, spec)
  # The plan's sampling, stragglers and data orders; the algorithm's weights come below.
  plan = _plan_round_jit(round_key, data, hp, dataclasses.replace(spec, hooks=AVERAGE))
  results = []
  for i in range(spec.clients_per_round):
    args = None
    if looped.client_args is not None:
      args = looped.client_args(state.state, int(plan.ids[i]), x, hp.local)
    results.append(_client_update_jit(
        apply_fn, x, data, plan.offsets[i], plan.sizes[i], plan.epochs[i], plan.keys[i],
        hp.local, batch_size=spec.batch_size, max_size=spec.max_client_size,
        max_epochs=spec.local_epochs,
        # by epochs the reference counts the steps itself
        num_steps=plan.steps[i] if spec.straggler_work == "iterations" else None,
        client_optimizer=spec.client_optimizer,
        step_correction=looped.step_correction if args is not None else None,
        correction_args=args))
  client_params = [p for p, _ in results]
  steps = [int(m.num_steps) for _, m in results]
  if looped.aggregate is not None:
    aggregate, weights = looped.aggregate(x, client_params, steps,
                                          [float(w) for w in plan.weights], local)
    plan = plan._replace(weights=weights)
  else:
    aggregate = weighted_average(client_params, plan.weights)
  client_loss = jnp.stack([m.loss for _, m in results])
  steps_array = jnp.array(steps)
  stats = LaneStats(useful_steps=jnp.sum(steps_array), executed_steps=jnp.sum(steps_array),
                    critical_path=jnp.max(steps_array), loop_steps=jnp.sum(steps_array))
  params, m = rounds.finish_round(x, aggregate, plan, client_loss, stats)
  new_state = state.state
  if looped.server is not None:
    params, new_state = looped.server(state.state, x, params, client_params, steps, plan, hp,
                                      data.sizes.shape[0], bool(m.all_dropped))
  return rounds.ServerState(params, new_state), m
