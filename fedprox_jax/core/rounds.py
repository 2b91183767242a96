"""The server side of a round: sampling, stragglers, aggregation, and the jitted round function.

Randomness of round t comes from ``fold_in(run_key, t)`` only, split the same way whatever mu
or drop_stragglers are, so FedAvg and FedProx runs with the same seed see the same clients,
the same stragglers with the same epoch counts, and the same data orders (common random numbers).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from fedprox_jax.core.client import ApplyFn, FederatedData, LocalHParams, cdiv, local_optimizer
from fedprox_jax.core.hooks import AVERAGE, Hooks, NoHParams, ServerHParams
from fedprox_jax.core.lanes import ClientPlan, LaneStats, run_lanes

# uniform w/o replacement (both sources' code) | ∝ n_k w/o replacement | ∝ n_k with
# replacement (the paper's Algorithm 2 text, to combine with weighting='uniform')
SAMPLINGS = ("uniform", "weighted", "weighted_replacement")
# the authors' exact count per round | the seed's Bernoulli schedule over (round, client)
STRAGGLER_RULES = ("exact", "bernoulli")
# What a straggler runs: 1 .. E-1 epochs, drawn uniformly (both sources) | a uniform number of
# SGD steps from 1 to int(E n / B) + 1, at most its full work (the alternative left commented
# out in the authors' code, `solve_iters`: the one that gives stragglers at E = 1)
STRAGGLER_WORK = ("epochs", "iterations")
# aggregate ∝ n_k (the paper's code) | ∝ ceil(n_k / B), the batches (the seed: Flower's clients
# report len(trainloader)) | simple average
WEIGHTINGS = ("samples", "batches", "uniform")


@dataclasses.dataclass(frozen=True)
class RoundSpec:
  """Static (shape-determining or code-path) settings of a round. Hashable for jit."""
  clients_per_round: int
  local_epochs: int
  batch_size: int
  max_client_size: int
  num_lanes: int
  # The protocol's rules: no defaults here, they come from the resolved config
  # (``run/experiment.round_spec``), so nothing built by hand runs another protocol.
  sampling: str
  straggler_rule: str
  weighting: str
  # Devices the lanes are spread over (a 1-D jax.sharding.Mesh); None = the default device.
  mesh: jax.sharding.Mesh | None = None
  # The local solver: traced LocalHParams -> optax chain (``algorithms.Algorithm``).
  client_optimizer: Callable = local_optimizer
  # Also each client's gamma-inexactness (RoundMetrics.inexactness): ~ one more local epoch.
  inexactness: bool = False
  straggler_work: str = "epochs"  # STRAGGLER_WORK
  # The algorithm's static parts (``algorithms.round_statics``): its hooks (``core/hooks.py``)
  # and whether the client optimizer keeps state of its own (momentum).
  hooks: Hooks = AVERAGE
  per_lane_state: bool = False

  @property
  def lane_sharding(self):
    if self.mesh is None or self.mesh.size == 1:
      return None
    return jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(self.mesh.axis_names[0]))

  def __post_init__(self):
    for name, value, allowed in (("sampling", self.sampling, SAMPLINGS),
                                 ("straggler_rule", self.straggler_rule, STRAGGLER_RULES),
                                 ("weighting", self.weighting, WEIGHTINGS),
                                 ("straggler_work", self.straggler_work, STRAGGLER_WORK)):
      if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {allowed}")
    if self.mesh is not None and self.num_lanes % self.mesh.size:
      raise ValueError(f"num_lanes={self.num_lanes} must be a multiple of the {self.mesh.size} "
                       "devices it is spread over (see distributed.round_up)")
    for name in ("clients_per_round", "local_epochs", "batch_size", "max_client_size", "num_lanes"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def exact_straggler_count(clients_per_round: int, fraction: float) -> int:
  """The authors' count, K - round(K * (1 - fraction)), in Python's float64 arithmetic with
  its round-half-to-even, as their code computes it (K = 10, fraction 0.85 gives 8; the
  same formula in float32 gives 9)."""
  return clients_per_round - round(clients_per_round * (1.0 - float(fraction)))


class HParams(NamedTuple):
  """Traced hyper-parameters: changing them never recompiles, and sweeps can vmap over them."""
  lr: jax.Array
  mu: jax.Array
  stragglers_fraction: jax.Array
  drop_stragglers: jax.Array  # bool: FedAvg discards stragglers, FedProx keeps partial work
  exact_stragglers: jax.Array  # int: the 'exact' rule's count (exact_straggler_count)
  weight_decay: jax.Array
  momentum: jax.Array | float = 0.0  # the clients' (used where spec.per_lane_state)
  server: ServerHParams = ServerHParams()
  algorithm: tuple = NoHParams()  # the algorithm's own (``Hooks.hparams``)

  @classmethod
  def create(cls, lr, mu, stragglers_fraction, drop_stragglers, clients_per_round: int,
             weight_decay=0.0, momentum=0.0, server: ServerHParams | None = None,
             algorithm: tuple = NoHParams()):
    server = server or ServerHParams()
    return cls(jnp.float32(lr), jnp.float32(mu), jnp.float32(stragglers_fraction),
               jnp.bool_(drop_stragglers),
               jnp.int32(exact_straggler_count(clients_per_round, stragglers_fraction)),
               jnp.float32(weight_decay), jnp.float32(momentum),
               ServerHParams(*(jnp.float32(v) for v in server)),
               type(algorithm)(*(jnp.float32(v) for v in algorithm)))

  @property
  def local(self) -> LocalHParams:
    return LocalHParams(lr=self.lr, mu=self.mu, weight_decay=self.weight_decay,
                        momentum=self.momentum, algorithm=self.algorithm)


class ServerState(NamedTuple):
  """What the server keeps from round to round: the global model and the algorithm's state
  (``Hooks.init_state``: a server optimizer's, per-client variates; () for the averaging
  algorithms)."""
  params: object
  state: object = ()


def init_server_state(spec: RoundSpec, params, num_clients: int,
                      hp: HParams | None = None) -> ServerState:
  """The state before round 1 of the algorithm ``spec`` describes."""
  init = spec.hooks.init_state
  return ServerState(params, () if init is None else init(params, num_clients, hp))


class RoundMetrics(NamedTuple):
  client_ids: jax.Array      # [K]
  num_stragglers: jax.Array
  num_aggregated: jax.Array  # clients with nonzero aggregation weight
  all_dropped: jax.Array     # bool: nothing to aggregate, the global model was kept
  train_loss: jax.Array      # n_k-weighted mean of the trained clients' mean minibatch loss
  lanes: LaneStats
  finite: jax.Array          # bool: the new global model and the train loss are finite
  # [K] each client's gamma (lanes.run_lanes; NaN: ran no step); None unless spec.inexactness
  inexactness: jax.Array | None = None


def sample_clients(key, sizes, k: int, sampling: str):
  num_clients = sizes.shape[0]
  if sampling == "uniform":
    return jax.random.choice(key, num_clients, (k,), replace=False)
  p = sizes / jnp.sum(sizes)
  return jax.random.choice(key, num_clients, (k,), replace=sampling == "weighted_replacement", p=p)


def draw_stragglers(key, ids, num_clients: int, hp: HParams, rule: str, local_epochs: int):
  """[k] bool: which of the sampled clients ``ids`` straggle this round.

  'exact': hp.exact_stragglers of the k, uniformly (the authors' rule). 'bernoulli': the seed's
  schedule, one Bernoulli(fraction) coin per (round, client) drawn independently of which
  clients are sampled, read at the sampled clients; with E = 1 nobody straggles (the seed's
  ``num_epochs > 1`` test). With E = 1 the authors' code still picks stragglers (FedAvg drops
  them; they would train the one epoch).
  """
  if rule == "bernoulli":
    if local_epochs < 2:
      return jnp.zeros(ids.shape, bool)
    return jax.random.uniform(key, (num_clients,))[ids] < hp.stragglers_fraction
  rank = jnp.argsort(jnp.argsort(jax.random.uniform(key, ids.shape)))
  return rank < hp.exact_stragglers


def aggregation_weights(sizes, kept, weighting: str, batch_size: int = 1):
  """Normalised weights over the kept clients (all zero when none is kept) and that flag:
  ∝ n_k ('samples'), ∝ ceil(n_k / batch_size) ('batches') or equal ('uniform')."""
  per_client = {"samples": sizes.astype(jnp.float32),
                "batches": ((sizes + batch_size - 1) // batch_size).astype(jnp.float32),
                "uniform": jnp.ones(sizes.shape, jnp.float32)}[weighting]
  raw = jnp.where(kept, per_client, 0.0)
  total = jnp.sum(raw)
  all_dropped = total == 0
  return jnp.where(all_dropped, 0.0, raw / jnp.where(all_dropped, 1.0, total)), all_dropped


def local_hparams(hp: HParams, spec: RoundSpec) -> LocalHParams:
  """The clients' hyper-parameters as the hooks see them: momentum only where the client
  optimizer keeps it (``spec.per_lane_state``)."""
  local = hp.local
  return local if spec.per_lane_state else local._replace(momentum=0.0)


def plan_round(round_key, data: FederatedData, hp: HParams, spec: RoundSpec) -> ClientPlan:
  """Which clients train this round, for how many epochs, with which weight and data order."""
  k_sample, k_straggler, k_epochs, k_data = jax.random.split(round_key, 4)
  ids = sample_clients(k_sample, data.sizes, spec.clients_per_round, spec.sampling)
  sizes = data.sizes[ids]
  is_straggler = draw_stragglers(k_straggler, ids, data.sizes.shape[0], hp,
                                 spec.straggler_rule, spec.local_epochs)
  e = spec.local_epochs
  dropped = is_straggler & hp.drop_stragglers
  batches = cdiv(sizes, spec.batch_size)  # steps per epoch
  if spec.straggler_work == "iterations":
    # randint(1, int(E n / B) + 2) as the authors' solve_iters draw, capped at the full work.
    drawn = jax.random.randint(k_epochs, (spec.clients_per_round,), 1,
                               e * sizes // spec.batch_size + 2)
    steps = jnp.where(dropped, 0, jnp.where(is_straggler, jnp.minimum(drawn, e * batches),
                                            e * batches)).astype(jnp.int32)
    epochs = cdiv(steps, batches).astype(jnp.int32)
  else:
    # 1 .. E-1 epochs, drawn uniformly (randint(1, E) in both sources; E when E = 1).
    straggler_epochs = jnp.minimum(
        jax.random.randint(k_epochs, (spec.clients_per_round,), 1, max(e, 2)), e)
    epochs = jnp.where(dropped, 0, jnp.where(is_straggler, straggler_epochs, e)).astype(jnp.int32)
    steps = (epochs * batches).astype(jnp.int32)
  weights, _ = aggregation_weights(sizes, ~dropped, spec.weighting, spec.batch_size)
  if spec.hooks.weights is not None:  # e.g. FedNova's p_i tau_eff / a_i
    weights = spec.hooks.weights(weights, steps, local_hparams(hp, spec))
  keys = jax.vmap(lambda i: jax.random.fold_in(k_data, i))(ids)
  return ClientPlan(ids=ids, offsets=data.offsets[ids], sizes=sizes, epochs=epochs, steps=steps,
                    weights=weights, is_straggler=is_straggler, keys=keys)


def all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]))


def finish_round(global_params, aggregate, plan: ClientPlan, client_loss, stats: LaneStats,
                 inexactness=None, keep_on_global=None):
  """The new global model (the clients' aggregate; with ``keep_on_global``, FedNova's weight
  on the old model, plus that share of it) and the round's metrics."""
  all_dropped = jnp.sum(plan.weights) == 0
  if keep_on_global is not None:
    aggregate = jax.tree_util.tree_map(lambda a, g: a + keep_on_global * g, aggregate,
                                       global_params)
  new_params = jax.tree_util.tree_map(
      lambda g, a: jnp.where(all_dropped, g, a), global_params, aggregate)
  trained = plan.steps > 0
  loss_w = jnp.where(trained, plan.sizes, 0).astype(jnp.float32)
  train_loss = jnp.sum(loss_w * client_loss) / jnp.maximum(jnp.sum(loss_w), 1.0)
  metrics = RoundMetrics(client_ids=plan.ids, num_stragglers=jnp.sum(plan.is_straggler),
                         num_aggregated=jnp.sum(plan.weights > 0), all_dropped=all_dropped,
                         train_loss=train_loss, lanes=stats,
                         finite=jnp.isfinite(train_loss) & all_finite(new_params),
                         inexactness=inexactness)
  return new_params, metrics


