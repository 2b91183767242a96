"""The fastest CNN path on this machine, chosen by measurement and remembered.

At the first use of a convolutional model on a CPU, each candidate implementation of the
training step (the convolutions of ``models.CONVOLUTIONS``, one or two vmap lanes) and of the
evaluation's forward pass is compiled and timed on the run's real shapes, interleaved, and the
fastest is used. The choice is cached in ``cache_dir()/autotune.json`` keyed by everything
that can change it: the CPU model and core count, the backend, the jax/jaxlib versions, the
model, the shapes and the candidate set. An entry that is missing, damaged or from another key
is measured again, never trusted. Every candidate is tested equal to ``flax.linen.Conv``
(outputs and gradients), so the choice changes speed only, at most the last float bits.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from fedprox_jax import cache, outputs
from fedprox_jax.core import client, models

FORMAT = 1  # the entries' layout; bump when it changes
CACHE_FILE = "autotune.json"
MAX_LANES = 2  # lanes tried: 1 .. this (never more than a round's clients)
# Each timing runs about this long; a candidate is timed ``REPEATS`` times, interleaved with the
# others, and its fastest time counts (the least disturbed by whatever else the machine does).
TARGET_SECONDS = 0.08
REPEATS = 3
# A choice measured while the machine was busy is cached as provisional, and measured again by
# the first run that finds the machine idle: busy is other jobs on over half of the cores
# (1-minute load average, read before timing), or the winner's timings spreading over 30 %
# (its second-fastest over its fastest). (Not caching it at all made every run on a machine
# that is always busy, a test suite's, measure again.)
BUSY_LOAD_PER_CORE = 0.5
MAX_SPREAD = 1.3


class Choice(NamedTuple):
  conv_impl: str
  num_lanes: int
  eval_conv_impl: str
  seconds: float  # what choosing cost now (0 when it came from the cache)
  # candidate -> ms per client step (training) or per evaluation batch, as measured
  train_ms: dict
  eval_ms: dict
  spread: float = 1.0  # the winners' second-fastest timing over their fastest (the larger)

  def describe(self) -> str:
    def table(ms):
      return ", ".join(f"{k} {v:.2f}" for k, v in sorted(ms.items(), key=lambda kv: kv[1]))
    return (f"conv_impl={self.conv_impl} num_lanes={self.num_lanes} "
            f"eval_conv_impl={self.eval_conv_impl} (ms per client step: {table(self.train_ms)}; "
            f"ms per evaluation batch: {table(self.eval_ms)})")


def cpu_model() -> str:
  return outputs.cpu_model()


def _cores() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def key(model: str, batch_size: int, max_lanes: int, eval_batch_size: int,
        input_shape: tuple, num_classes: int) -> str:
  import jaxlib
  return json.dumps({
      "format": FORMAT, "cpu": cpu_model(), "cores": _cores(), "backend": jax.default_backend(),
      "device_kind": jax.devices()[0].device_kind, "jax": jax.__version__,
      "jaxlib": jaxlib.__version__, "model": model, "batch_size": batch_size,
      "max_lanes": max_lanes, "eval_batch_size": eval_batch_size,
      "input_shape": list(input_shape), "num_classes": num_classes,
      "candidates": list(models.CONV_IMPLS)}, sort_keys=True)


def _path() -> str:
  return os.path.join(cache.cache_dir(), CACHE_FILE)


def _read_cache() -> dict:
  try:
    entries = outputs.read_json(_path())
  except (FileNotFoundError, NotADirectoryError):
    return {}
  except (OSError, ValueError) as e:
    logging.warning("%s is damaged (%s): measuring again", _path(), e)
    return {}
  return entries if isinstance(entries, dict) else {}


def _valid(entry, max_lanes: int) -> bool:
  """A cached entry is used only if it names current candidates, with positive timings of
  which its choice is the fastest."""
  try:
    train, evaluate = entry["train_ms"], entry["eval_ms"]
    chosen = f"{entry['conv_impl']}/{entry['num_lanes']}"
    return (entry["conv_impl"] in models.CONV_IMPLS
            and entry["eval_conv_impl"] in models.CONV_IMPLS
            and isinstance(entry["num_lanes"], int) and 1 <= entry["num_lanes"] <= max_lanes
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                    for ms in (train, evaluate) for v in ms.values())
            and min(train, key=train.get) == chosen
            and min(evaluate, key=evaluate.get) == entry["eval_conv_impl"])
  except (KeyError, TypeError, AttributeError, ValueError):
    return False


def _write_cache(k: str, choice: Choice, busy: str | None = None) -> None:
  """Caches ``choice`` under ``k``; ``busy`` (why the machine looked busy) marks it provisional:
  used while the machine stays busy, measured again once it is idle."""
  entries = _read_cache()
  entries[k] = {"conv_impl": choice.conv_impl, "num_lanes": choice.num_lanes,
                "eval_conv_impl": choice.eval_conv_impl, "train_ms": choice.train_ms,
                "eval_ms": choice.eval_ms, "measured_seconds": round(choice.seconds, 3),
                "measured_on": time.strftime("%Y-%m-%d %H:%M:%S"),
                **({"busy": busy} if busy else {})}
  try:
    os.makedirs(cache.cache_dir(), exist_ok=True)
    outputs.write_json(cache.cache_dir(), CACHE_FILE, entries)
  except OSError as e:  # a read-only cache only costs the measurement next time
    logging.warning("cannot write %s (%s): the next run measures again", _path(), e)


def _train_candidate(model_name: str, impl: str, lanes: int, batch_size: int, input_shape,
                     num_classes: int):
  """(jitted fn(steps) -> params, client steps per call's step): ``lanes`` clients' SGD steps
  (proximal term and weight decay, as a round runs them) on random data of the real shapes."""
  model = models.make_model(model_name, impl, num_classes=num_classes)
  rng = np.random.default_rng(0)
  size = 4 * batch_size
  data = client.FederatedData(
      x=jnp.asarray(rng.normal(size=(size * lanes,) + tuple(input_shape)).astype(np.float32)),
      y=jnp.asarray(rng.integers(0, num_classes, size * lanes).astype(np.int32)),
      offsets=jnp.arange(lanes, dtype=jnp.int32) * size,
      sizes=jnp.full(lanes, size, jnp.int32))
  params = _params(model_name, tuple(input_shape), num_classes)
  hp = client.LocalHParams(lr=jnp.float32(0.01), mu=jnp.float32(0.1),
                           weight_decay=jnp.float32(1e-3))
  tx = client.local_optimizer(hp)
  perms = jnp.tile(jnp.arange(size, dtype=jnp.int32), (lanes, 4, 1))

  def one_lane(p, o, offset, size, perm, s):
    p, o, _ = client.local_step(model.apply, tx, data, offset, size, perm, s, batch_size, p, o)
    return p, o

  step = one_lane if lanes == 1 else jax.vmap(one_lane, in_axes=(0, 0, 0, 0, 0, None))
  stack = (lambda a: a) if lanes == 1 else (lambda a: jnp.stack([a] * lanes))
  p0 = jax.tree_util.tree_map(stack, params)
  o0 = tx.init(params) if lanes == 1 else jax.vmap(tx.init)(p0)
  lane_args = ((data.offsets[0], data.sizes[0], perms[0]) if lanes == 1
               else (data.offsets, data.sizes, perms))

  @jax.jit
  def run(steps):
    return jax.lax.fori_loop(0, steps, lambda s, c: step(*c, *lane_args, s), (p0, o0))[0]
  return run, lanes


def _eval_candidate(model_name: str, impl: str, eval_batch_size: int, input_shape,
                    num_classes: int):
  model = models.make_model(model_name, impl, num_classes=num_classes)
  params = _params(model_name, tuple(input_shape), num_classes)
  x = jnp.asarray(np.random.default_rng(0).normal(
      size=(eval_batch_size,) + tuple(input_shape)).astype(np.float32))

  @jax.jit
  def run(steps):
    return jax.lax.fori_loop(0, steps, lambda s, acc: acc + model.apply(params, x + s).sum(),
                             jnp.float32(0))
  return run, 1


def _compile_all(candidates: dict) -> dict:
  """name -> (compiled fn, units). One after the other: most of the choice's time, and on 2
  cores compiling them in threads side by side was no faster (3.08 vs 3.25 s for 4)."""
  return {n: (fn.lower(jnp.int32(1)).compile(), units) for n, (fn, units) in candidates.items()}


@functools.lru_cache(maxsize=None)
def _params(model_name: str, input_shape: tuple, num_classes: int):
  """Parameters of the model's shapes, without compiling its init (the values only need to
  be typical: PyTorch's init bounds)."""
  model = models.make_model(model_name, models.CONV_IMPLS[0], num_classes=num_classes)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32))
  rng = np.random.default_rng(0)

  def fill(leaf):
    bound = 1 / np.sqrt(np.prod(leaf.shape[:-1]) if len(leaf.shape) > 1 else leaf.shape[0])
    return jnp.asarray(rng.uniform(-bound, bound, leaf.shape).astype(np.float32))
  return jax.tree_util.tree_map(fill, shapes)


