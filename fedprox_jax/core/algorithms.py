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
from typing import Callable

import optax

from fedprox_jax.core.client import LocalHParams, local_optimizer

MU_RULES = ("zero", "config", "adaptive")


@dataclasses.dataclass(frozen=True)
class Algorithm:
  """One federated algorithm.

  Attributes:
    name: its name in ``config.sweep.algorithms`` and in result tables.
    description: one line for tables and ``--help``.
    drop_stragglers: the server discards stragglers' partial work (FedAvg) instead of
      aggregating it (FedProx).
    mu_rule: 'zero' (no proximal term), 'config' (the config's mu: ``sweep.mu`` in a sweep),
      or 'adaptive' (the paper's heuristic, from ``sweep.adaptive_mu_init`` or its default).
    client_optimizer: traced ``LocalHParams`` -> the local solver's optax chain. It must keep
      no state across steps other than what ``init`` derives from the global model: the lanes
      share one optimizer state (``core/lanes.py``).
  """
  name: str
  description: str
  drop_stragglers: bool
  mu_rule: str
  client_optimizer: Callable[[LocalHParams], optax.GradientTransformation] = local_optimizer

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
  """The registered algorithm ``name``; a ValueError naming the registered ones otherwise."""
  if name not in REGISTRY:
    raise ValueError(f"{name!r} is not one of {', '.join(REGISTRY)}")
  return REGISTRY[name]


FEDAVG = register(Algorithm("fedavg", "FedAvg: stragglers dropped, no proximal term",
                            drop_stragglers=True, mu_rule="zero"))
FEDPROX_MU0 = register(Algorithm("fedprox_mu0", "FedProx with mu = 0: stragglers' partial work "
                                 "kept", drop_stragglers=False, mu_rule="zero"))
FEDPROX = register(Algorithm("fedprox", "FedProx: partial work kept, proximal term mu",
                             drop_stragglers=False, mu_rule="config"))
FEDPROX_ADAPTIVE = register(Algorithm("fedprox_adaptive", "FedProx with the paper's adaptive mu",
                                      drop_stragglers=False, mu_rule="adaptive"))