def round_step(apply_fn: ApplyFn, spec: RoundSpec, state: ServerState, data: FederatedData,
               hp: HParams, round_key):
  """One round of the algorithm ``spec`` describes, vectorized: plan, packed vmapped client
  updates, aggregation, the algorithm's server step -> (ServerState, RoundMetrics)."""
  hooks = spec.hooks
  plan = plan_round(round_key, data, hp, spec)
  global_params = state.params
  aggregate, client_loss, stats, gamma, results = run_lanes(
      apply_fn, global_params, data, plan, hp.local, batch_size=spec.batch_size,
      max_size=spec.max_client_size, max_epochs=spec.local_epochs, num_lanes=spec.num_lanes,
      lane_sharding=spec.lane_sharding, client_optimizer=spec.client_optimizer,
      inexactness=spec.inexactness, per_lane_state=spec.per_lane_state, hooks=hooks,
      state=state.state)
  keep = 1.0 - jnp.sum(plan.weights) if hooks.rest_on_global else None
  params, m = finish_round(global_params, aggregate, plan, client_loss, stats, gamma, keep)
  new_state = state.state
  if hooks.server_step is not None:
    params, new_state = hooks.server_step(state.state, global_params, params, plan, results,
                                          hp, m.all_dropped)
    m = m._replace(finite=m.finite & all_finite(params))
  return ServerState(params, new_state), m


