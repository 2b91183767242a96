"""Vectorized execution of a round's client updates: clients packed into vmap lanes.

A *lane* is one row of the vmapped computation. Power-law client sizes make one-client-per-lane
wasteful (nine lanes idle while the largest client finishes), so the round's clients are packed
longest-first into ``num_lanes`` lanes; a lane runs its clients one after another, starting each
from the global model. The loop runs ``max lane load`` steps (a dynamic trip count: shapes stay
static and nothing recompiles). At every step each lane either advances its current client by
one SGD step or, past its own work, is *masked*: its parameters are left unchanged.

When a client finishes, its weighted parameters are added to the aggregate directly, so the
round never holds one parameter copy per client.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedprox_jax.client import (ApplyFn, FederatedData, LocalHParams, epoch_permutations,
                                local_optimizer, minibatch, num_local_steps, sgd_step)


class ClientPlan(NamedTuple):
  """What the K clients of a round do (arrays of length K)."""
  ids: jax.Array           # client ids
  offsets: jax.Array       # data ranges
  sizes: jax.Array
  epochs: jax.Array        # local epochs; 0 = does no work (a dropped straggler)
  weights: jax.Array       # aggregation weights: sum to 1, or all 0 when nothing is kept
  is_straggler: jax.Array  # bool
  keys: jax.Array          # per-client PRNG keys (data order)


class LaneStats(NamedTuple):
  useful_steps: jax.Array    # sum of the clients' step counts
  executed_steps: jax.Array  # lanes * loop trip count (lane-steps actually computed)
  critical_path: jax.Array   # largest single client's step count
  loop_steps: jax.Array      # the loop's trip count (max lane load)


def pack_lanes(steps: jax.Array, num_lanes: int):
  """Longest-processing-time-first packing of clients into lanes.

  Returns (queue [num_lanes, K] int32: client indices in run order, -1 padded; load [num_lanes]).
  Clients with zero steps are not queued. With num_lanes >= K every client gets its own lane.
  """
  k = steps.shape[0]
  order = jnp.argsort(-steps, stable=True)

  def place(i, carry):
    queue, count, load = carry
    c = order[i]
    lane = jnp.argmin(load)
    has_work = steps[c] > 0
    queue = queue.at[lane, count[lane]].set(jnp.where(has_work, c, queue[lane, count[lane]]))
    count = count.at[lane].add(has_work.astype(jnp.int32))
    load = load.at[lane].add(steps[c])
    return queue, count, load

  init = (jnp.full((num_lanes, k), -1, jnp.int32), jnp.zeros(num_lanes, jnp.int32),
          jnp.zeros(num_lanes, steps.dtype))
  queue, _, load = jax.lax.fori_loop(0, k, place, init)
  return queue, load


def run_lanes(apply_fn: ApplyFn, global_params, data: FederatedData, plan: ClientPlan,
              hp: LocalHParams, *, batch_size: int, max_size: int, max_epochs: int,
              num_lanes: int):
  """Runs all clients of ``plan`` -> (sum_k weights_k * params_k, per-client mean loss, LaneStats)."""
  steps = num_local_steps(plan.sizes, plan.epochs, batch_size).astype(jnp.int32)
  queue, load = pack_lanes(steps, num_lanes)
  perms = jax.vmap(epoch_permutations, in_axes=(0, 0, None, None))(
      plan.keys, plan.sizes, max_size, max_epochs)
  tx = local_optimizer(hp)
  fresh_opt_state = tx.init(global_params)
  num_clients = steps.shape[0]

  def lane_step(params, opt_state, pos, local_step, lane_queue):
    """One step of one lane: advance its current client, or do nothing (masked)."""
    c = lane_queue[jnp.minimum(pos, num_clients - 1)]
    active = (pos < num_clients) & (c >= 0)
    c = jnp.maximum(c, 0)
    x, y, valid = minibatch(data, plan.offsets[c], plan.sizes[c], perms[c], local_step, batch_size)
    new_params, new_opt_state, loss = sgd_step(apply_fn, tx, params, opt_state, x, y, valid)
    keep_new = lambda new, old: jnp.where(active, new, old)
    params = jax.tree_util.tree_map(keep_new, new_params, params)
    opt_state = jax.tree_util.tree_map(keep_new, new_opt_state, opt_state)
    finished = active & (local_step + 1 == steps[c])
    contribution = jnp.where(finished, plan.weights[c], 0.0)
    return params, opt_state, finished, c, jnp.where(active, loss, 0.0), contribution

  def body(carry):
    s, params, opt_state, pos, local_step, aggregate, loss_sum = carry
    params, opt_state, finished, c, loss, contribution = jax.vmap(lane_step)(
        params, opt_state, pos, local_step, queue)
    aggregate = jax.tree_util.tree_map(
        lambda acc, p: acc + jnp.tensordot(contribution, p, axes=1), aggregate, params)
    # A lane whose client finished restarts from the global model with its next client.
    restart = lambda fresh, cur: jnp.where(
        finished.reshape((-1,) + (1,) * (cur.ndim - 1)), fresh[None], cur)
    params = jax.tree_util.tree_map(restart, global_params, params)
    opt_state = jax.tree_util.tree_map(restart, fresh_opt_state, opt_state)
    loss_sum = loss_sum.at[c].add(loss)
    pos = pos + finished
    local_step = jnp.where(finished, 0, local_step + 1)
    return s + 1, params, opt_state, pos, local_step, aggregate, loss_sum

  loop_steps = jnp.max(load)
  broadcast = lambda t: jax.tree_util.tree_map(
      lambda a: jnp.broadcast_to(a, (num_lanes,) + a.shape), t)
  zeros_lanes = jnp.zeros(num_lanes, jnp.int32)
  init = (jnp.zeros((), jnp.int32), broadcast(global_params), broadcast(fresh_opt_state),
          zeros_lanes, zeros_lanes, jax.tree_util.tree_map(jnp.zeros_like, global_params),
          jnp.zeros(num_clients, jnp.float32))
  carry = jax.lax.while_loop(lambda carry: carry[0] < loop_steps, body, init)
  aggregate, loss_sum = carry[5], carry[6]
  client_loss = loss_sum / jnp.maximum(steps, 1)
  stats = LaneStats(useful_steps=jnp.sum(steps), executed_steps=loop_steps * num_lanes,
                    critical_path=jnp.max(steps), loop_steps=loop_steps)
  return aggregate, client_loss, stats
