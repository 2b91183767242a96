"""Federated algorithms as data: a registry of ``Algorithm`` values, not branches in the loops.

An algorithm says how its clients train (``client_optimizer``: an optax chain built from the
traced local hyper-parameters), what the server does with stragglers (``drop_stragglers``)
and where its proximal weight mu comes from (``mu_rule``). The server update is the weighted
average of the clients' models (FedAvg's; as FedOpt writes it, server SGD with lr 1 on the
averaged pseudo-gradient, computed exactly as the average rather than g - 1 * (g - avg),
which float32 would round). docs/design.md says how SCAFFOLD, FedNova and FedAdam plug in.

The algorithms of one program must share their static parts (the optimizer chain): mu and
the drop flag are traced, so FedAvg and the FedProx variants are vmapped side by side in one
compiled round. Adding an algorithm is a module (or a few lines here), one ``register`` call
and its test against ``reference.py``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
import optax

from fedprox_jax.core.client import LocalHParams, local_optimizer

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
    mu_rule: 'zero' (no proximal term), 'config' (the config's mu: ``sweep.mu`` in a sweep),
      'fixed' (its own ``mu``: the fedprox_mu<value> names), or 'adaptive' (the paper's
      heuristic, from ``sweep.adaptive_mu_init`` or its default).
    client_optimizer: traced ``LocalHParams`` -> the local solver's optax chain. It must keep
      no state across steps other than what ``init`` derives from the global model: the lanes
      share one optimizer state (``core/lanes.py``).
  """
  name: str
  description: str
  drop_stragglers: bool
  mu_rule: str
  client_optimizer: Callable[[LocalHParams], optax.GradientTransformation] = local_optimizer
  mu: float = 0.0  # mu_rule 'fixed': the proximal weight

  def __post_init__(self):
    if self.mu_rule not in MU_RULES:
      raise ValueError(f"mu_rule={self.mu_rule!r} is not one of {MU_RULES}")


REGISTRY: dict = {}


def register(algorithm: Algorithm) -> Algorithm:
  """Adds ``algorithm`` to the registry (names are unique); returns it."""
  if algorithm.name in REGISTRY:
    raise ValueError(f"an algorithm named {algorithm.name!r} is registered already")
  REGISTRY[algorithm.name] = algorithm
  return algorithm


def get(name: str) -> Algorithm:
  """The registered algorithm ``name``, or FedProx with a fixed mu for ``fedprox_mu<value>``
  (value > 0, written as Python's ``f"{value:g}"`` writes it: 0.01, 1, 1e-05); a ValueError
  naming the registered ones otherwise."""
  if name in REGISTRY:
    return REGISTRY[name]
  if name.startswith(FIXED_MU_PREFIX):
    return fixed_mu(name)
  raise ValueError(f"{name!r} is not one of {', '.join(REGISTRY)} (or {FIXED_MU_PREFIX}<mu>, "
                   f"e.g. {FIXED_MU_PREFIX}0.01: FedProx with that mu)")


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