def _measure(candidates: dict) -> tuple[dict, dict]:
  """(candidate -> ms per unit (one client step, or one evaluation batch), candidate -> its
  second-fastest timing over its fastest): each run once, then timed ``REPEATS`` times round
  robin for about ``TARGET_SECONDS`` each; the fastest timing counts. A candidate over twice
  the best after the first pass is not timed again."""
  steps, timings = {}, {}
  for name, (fn, units) in candidates.items():
    jax.block_until_ready(fn(jnp.int32(1)))  # the first call's one-off costs
    start = time.perf_counter()
    jax.block_until_ready(fn(jnp.int32(2)))
    per_step = (time.perf_counter() - start) / 2
    steps[name] = max(1, min(1000, round(TARGET_SECONDS / max(per_step, 1e-6))))
    timings[name] = [per_step / units]
  for repeat in range(REPEATS):
    best = min(min(t) for t in timings.values())
    alive = [n for n in candidates if repeat == 0 or min(timings[n]) <= 2 * best]
    for name in alive:
      fn, units = candidates[name]
      start = time.perf_counter()
      jax.block_until_ready(fn(jnp.int32(steps[name])))
      timings[name].append((time.perf_counter() - start) / steps[name] / units)
  spread = {n: (sorted(t)[1] / sorted(t)[0]) if len(t) > 1 else 1.0 for n, t in timings.items()}
  return {name: round(min(t) * 1e3, 4) for name, t in timings.items()}, spread


