"""The server side of a round: sampling, stragglers, aggregation, and the jitted round function.

Randomness of round t comes from ``fold_in(run_key, t)`` only, split the same way whatever mu
or drop_stragglers are, so FedAvg and FedProx runs with the same seed see the same clients,
the same stragglers with the same epoch counts, and the same data orders (common random numbers).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedprox_jax.client import ApplyFn, FederatedData, LocalHParams, client_update
from fedprox_jax.lanes import ClientPlan, LaneStats, run_lanes

SAMPLINGS = ("uniform", "weighted")        # uniform w/o replacement | probability ∝ n_k
STRAGGLER_RULES = ("exact", "bernoulli")   # the authors' exact count | the seed's per-client coin
WEIGHTINGS = ("samples", "uniform")        # aggregate ∝ n_k | simple average


@dataclasses.dataclass(frozen=True)
class RoundSpec:
  """Static (shape-determining or code-path) settings of a round. Hashable for jit."""
  clients_per_round: int
  local_epochs: int
  batch_size: int
  max_client_size: int
  num_lanes: int
  sampling: str = "uniform"
  straggler_rule: str = "exact"
  weighting: str = "samples"
  # Devices the lanes are spread over (a 1-D jax.sharding.Mesh); None = the default device.
  mesh: jax.sharding.Mesh | None = None

  @property
  def lane_sharding(self):
    if self.mesh is None or self.mesh.size == 1:
      return None
    return jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(self.mesh.axis_names[0]))

  def __post_init__(self):
    for name, value, allowed in (("sampling", self.sampling, SAMPLINGS),
                                 ("straggler_rule", self.straggler_rule, STRAGGLER_RULES),
                                 ("weighting", self.weighting, WEIGHTINGS)):
      if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {allowed}")
    if self.mesh is not None and self.num_lanes % self.mesh.size:
      raise ValueError(f"num_lanes={self.num_lanes} must be a multiple of the {self.mesh.size} "
                       "devices it is spread over (see distributed.round_up)")
    for name in ("clients_per_round", "local_epochs", "batch_size", "max_client_size", "num_lanes"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def default_num_lanes(clients_per_round: int, backend: str | None = None) -> int:
  """One lane on CPU (a wide vmapped CNN step spills its im2col patches out of cache, and the
  clients packed into one lane do exactly the useful work); one per client on accelerators."""
  backend = backend or jax.default_backend()
  return 1 if backend == "cpu" else clients_per_round


class HParams(NamedTuple):
  """Traced hyper-parameters: changing them never recompiles, and sweeps can vmap over them."""
  lr: jax.Array
  mu: jax.Array
  stragglers_fraction: jax.Array
  drop_stragglers: jax.Array  # bool: FedAvg discards stragglers, FedProx keeps partial work

  @classmethod
  def create(cls, lr, mu, stragglers_fraction, drop_stragglers):
    return cls(jnp.float32(lr), jnp.float32(mu), jnp.float32(stragglers_fraction),
               jnp.bool_(drop_stragglers))

  @property
  def local(self) -> LocalHParams:
    return LocalHParams(lr=self.lr, mu=self.mu)


class RoundMetrics(NamedTuple):
  client_ids: jax.Array      # [K]
  num_stragglers: jax.Array
  num_aggregated: jax.Array  # clients with nonzero aggregation weight
  all_dropped: jax.Array     # bool: nothing to aggregate, the global model was kept
  train_loss: jax.Array      # n_k-weighted mean of the trained clients' mean minibatch loss
  lanes: LaneStats
  finite: jax.Array          # bool: the new global model and the train loss are finite


def sample_clients(key, sizes, k: int, sampling: str):
  num_clients = sizes.shape[0]
  if sampling == "uniform":
    return jax.random.choice(key, num_clients, (k,), replace=False)
  return jax.random.choice(key, num_clients, (k,), replace=False, p=sizes / jnp.sum(sizes))


def draw_stragglers(key, k: int, fraction, rule: str):
  """[k] bool. 'exact': k - round(k * (1 - fraction)) stragglers (the authors' rule);
  'bernoulli': each client independently with probability ``fraction`` (the seed's rule)."""
  u = jax.random.uniform(key, (k,))
  if rule == "bernoulli":
    return u < fraction
  num = k - jnp.round(k * (1.0 - fraction)).astype(jnp.int32)
  rank = jnp.argsort(jnp.argsort(u))
  return rank < num


def aggregation_weights(sizes, kept, weighting: str):
  """Normalised weights over the kept clients (all zero when none is kept) and that flag."""
  raw = jnp.where(kept, sizes.astype(jnp.float32) if weighting == "samples" else 1.0, 0.0)
  total = jnp.sum(raw)
  all_dropped = total == 0
  return jnp.where(all_dropped, 0.0, raw / jnp.where(all_dropped, 1.0, total)), all_dropped


def plan_round(round_key, data: FederatedData, hp: HParams, spec: RoundSpec) -> ClientPlan:
  """Which clients train this round, for how many epochs, with which weight and data order."""
  k_sample, k_straggler, k_epochs, k_data = jax.random.split(round_key, 4)
  ids = sample_clients(k_sample, data.sizes, spec.clients_per_round, spec.sampling)
  sizes = data.sizes[ids]
  is_straggler = draw_stragglers(k_straggler, spec.clients_per_round, hp.stragglers_fraction,
                                 spec.straggler_rule)
  e = spec.local_epochs
  # A straggler runs 1 .. E-1 epochs (E when E = 1), drawn uniformly.
  straggler_epochs = jax.random.randint(k_epochs, (spec.clients_per_round,), 1, max(e, 2))
  straggler_epochs = jnp.minimum(straggler_epochs, e)
  dropped = is_straggler & hp.drop_stragglers
  epochs = jnp.where(dropped, 0, jnp.where(is_straggler, straggler_epochs, e)).astype(jnp.int32)
  weights, _ = aggregation_weights(sizes, ~dropped, spec.weighting)
  keys = jax.vmap(lambda i: jax.random.fold_in(k_data, i))(ids)
  return ClientPlan(ids=ids, offsets=data.offsets[ids], sizes=sizes, epochs=epochs,
                    weights=weights, is_straggler=is_straggler, keys=keys)


def all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]))


