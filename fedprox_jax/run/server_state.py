"""The server's state beyond the model (``Hooks.init_state``: a server optimizer's moments,
per-client variates) as checkpoints hold it, and the device-memory check of a per-client one.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from fedprox_jax.core import rounds
from fedprox_jax.run import config as config_lib
from fedprox_jax.run import distributed


def leaves(state: rounds.ServerState) -> dict:
  """What a checkpoint holds of the server's state besides the model: the algorithm's state's
  arrays by position (a plain dict, whatever its classes are); {} for the averaging
  algorithms."""
  leaves = jax.tree_util.tree_leaves(state.state)
  return {str(i): leaf for i, leaf in enumerate(leaves)}


def restore(template: rounds.ServerState, params, leaves: dict) -> rounds.ServerState:
  """``template``'s structure with the model ``params`` and the checkpointed ``leaves``."""
  treedef = jax.tree_util.tree_structure(template.state)
  return rounds.ServerState(params, jax.tree_util.tree_unflatten(
      treedef, [leaves[str(i)] for i in range(treedef.num_leaves)]))


def per_client_bytes(num_clients: int, num_params: int, experiments: int = 1) -> int:
  """Bytes of a parameter-sized state per client that a round holds: the states and their new
  values (2 x clients x parameters, 4 bytes each), per experiment."""
  return 2 * 4 * num_clients * num_params * experiments


def check_memory(c: ml_collections.ConfigDict, spec: rounds.RoundSpec, params,
                       experiments: int = 1) -> None:
  """An algorithm that keeps a parameter-sized state per client (SCAFFOLD's variates) holds it
  on the device: refused with one line, before any work, when the states and their round's
  changes need more than half a device's memory."""
  hooks = spec.hooks
  if not hooks.per_client_state:
    return
  num_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
  need = per_client_bytes(c.num_clients, num_params, experiments)
  have = distributed.device_memory_bytes()
  config_lib.require(
      need <= have // 2, "num_clients", c.num_clients,
      f"{hooks.name} keeps {hooks.per_client_state} per client: {experiments} experiment(s) x "
      f"{c.num_clients} clients x {num_params} parameters x 2 (the states and their update) x 4 "
      f"bytes = {need / 2**30:.1f} GiB, more than half of the device's {have / 2**30:.1f} GiB: "
      "use fewer clients, a smaller model (--config.model=mlr or niid_cnn), "
      "--config.sweep.experiments_per_program=1, or a device with more memory")
