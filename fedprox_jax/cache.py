"""The user's cache directory: MNIST arrays prepared by TFDS, and XLA's compiled programs.

Both only save time: deleting the directory is always safe. ``FEDPROX_JAX_CACHE`` moves it
(default ``$XDG_CACHE_HOME/fedprox_jax``, else ``~/.cache/fedprox_jax``).
"""

from __future__ import annotations

import os

CACHE_ENV = "FEDPROX_JAX_CACHE"


def cache_dir() -> str:
  if os.environ.get(CACHE_ENV):
    return os.path.abspath(os.path.expanduser(os.environ[CACHE_ENV]))
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "fedprox_jax")


def enable_compilation_cache() -> str | None:
  """Turns on JAX's persistent compilation cache under ``cache_dir()/xla``: a run whose
  programs were compiled before (same shapes, backend and versions) loads them instead of
  compiling again (seconds at every start). Returns the directory, or None when it cannot be
  created (the run then just compiles)."""
  import jax

  path = os.path.join(cache_dir(), "xla")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError:
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  # Cache every program: a run's small ones (init, evaluation) add up to seconds too.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path