def _finish_round(global_params, aggregate, plan: ClientPlan, client_loss, stats: LaneStats):
  all_dropped = jnp.sum(plan.weights) == 0
  new_params = jax.tree_util.tree_map(
      lambda g, a: jnp.where(all_dropped, g, a), global_params, aggregate)
  trained = plan.epochs > 0
  loss_w = jnp.where(trained, plan.sizes, 0).astype(jnp.float32)
  train_loss = jnp.sum(loss_w * client_loss) / jnp.maximum(jnp.sum(loss_w), 1.0)
  metrics = RoundMetrics(client_ids=plan.ids, num_stragglers=jnp.sum(plan.is_straggler),
                         num_aggregated=jnp.sum(plan.weights > 0), all_dropped=all_dropped,
                         train_loss=train_loss, lanes=stats,
                         finite=jnp.isfinite(train_loss) & all_finite(new_params))
  return new_params, metrics


def run_round(apply_fn: ApplyFn, spec: RoundSpec, global_params, data: FederatedData,
              hp: HParams, round_key):
  """One FedProx round, vectorized: plan, packed vmapped client updates, aggregation."""
  plan = plan_round(round_key, data, hp, spec)
  aggregate, client_loss, stats = run_lanes(
      apply_fn, global_params, data, plan, hp.local, batch_size=spec.batch_size,
      max_size=spec.max_client_size, max_epochs=spec.local_epochs, num_lanes=spec.num_lanes,
      lane_sharding=spec.lane_sharding)
  return _finish_round(global_params, aggregate, plan, client_loss, stats)


def make_round_fn(apply_fn: ApplyFn, spec: RoundSpec):
  """The jitted round: (params, data, hp, round_key) -> (new params, RoundMetrics).

  Shapes depend only on ``spec`` and the data, so it compiles once for a whole run.
  """
  return jax.jit(lambda params, data, hp, key: run_round(apply_fn, spec, params, data, hp, key))


def weighted_average(client_params: list, weights):
  """sum_k weights_k * params_k over a list of parameter trees."""
  stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *client_params)
  return jax.tree_util.tree_map(lambda s: jnp.tensordot(weights, s, axes=1), stacked)


_plan_round_jit = jax.jit(plan_round, static_argnums=3)
_client_update_jit = jax.jit(client_update, static_argnums=0,
                             static_argnames=("batch_size", "max_size", "max_epochs"))


def looped_round(apply_fn: ApplyFn, spec: RoundSpec, global_params, data: FederatedData,
                 hp: HParams, round_key):
  """The reference: the same plan, each client trained alone in a Python loop, then averaged.

  The oracle for ``run_round`` (and the baseline it is benchmarked against).
  """
  plan = _plan_round_jit(round_key, data, hp, spec)
  results = [_client_update_jit(apply_fn, global_params, data, plan.offsets[i], plan.sizes[i],
                    plan.epochs[i], plan.keys[i], hp.local, batch_size=spec.batch_size,
                    max_size=spec.max_client_size, max_epochs=spec.local_epochs)
             for i in range(spec.clients_per_round)]
  aggregate = weighted_average([p for p, _ in results], plan.weights)
  client_loss = jnp.stack([m.loss for _, m in results])
  steps = jnp.stack([m.num_steps for _, m in results])
  stats = LaneStats(useful_steps=jnp.sum(steps), executed_steps=jnp.sum(steps),
                    critical_path=jnp.max(steps), loop_steps=jnp.sum(steps))
  return _finish_round(global_params, aggregate, plan, client_loss, stats)
