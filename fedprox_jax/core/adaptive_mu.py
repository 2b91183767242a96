"""The paper's adaptive mu: raise mu by 0.1 when the global model's training loss rises from
one round to the next, lower it by 0.1 (never below 0) after 5 consecutive falls.

(Li et al. 2018, Section 5.3: "increase mu by 0.1 whenever the loss increases and decrease it
by 0.1 whenever the loss decreases for 5 consecutive rounds"; initial mu 1 on Synthetic-IID
and 0 on the heterogeneous federations.) The state is arrays only, updated by a pure function,
so it lives on the device inside the round loop and vmaps over a sweep's experiments.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

STEP = 0.1
PATIENCE = 5  # consecutive falls before mu is lowered


class MuState(NamedTuple):
  mu: jnp.ndarray         # the mu of the next round
  last_loss: jnp.ndarray  # the previous round's training loss (NaN before the first)
  falls: jnp.ndarray      # int32: consecutive rounds whose loss fell


def init(mu) -> MuState:
  mu = jnp.asarray(mu, jnp.float32)
  return MuState(mu=mu, last_loss=jnp.full_like(mu, jnp.nan),
                 falls=jnp.zeros(mu.shape, jnp.int32))


def update(state: MuState, loss) -> MuState:
  """The state after a round whose global model has training loss ``loss``. The first round
  has no predecessor (comparisons with NaN are false): it changes nothing. A loss equal to the
  previous one breaks a run of falls."""
  rose = loss > state.last_loss
  fell = loss < state.last_loss
  falls = jnp.where(fell, state.falls + 1, 0)
  lower = falls >= PATIENCE
  mu = jnp.where(rose, state.mu + STEP,
                 jnp.where(lower, jnp.maximum(state.mu - STEP, 0.0), state.mu))
  return MuState(mu=mu.astype(jnp.float32), last_loss=jnp.asarray(loss, jnp.float32),
                 falls=jnp.where(lower, 0, falls).astype(jnp.int32))


def initial_mu(iid_federation: bool) -> float:
  """The paper's starting mu: 1 on Synthetic-IID, 0 on the other federations."""
  return 1.0 if iid_federation else 0.0
