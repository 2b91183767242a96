"""Federated algorithms as values: a registry of ``Algorithm`` values, not branches in the loops.

An algorithm says how its clients train (``client_optimizer``: an optax chain built from the
traced local hyper-parameters), what the server does with stragglers (``drop_stragglers``),
where its proximal weight mu comes from (``mu_rule``), and everything else through its
``hooks`` (``core/hooks.py``): the state it keeps (per client included), the local step's
correction, what a client reports, the weights on the clients' models, the server's step, and
its own traced hyper-parameters. The round calls only the hooks, so adding an algorithm is one
module (its hooks and its looped reference), one ``register`` call and its test.

The algorithms of one program must share their static parts (client optimizer and hooks:
``round_statics``): mu, the drop flag and the hyper-parameters are traced, so e.g. FedAvg and
the FedProx variants are vmapped side by side in one compiled round; a sweep gives each set of
static parts programs of its own.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
import optax

from fedprox_jax.core import feddyn, fednova, fedopt, scaffold
from fedprox_jax.core.client import LocalHParams, local_momentum_optimizer, local_optimizer
from fedprox_jax.core.hooks import AVERAGE, Hooks
from fedprox_jax.registry import Registry

MU_RULES = ("zero", "config", "fixed", "adaptive")
FIXED_MU_PREFIX = "fedprox_mu"  # fedprox_mu0.01: FedProx with mu = 0.01 (a grid's column)


@dataclasses.dataclass(frozen=True)
class Algorithm:
  """One federated algorithm.

  Attributes:
    name: its name in ``config.sweep.algorithms`` and in result tables.
    description: one line for tables and ``--help``.
    drop_stragglers: the server discards stragglers' partial work (FedAvg) instead of
      aggregating it (FedProx).
    mu_rule: 'zero' (no proximal term), 'config' (the config's mu: ``mu`` in a run,
      ``sweep.mu`` in a sweep), 'fixed' (its own ``mu``: the fedprox_mu<value> names), or
      'adaptive' (the paper's heuristic, from a run's ``mu``, a sweep's
      ``sweep.adaptive_mu_init`` or its default).
    client_optimizer: traced ``LocalHParams`` -> the local solver's optax chain. It must keep
      no state across steps other than what ``init`` derives from the global model: the lanes
      share one optimizer state (``core/lanes.py``) unless ``round_statics`` gives it per-lane
      state (momentum).
    hooks: what it changes in the round (``core/hooks.py``); ``AVERAGE``: the clients'
      weighted average is the new model.
    server_lr: the server learning rate when the config leaves ``server_lr`` unset.
    paper: where it comes from (the README's table).
  """
  name: str
  description: str
  drop_stragglers: bool
  mu_rule: str
  client_optimizer: Callable[[LocalHParams], optax.GradientTransformation] = local_optimizer
  mu: float = 0.0  # mu_rule 'fixed': the proximal weight
  hooks: Hooks = AVERAGE
  server_lr: float = 1.0
  paper: str = ""

  def __post_init__(self):
    if self.mu_rule not in MU_RULES:
      raise ValueError(f"mu_rule={self.mu_rule!r} is not one of {MU_RULES}")

  @property
  def hparams(self):
    """Its own traced hyper-parameters at their defaults (``config.hparams.<name>``)."""
    return self.hooks.hparams

  def proximal_mu(self, configured: float, adaptive_first: float) -> float:
    """Its (first) proximal weight, by ``mu_rule``, where the config's mu is ``configured``
    and the adaptive rule starts from ``adaptive_first``: the one rule a run's ``algorithm``
    and a sweep's ``sweep.algorithms`` follow."""
    return {"zero": 0.0, "config": configured, "fixed": self.mu,
            "adaptive": adaptive_first}[self.mu_rule]


def round_statics(algorithm: Algorithm, momentum: float) -> dict:
  """The ``RoundSpec`` fields of ``algorithm`` with clients using SGD ``momentum`` (0: none)."""
  client_optimizer = algorithm.client_optimizer
  if momentum and client_optimizer is local_optimizer:
    client_optimizer = local_momentum_optimizer
  return dict(client_optimizer=client_optimizer, hooks=algorithm.hooks,
              per_lane_state=client_optimizer is local_momentum_optimizer)


REGISTRY = Registry("an algorithm")


def hparams_config() -> dict:
  """{name: {field: default}} of the registered algorithms with hyper-parameters of their own:
  the config's ``hparams`` block (``--config.hparams.<name>.<field>``)."""
  return {name: a.hparams._asdict() for name, a in REGISTRY.items() if a.hparams._fields}


def hparams_help() -> dict:
  """{'<name>.<field>': one line} of ``hparams_config``'s fields, for ``--help``."""
  return {f"{name}.{field}": text for name, a in REGISTRY.items()
          for field, text in a.hooks.help}


def register(algorithm: Algorithm) -> Algorithm:
  """Adds ``algorithm`` to the registry (names are unique); returns it."""
  return REGISTRY.add(algorithm)


def get(name: str) -> Algorithm:
  """The registered algorithm ``name``, or FedProx with a fixed mu for ``fedprox_mu<value>``
  (value > 0, written as Python's ``f"{value:g}"`` writes it: 0.01, 1, 1e-05); a ValueError
  naming the registered ones otherwise."""
  if name not in REGISTRY and name.startswith(FIXED_MU_PREFIX):
    return fixed_mu(name)
  return REGISTRY.lookup(name, hint=f" (or {FIXED_MU_PREFIX}<mu>, e.g. {FIXED_MU_PREFIX}0.01: "
                         "FedProx with that mu)")


def fixed_mu(name: str) -> Algorithm:
  """``fedprox_mu<value>``: FedProx (partial work kept) with proximal weight ``value``."""
  text = name[len(FIXED_MU_PREFIX):]
  try:
    mu = float(text)
  except ValueError:
    raise ValueError(f"{name!r}: {text!r} after {FIXED_MU_PREFIX} is not a number (write e.g. "
                     f"{FIXED_MU_PREFIX}0.01)") from None
  tiny = float(np.finfo(np.float32).tiny)
  if not (math.isfinite(mu) and tiny <= mu <= 3.4e38):
    raise ValueError(f"{name!r}: mu must be a finite number from {tiny:.3g} to 3.4e38 (mu = 0 "
                     "is fedprox_mu0)")
  if text != f"{mu:g}":
    raise ValueError(f"{name!r}: write it {FIXED_MU_PREFIX}{mu:g} (one name per mu)")
  return Algorithm(name, f"FedProx with mu = {mu:g}: partial work kept",
                   drop_stragglers=False, mu_rule="fixed", mu=mu)


FEDAVG = register(Algorithm("fedavg", "FedAvg: stragglers dropped, no proximal term",
                            drop_stragglers=True, mu_rule="zero"))
FEDPROX_MU0 = register(Algorithm("fedprox_mu0", "FedProx with mu = 0: stragglers' partial work "
                                 "kept", drop_stragglers=False, mu_rule="zero"))
FEDPROX = register(Algorithm("fedprox", "FedProx: partial work kept, proximal term mu",
                             drop_stragglers=False, mu_rule="config"))
FEDPROX_ADAPTIVE = register(Algorithm("fedprox_adaptive", "FedProx with the paper's adaptive mu",
                                      drop_stragglers=False, mu_rule="adaptive"))
# The successors keep stragglers' partial work (FedNova's point is to weigh unequal work).
SUCCESSOR = dict(drop_stragglers=False, mu_rule="zero")
SCAFFOLD = register(Algorithm(
    "scaffold", "SCAFFOLD: control variates (option II), server lr", hooks=scaffold.HOOKS,
    paper="Karimireddy et al. 2020", **SUCCESSOR))
FEDNOVA = register(Algorithm(
    "fednova", "FedNova: updates normalised by each client's local steps",
    hooks=fednova.HOOKS, paper="Wang et al. 2020", **SUCCESSOR))
FEDAVGM = register(Algorithm(
    "fedavgm", "FedAvgM: server SGD with momentum on the pseudo-gradient",
    hooks=fedopt.HOOKS["avgm"], paper="Hsu et al. 2019", **SUCCESSOR))
FEDADAGRAD = register(Algorithm(
    "fedadagrad", "FedAdagrad: server Adagrad on the pseudo-gradient",
    hooks=fedopt.HOOKS["adagrad"],
    server_lr=0.1, paper="Reddi et al. 2021", **SUCCESSOR))
FEDADAM = register(Algorithm(
    "fedadam", "FedAdam: server Adam on the pseudo-gradient", hooks=fedopt.HOOKS["adam"],
    server_lr=0.01, paper="Reddi et al. 2021", **SUCCESSOR))
FEDYOGI = register(Algorithm(
    "fedyogi", "FedYogi: server Yogi on the pseudo-gradient", hooks=fedopt.HOOKS["yogi"],
    server_lr=0.01, paper="Reddi et al. 2021", **SUCCESSOR))
FEDDYN = register(Algorithm(
    "feddyn", "FedDyn: dynamic regularisation (its own alpha), a gradient state per client",
    hooks=feddyn.HOOKS, paper="Acar et al. 2021", **SUCCESSOR))
