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

from fedprox_jax.core.client import (ApplyFn, FederatedData, LocalHParams, epoch_permutations,
                                local_objective_grad_norm, local_optimizer)
from fedprox_jax.core.client import local_step as local_step_fn
from fedprox_jax.core.hooks import AVERAGE, Hooks


class ClientPlan(NamedTuple):
  """What the K clients of a round do (arrays of length K)."""
  ids: jax.Array           # client ids
  offsets: jax.Array       # data ranges
  sizes: jax.Array
  epochs: jax.Array        # local epochs begun (the data orders drawn); 0 = no work
  steps: jax.Array         # local SGD steps: epochs * ceil(n / B), or fewer (a straggler by
                           # iterations: rounds.STRAGGLER_WORK); 0 = a dropped straggler
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
              num_lanes: int, lane_sharding=None, client_optimizer=local_optimizer,
              inexactness: bool = False, per_lane_state: bool = False,
              hooks: Hooks = AVERAGE, state=()):
  """Runs all clients of ``plan`` -> (sum_k weights_k * params_k, per-client mean loss, LaneStats,
  per-client gamma-inexactness or None, the clients' results by plan slot or None).

  ``per_lane_state``: the client optimizer keeps state of its own across steps (momentum): each
  lane carries it and re-initialises it at each client's start. Otherwise the lanes share the
  state ``init`` derives from the global model (the proximal anchor), and carry none.

  ``hooks`` (the algorithm's, with its ``state``): each step adds ``hooks.correction`` to the
  client's update, and a finished client's ``hooks.client_result`` is kept in its slot of the
  plan ([K, ...], returned; summed over devices like the aggregate). Per slot, not per client
  id: the loop's carry stays K trees whatever the number of clients (under a sweep's vmap the
  client boundary's branch runs at every step, and a [num_clients, ...] carry made SCAFFOLD
  13x slower than FedNova).

  ``inexactness``: also the paper's gamma of each client's solution
  (``client.local_objective_grad_norm`` at its final parameters over the same at the global
  model; NaN for a client that ran no step): a pass over the client's data when it finishes
  and one at the global model, about one more local epoch per client.

  ``lane_sharding`` (a ``jax.sharding.Sharding`` of a lane-axis vector, e.g.
  ``NamedSharding(mesh, P("devices"))``) spreads the lanes over devices: each device runs its
  lanes (shard_map: its own loop and trip count, no per-step communication), and the
  aggregate is summed across devices once at the end.
  """
  steps = plan.steps.astype(jnp.int32)
  queue, load = pack_lanes(steps, num_lanes)
  # A loop, not a vmap, over clients: each client's shuffle sorts only its own size bucket.
  perms = jax.lax.map(lambda a: epoch_permutations(a[0], a[1], max_size, max_epochs),
                      (plan.keys, plan.sizes))
  num_clients = steps.shape[0]

  def select_lanes(mask, new, old):
    return jax.tree_util.tree_map(
        lambda a, b: jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), new, old)

  def run_group(queue, load, shared):
    """Runs a group of lanes (all of them, or one device's) -> (aggregate, per-client loss sums).

    Everything else the lanes read comes in as ``shared`` (not as closures), so that inside
    shard_map each device works on its own replicated copy.
    """
    global_params, data, plan, perms, steps, hp, state = shared
    lanes = queue.shape[0]
    tx = client_optimizer(hp)
    # Proximal SGD keeps no state but its anchor, the global model, which all lanes share: so
    # without ``per_lane_state`` the lanes carry no optimizer state (the looped reference
    # carries it; the equality tests would catch a stateful optimizer run without it).
    opt_state = tx.init(global_params)

    def lane_step(params, lane_opt, pos, local_step, lane_queue):
      """One step of one lane: advance its current client, or do nothing (a masked step)."""
      c = lane_queue[jnp.minimum(pos, num_clients - 1)]
      active = (pos < num_clients) & (c >= 0)
      c = jnp.maximum(c, 0)
      extra = None
      if hooks.correction is not None:  # e.g. SCAFFOLD's -lr (c - c_i)
        extra = hooks.correction(state, plan.ids[c], global_params, params, hp)
      params, new_opt, loss = local_step_fn(
          apply_fn, tx, data, plan.offsets[c], plan.sizes[c], perms[c], local_step, batch_size,
          params, lane_opt if per_lane_state else opt_state, active, extra)
      finished = active & (local_step + 1 == steps[c])
      return (params, new_opt if per_lane_state else (), finished, c,
              jnp.where(active, loss, 0.0))

    def finish_clients(params, lane_opt, aggregate, grad_norms, deltas, finished, c):
      """Adds finished clients' weighted params to the aggregate (and, with ``inexactness``,
      notes ||grad h|| at their solutions; with a client result, theirs); their lanes
      restart from global (and a fresh optimizer state)."""
      contribution = jnp.where(finished, plan.weights[c], 0.0)
      aggregate = jax.tree_util.tree_map(
          lambda acc, p: acc + jnp.tensordot(contribution, p, axes=1), aggregate, params)
      if inexactness:
        norms = jax.vmap(lambda p, k: local_objective_grad_norm(
            apply_fn, p, global_params, data, plan.offsets[k], plan.sizes[k], hp))(params, c)
        grad_norms = grad_norms.at[c].add(jnp.where(finished, norms, 0.0))
      if hooks.client_result is not None:
        change = jax.vmap(lambda p, k: hooks.client_result(state, global_params, p, steps[k],
                                                           hp))(params, c)
        deltas = jax.tree_util.tree_map(
            lambda acc, d: acc.at[c].add(
                jnp.where(finished.reshape((-1,) + (1,) * (d.ndim - 1)), d, 0.0)),
            deltas, change)
      fresh = jax.tree_util.tree_map(lambda g, p: jnp.broadcast_to(g, p.shape), global_params,
                                     params)
      if per_lane_state:
        lane_opt = select_lanes(finished, broadcast_lanes(opt_state), lane_opt)
      return select_lanes(finished, fresh, params), lane_opt, aggregate, grad_norms, deltas

    def broadcast_lanes(tree):
      return jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (lanes,) + a.shape), tree)

    if lanes == 1:
      # vmap over a single lane would turn every matmul into a batched dot of batch 1, which
      # XLA:CPU runs markedly slower than the plain dot; call the lane step directly instead.
      def vmapped_lane_step(*args):
        out = lane_step(*jax.tree_util.tree_map(lambda a: a[0], args))
        return jax.tree_util.tree_map(lambda a: a[None], out)
    else:
      vmapped_lane_step = jax.vmap(lane_step)

    def body(carry):
      s, params, lane_opt, pos, local_step, aggregate, loss_sum, grad_norms, deltas = carry
      params, lane_opt, finished, c, loss = vmapped_lane_step(params, lane_opt, pos, local_step,
                                                              queue)
      # A real branch (its predicate is not per lane): the rare client boundary costs nothing
      # on the other steps.
      params, lane_opt, aggregate, grad_norms, deltas = jax.lax.cond(
          jnp.any(finished), finish_clients, lambda p, o, a, g, d, f, c: (p, o, a, g, d),
          params, lane_opt, aggregate, grad_norms, deltas, finished, c)
      loss_sum = loss_sum.at[c].add(loss)
      pos = pos + finished
      local_step = jnp.where(finished, 0, local_step + 1)
      return s + 1, params, lane_opt, pos, local_step, aggregate, loss_sum, grad_norms, deltas

    zeros_lanes = jnp.zeros(lanes, jnp.int32)
    init = (jnp.zeros((), jnp.int32), broadcast_lanes(global_params),
            broadcast_lanes(opt_state) if per_lane_state else (),
            zeros_lanes, zeros_lanes, jax.tree_util.tree_map(jnp.zeros_like, global_params),
            jnp.zeros(num_clients, jnp.float32),
            # ||grad h|| at each client's solution (``inexactness``; else an empty carry)
            jnp.zeros(num_clients if inexactness else 0, jnp.float32),
            # the clients' results by plan slot (``hooks.client_result``; else an empty carry)
            () if hooks.client_result is None else jax.tree_util.tree_map(
                lambda r: jnp.zeros((num_clients,) + r.shape, r.dtype),
                jax.eval_shape(hooks.client_result, state, global_params, global_params,
                               steps[0], hp)))
    loop_steps = jnp.max(load)
    carry = jax.lax.while_loop(lambda carry: carry[0] < loop_steps, body, init)
    return carry[5], carry[6], carry[7], carry[8]

  shared = (global_params, data, plan, perms, steps, hp, state)
  if lane_sharding is None:
    groups = 1
    aggregate, loss_sum, grad_norms, deltas = run_group(queue, load, shared)
  else:
    # Each device runs its own lanes with its own trip count; one all-reduce at the end.
    mesh, axis = lane_sharding.mesh, lane_sharding.spec[0]
    groups = mesh.size
    by_lane, replicated = jax.sharding.PartitionSpec(axis), jax.sharding.PartitionSpec()

    def on_device(queue, load, shared):
      return jax.lax.psum(run_group(queue, load, shared), axis)

    aggregate, loss_sum, grad_norms, deltas = jax.shard_map(
        on_device, mesh=mesh, in_specs=(by_lane, by_lane, replicated),
        out_specs=(replicated,) * 4, check_vma=False)(queue, load, shared)
  client_loss = loss_sum / jnp.maximum(steps, 1)
  gamma = None
  if inexactness:
    at_global = jax.lax.map(lambda k: local_objective_grad_norm(
        apply_fn, global_params, global_params, data, plan.offsets[k], plan.sizes[k], hp),
        jnp.arange(num_clients))
    gamma = jnp.where(steps > 0, grad_norms / at_global, jnp.nan)
  group_trips = jnp.max(load.reshape(groups, -1), axis=1)
  stats = LaneStats(useful_steps=jnp.sum(steps),
                    executed_steps=jnp.sum(group_trips) * (num_lanes // groups),
                    critical_path=jnp.max(steps), loop_steps=jnp.max(group_trips))
  return aggregate, client_loss, stats, gamma, None if hooks.client_result is None else deltas
