"""Devices and hosts: the device mesh the lanes (and a sweep's experiments) are spread over.

One process per host; ``maybe_initialize`` starts JAX's distributed runtime when the usual
environment is present, so that ``jax.devices()`` lists every device of every host.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging

from fedprox_jax.errors import ConfigError

AXIS = "devices"


def maybe_initialize() -> None:
  """``jax.distributed.initialize`` for multi-process launches, a no-op for a single process.

  Recognised: JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID (any launcher),
  SLURM with more than one task, and Cloud TPU pod slices (JAX detects both by itself).
  """
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    missing = [v for v in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
               if not os.environ.get(v, "").isdigit()]
    if missing:
      raise ConfigError(f"JAX_COORDINATOR_ADDRESS is set but {' and '.join(missing)} not (as "
                        "integers): set them for every process, or unset "
                        "JAX_COORDINATOR_ADDRESS to run one process")
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU-only hosts
    kwargs = dict(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                  num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                  process_id=int(os.environ["JAX_PROCESS_ID"]))
  elif int("0" + "".join(filter(str.isdigit, os.environ.get("SLURM_NTASKS", "")))) > 1 or \
      len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1:
    kwargs = {}
  else:
    return
  try:
    jax.distributed.initialize(**kwargs)
  except Exception as e:  # jax raises ValueError/RuntimeError for a partial environment
    raise ConfigError(f"starting JAX's multi-process runtime failed ({type(e).__name__}: "
                      f"{str(e).strip().splitlines()[0] if str(e).strip() else e}): check the "
                      "launcher's environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
                      "JAX_PROCESS_ID, or SLURM's), or unset it to run one process") from e
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A 1-D mesh over the first ``num_devices`` devices (0 = all of them)."""
  available = jax.device_count()
  n = num_devices or available
  if not 1 <= n <= available:
    raise ValueError(f"num_devices={num_devices}: this process sees {available} device(s) "
                     f"({jax.devices()[0].platform}); use 0 (all) or a number up to {available}")
  return jax.sharding.Mesh(np.array(jax.devices()[:n]), (AXIS,))


def round_up(count: int, mesh: jax.sharding.Mesh) -> int:
  """The smallest multiple of the mesh size >= count (empty lanes / dummy experiments pad)."""
  return -(-count // mesh.size) * mesh.size


def barrier(name: str) -> None:
  """Waits for every process (a no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def _placer(sharding):
  """A function placing a pytree with ``sharding``, from host values every process gives
  equally (they derive from the same config), across processes too."""
  if jax.process_count() == 1:
    return lambda tree: jax.device_put(tree, sharding)

  def put(leaf):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(put(jax.random.key_data(leaf)),
                                      impl=jax.random.key_impl(leaf))
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return lambda tree: jax.tree_util.tree_map(put, tree)


def replicator(mesh: jax.sharding.Mesh):
  """Places a pytree replicated on every device of ``mesh`` (identity for one device)."""
  if mesh.size == 1:
    return lambda tree: tree
  return _placer(jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def splitter(mesh: jax.sharding.Mesh | None):
  """Places a pytree split along its first axis over the devices of ``mesh``."""
  if mesh is None or mesh.size == 1:
    return lambda tree: tree
  return _placer(jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS)))


def device_memory_bytes() -> int:
  """What one device can hold: its allocator's limit on an accelerator, this machine's memory
  on the CPU."""
  stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
