"""The algorithm interface: the callables through which an algorithm changes the one compiled
round (``core/round.py``, ``core/lanes.py``) and the looped reference (``core/reference.py``).

The round calls only these; it names no algorithm. What each callable receives:

* ``init_state(params, num_clients, hp)``: the algorithm's state before round 1 (any pytree of
  arrays: what the server keeps besides the model, per-client state included; ``hp`` the
  round's ``HParams`` or None). Checkpointed with the model, leaf by leaf.
* ``correction(state, client_id, global_params, params, hp)``: a parameter tree added to the
  client optimizer's update at every local step (after the optimizer: SCAFFOLD's
  -lr (c - c_i)); ``hp`` the local ``LocalHParams``.
* ``client_result(state, global_params, params, steps, hp)``: what a finished client reports
  besides its model (one tree per slot of the round's plan; zeros for a client that ran no
  step), read by ``server_step``.
* ``weights(data_weights, steps, hp)``: the weights on the clients' models instead of the data
  weights (FedNova); with ``rest_on_global`` the weight 1 - their sum stays on the old model.
* ``server_step(state, x, average, plan, results, hp, all_dropped)``: the new model and state
  from the old model ``x``, the clients' ``average`` (already ``x`` when every client was
  dropped), the round's ``plan`` (``lanes.ClientPlan``: the clients' ids, steps, weights) and
  their ``results`` ([K, ...]); ``hp`` the round's.

``hparams`` is the algorithm's own traced hyper-parameters (a NamedTuple of floats: its
defaults; ``help`` says what each is, ``check`` validates values): the round reads them as
``hp.algorithm``, the config as ``config.hparams.<algorithm name>.<field>``.

A ``Hooks`` value is compared by its callables: the experiments of a sweep whose algorithms
share one (FedAvg and the FedProx family share ``AVERAGE``) run in one compiled program.
``looped`` is the same algorithm written from its paper's pseudo-code for the oracle.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple


class ServerHParams(NamedTuple):
  """The server's traced hyper-parameters, which any algorithm's ``server_step`` may read
  (``HParams.server``; a sweep may vmap over them)."""
  lr: float = 1.0        # eta, the server learning rate
  momentum: float = 0.9  # beta_1: FedAvgM's momentum, the adaptive ones' first moment
  beta2: float = 0.99    # beta_2 of FedAdam / FedYogi
  tau: float = 1e-3      # the adaptivity tau (the paper's epsilon)


class NoHParams(NamedTuple):
  """An algorithm without hyper-parameters of its own."""


@dataclasses.dataclass(frozen=True)
class Looped:
  """An algorithm's parts of the looped reference, written from its paper (None: plain).

  * ``client_args(state, client_id: int, x, hp)``: a pytree for ``step_correction``, or None;
  * ``step_correction(args, params, hp)``: the tree added to each local step's update (a
    module-level function: it is a static argument of the jitted client loop);
  * ``aggregate(x, ys, steps, p, hp)``: (the clients' aggregate, the weights on their models)
    from the clients' models ``ys``, step counts and data weights ``p`` (Python lists);
  * ``server(state, x, average, ys, steps, plan, hp, num_clients, all_dropped)``: (new model,
    new state), in Python loops over the clients (``plan``: the round's ``ClientPlan``).
  """
  client_args: Callable | None = None
  step_correction: Callable | None = None
  aggregate: Callable | None = None
  server: Callable | None = None


@dataclasses.dataclass(frozen=True)
class Hooks:
  """The callables of one algorithm's round (see the module's text); None: the plain round."""
  name: str  # names it in messages ("SCAFFOLD")
  init_state: Callable | None = None
  correction: Callable | None = None
  client_result: Callable | None = None
  weights: Callable | None = None
  rest_on_global: bool = False
  server_step: Callable | None = None
  hparams: tuple = NoHParams()
  help: tuple = ()   # (field, one line) per field of hparams
  check: Callable | None = None  # hparams -> a problem's text or ''
  # What it keeps per client, one parameter tree each ("a control variate"): a run checks
  # that the state fits on the device before any work.
  per_client_state: str = ""
  looped: Looped = Looped()

  def __post_init__(self):
    if self.client_result is not None and self.server_step is None:
      raise ValueError(f"{self.name}: client_result needs a server_step to read the results")
    fields = getattr(self.hparams, "_fields", None)
    if fields is None:
      raise ValueError(f"{self.name}: hparams must be a NamedTuple of floats")
    undocumented = set(fields) - {name for name, _ in self.help}
    if undocumented:
      raise ValueError(f"{self.name}: give help for {', '.join(sorted(undocumented))}")

  @property
  def stateful(self) -> bool:
    return self.init_state is not None


def check_hparams(hooks: Hooks, values) -> str:
  """'' if ``values`` (a ``hooks.hparams`` of Python numbers) can run, else what is wrong."""
  for name, v in zip(hooks.hparams._fields, values):
    # traced as float32: a larger magnitude would become inf without a word
    if (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
        or abs(v) > 3.4e38):
      return f"{name}={v!r}: must be a finite number (float32: |value| <= 3.4e38)"
  return hooks.check(values) if hooks.check else ""


AVERAGE = Hooks("the weighted average")  # FedAvg and FedProx: the average is the new model