def run_round(apply_fn: ApplyFn, spec: RoundSpec, global_params, data: FederatedData,
              hp: HParams, round_key):
  """One round of an algorithm whose server keeps nothing but the model (FedAvg, FedProx,
  FedNova) -> (new params, RoundMetrics)."""
  if spec.hooks.stateful:
    raise ValueError("this round's server keeps state: use round_step with a ServerState")
  state, m = round_step(apply_fn, spec, ServerState(global_params), data, hp, round_key)
  return state.params, m


class RoundFn:
  """The jitted round: (params, data, hp, round_key) -> (new params, RoundMetrics), or with
  ``with_state`` (ServerState, data, hp, round_key) -> (ServerState, RoundMetrics).
  ``compilations`` counts how often it was compiled (jit traces once per compilation)."""

  def __init__(self, apply_fn: ApplyFn, spec: RoundSpec, with_state: bool = False):
    self.compilations = 0
    step = round_step if with_state else run_round

    def traced(state, data, hp, key):
      self.compilations += 1
      return step(apply_fn, spec, state, data, hp, key)
    self._jitted = jax.jit(traced)

  def __call__(self, state, data, hp, key):
    return self._jitted(state, data, hp, key)

  def lower(self, state, data, hp, key):
    """``jax.jit``'s lowering, e.g. to read the compiled program."""
    return self._jitted.lower(state, data, hp, key)


def make_round_fn(apply_fn: ApplyFn, spec: RoundSpec, with_state: bool = False) -> RoundFn:
  """The jitted round. Shapes depend only on ``spec`` and the data, so it compiles once for a
  whole run."""
  return RoundFn(apply_fn, spec, with_state)
