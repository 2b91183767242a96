"""SCAFFOLD (Karimireddy et al. 2020, "Stochastic Controlled Averaging for Federated Learning"),
control variates option II.

State: the server's variate c and one c_i per client, for all clients, on the device. Client i
trains with the corrected step y <- y - lr (g - c_i + c) (after its optimizer's own step, as
NIID-Bench's and Flower's ``ScaffoldOptimizer``), and after its K_i steps
c_i+ = c_i - c + (x - y_i) / (K_i lr). The server moves x with its learning rate towards the
clients' average and sets c <- c + (1/N) sum_{i in S} (c_i+ - c_i); only sampled clients change
their c_i. The lanes return each sampled client's c_i change by its slot in the round's plan,
so the per-client variates are read, never written, during local steps; ``update`` adds them
at the clients' ids once per round.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Control(NamedTuple):
  server: object   # c: a parameter tree
  clients: object  # c_i: a parameter tree with a leading [num_clients] axis


def init(params, num_clients: int) -> Control:
  """Zero variates (the paper's and NIID-Bench's start)."""
  return Control(server=jax.tree_util.tree_map(jnp.zeros_like, params),
                 clients=jax.tree_util.tree_map(
                     lambda p: jnp.zeros((num_clients,) + p.shape, p.dtype), params))


def correction(control: Control, client_id):
  """c - c_i: what the corrected step adds to client ``client_id``'s gradient."""
  return jax.tree_util.tree_map(lambda c, ci: c - ci[client_id], control.server, control.clients)


def client_delta(control: Control, global_params, params, steps, lr):
  """c_i+ - c_i = (x - y_i) / (K_i lr) - c (option II) for a client that ran ``steps`` > 0."""
  scale = 1.0 / (jnp.maximum(steps, 1) * lr)
  return jax.tree_util.tree_map(lambda x, y, c: (x - y) * scale - c, global_params, params,
                                control.server)


def update(control: Control, ids, slot_deltas) -> Control:
  """c_i <- c_i + delta_i at the sampled ``ids`` (a client drawn twice gets both), c <- c +
  sum_i delta_i / N; ``slot_deltas`` [K, ...]: zero for a client that ran no step."""
  num_clients = jax.tree_util.tree_leaves(control.clients)[0].shape[0]
  clients = jax.tree_util.tree_map(lambda ci, d: ci.at[ids].add(d), control.clients, slot_deltas)
  server = jax.tree_util.tree_map(lambda c, d: c + jnp.sum(d, axis=0) / num_clients,
                                  control.server, slot_deltas)
  return Control(server, clients)


def state_bytes(num_clients: int, num_params: int, experiments: int = 1) -> int:
  """Bytes of the variates a round holds: c_i and their new values (2 x clients x parameters,
  4 bytes each), per experiment."""
  return 2 * 4 * num_clients * num_params * experiments


def device_memory_bytes() -> int:
  """What one device can hold: its allocator's limit on an accelerator, this machine's memory
  on the CPU."""
  stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