def measure(model: str, batch_size: int, max_lanes: int, eval_batch_size: int,
            input_shape=(28, 28, 1), num_classes: int = 10) -> Choice:
  """Times the candidates now (no cache): every convolution for training (one lane) and for
  evaluation, then more lanes for the fastest training convolution."""
  start = time.perf_counter()
  compiled = _compile_all({
      **{("train", f"{impl}/1"): _train_candidate(model, impl, 1, batch_size, input_shape,
                                                  num_classes) for impl in models.CONV_IMPLS},
      **{("eval", impl): _eval_candidate(model, impl, eval_batch_size, input_shape, num_classes)
         for impl in models.CONV_IMPLS}})
  train_ms, train_spread = _measure({n: v for (kind, n), v in compiled.items()
                                     if kind == "train"})
  eval_ms, eval_spread = _measure({n: v for (kind, n), v in compiled.items() if kind == "eval"})
  impl = min(train_ms, key=train_ms.get).split("/")[0]
  if max_lanes > 1:
    wider = _compile_all({f"{impl}/{lanes}": _train_candidate(
        model, impl, lanes, batch_size, input_shape, num_classes)
        for lanes in range(2, max_lanes + 1)})
    again, again_spread = _measure({f"{impl}/1": compiled["train", f"{impl}/1"], **wider})
    # The one-lane winner keeps its fastest timing of either pass: the wider lanes are tried
    # for the fastest one-lane convolution only, and it stays the fastest of one lane.
    again[f"{impl}/1"] = min(again[f"{impl}/1"], train_ms[f"{impl}/1"])
    train_ms.update(again)
    train_spread.update(again_spread)
  best_train = min(train_ms, key=train_ms.get)
  impl, lanes = best_train.split("/")
  best_eval = min(eval_ms, key=eval_ms.get)
  return Choice(impl, int(lanes), best_eval, time.perf_counter() - start, train_ms, eval_ms,
                round(max(train_spread[best_train], eval_spread[best_eval]), 3))


def _load_per_core() -> float:
  """The 1-minute load average per core this process may use (0 where it is unknown)."""
  try:
    return os.getloadavg()[0] / _cores()
  except (OSError, AttributeError):
    return 0.0


@functools.lru_cache(maxsize=None)
def choose(model: str, batch_size: int, max_lanes: int, eval_batch_size: int,
           input_shape=(28, 28, 1), num_classes: int = 10) -> Choice:
  """The cached choice for these shapes on this machine, else ``measure``'s (then cached)."""
  k = key(model, batch_size, max_lanes, eval_batch_size, input_shape, num_classes)
  entry = _read_cache().get(k)
  load = _load_per_core()
  idle = load <= BUSY_LOAD_PER_CORE
  if entry is not None and _valid(entry, max_lanes):
    busy_then = entry.get("busy")
    if not (busy_then and idle):
      choice = Choice(entry["conv_impl"], entry["num_lanes"], entry["eval_conv_impl"], 0.0,
                      entry["train_ms"], entry["eval_ms"])
      logging.info("%s on this %s: %s, as measured before (%s)%s", model, cpu_model(),
                   choice.describe(), _path(),
                   f"; provisional ({busy_then}): measured again once the machine is idle"
                   if busy_then else "")
      return choice
    logging.info("%s: the choice cached for %s was measured on a busy machine (%s): measuring "
                 "again now that it is idle", _path(), model, busy_then)
  elif entry is not None:
    logging.warning("%s: its entry for %s is damaged: measuring again", _path(), model)
  logging.info("timing the %s's %d candidate paths on this %s before the run starts: about "
               "5-15 s on 2 idle cores, more on a busy machine (once: the choice is cached in "
               "%s)", model, 2 * len(models.CONV_IMPLS) + max_lanes - 1, cpu_model(), _path())
  choice = measure(model, batch_size, max_lanes, eval_batch_size, input_shape, num_classes)
  busy = (f"other jobs ran on the machine (load {load:.2f} per core)" if not idle else
          f"the timings were unsteady (the fastest's spread {choice.spread:.2f}x)"
          if choice.spread > MAX_SPREAD else None)
  _write_cache(k, choice, busy)
  if busy:
    logging.warning("%s: %s, chosen in %.1f s; %s, so the choice is cached as provisional: the "
                    "next run on an idle machine measures again", model, choice.describe(),
                    choice.seconds, busy)
  else:
    logging.info("%s: %s, chosen in %.1f s", model, choice.describe(), choice.seconds)
  return choice
