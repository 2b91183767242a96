"""The run loop of one experiment: data, partition, rounds, evaluation, outputs.

``run(config, workdir)`` is what ``launch.py`` calls; it is just as usable from a notebook.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from fedprox_jax import checkpoints as checkpoints_lib
from fedprox_jax import data as data_lib
from fedprox_jax import distributed, metrics, models, outputs, partition, protocols, server
from fedprox_jax.client import FederatedData

# The paper's Table (MNIST, 1000 devices): for printing next to our partition's statistics.
PAPER_STATS = {"clients": 1000, "examples": 69035, "mean": 69, "std": 106}


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field, the value and the fix."""


def _require(ok: bool, field: str, value, what: str):
  if not ok:
    raise ConfigError(f"config.{field}={value!r}: {what}")


def validate_config(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks every field before any work is done; returns the config with its protocol's
  values in the fields it left unset (the config a run actually uses)."""
  _require(c.protocol in protocols.PROTOCOLS, "protocol", c.protocol,
           f"use one of {protocols.PROTOCOLS}")
  c = protocols.resolve(c)
  _require(c.model in models.MODEL_NAMES, "model", c.model, f"use one of {models.MODEL_NAMES}")
  _require(c.mlr_init in models.MLR_INITS, "mlr_init", c.mlr_init,
           f"use one of {models.MLR_INITS}")
  _require(c.conv_impl in ("auto",) + models.CONV_IMPLS, "conv_impl", c.conv_impl,
           f"use one of {('auto',) + models.CONV_IMPLS}")
  _require(c.mode in ("single", "sweep"), "mode", c.mode, "use 'single' or 'sweep'")
  _require(c.data_source in data_lib.SOURCES, "data_source", c.data_source,
           f"use one of {data_lib.SOURCES}")
  for field in ("num_clients", "clients_per_round", "num_rounds", "local_epochs", "batch_size",
                "eval_every", "labels_per_client", "min_per_client", "checkpoint_every"):
    _require(isinstance(c[field], int) and c[field] >= 1, field, c[field],
             "must be an integer >= 1")
  _require(c.labels_per_client <= partition.NUM_CLASSES, "labels_per_client",
           c.labels_per_client, f"must be between 1 and {partition.NUM_CLASSES}")
  _require(c.clients_per_round <= c.num_clients, "clients_per_round", c.clients_per_round,
           f"cannot exceed num_clients={c.num_clients}")
  _require(c.lr > 0 and math.isfinite(c.lr), "lr", c.lr, "must be a finite number > 0")
  _require(c.mu >= 0 and math.isfinite(c.mu), "mu", c.mu, "must be a finite number >= 0")
  _require(c.weight_decay >= 0 and math.isfinite(c.weight_decay), "weight_decay",
           c.weight_decay, "must be a finite number >= 0")
  _require(0 <= c.client_val_fraction < 1, "client_val_fraction", c.client_val_fraction,
           "must be in [0, 1)")
  _require(c.protocol == "seed" or c.client_val_fraction == 0, "client_val_fraction",
           c.client_val_fraction, "applies to protocol='seed' only (protocol='paper' holds out "
           "10 % of each client as its test set already): leave it unset")
  _require(0 <= c.stragglers_fraction <= 1, "stragglers_fraction", c.stragglers_fraction,
           "must be between 0 and 1")
  _require(c.lognormal_sigma > 0, "lognormal_sigma", c.lognormal_sigma, "must be > 0")
  _require(c.num_lanes >= 0, "num_lanes", c.num_lanes, "must be >= 0 (0 = backend default)")
  _require(c.eval_batch_size >= 0, "eval_batch_size", c.eval_batch_size,
           "must be >= 0 (0 = backend default)")
  _require(c.num_devices >= 0, "num_devices", c.num_devices, "must be >= 0 (0 = all devices)")
  _require(c.train_subset >= 0, "train_subset", c.train_subset, "must be >= 0 (0 = all)")
  _require(c.straggler_rule in server.STRAGGLER_RULES, "straggler_rule", c.straggler_rule,
           f"use one of {server.STRAGGLER_RULES}")
  _require(c.sampling in server.SAMPLINGS, "sampling", c.sampling,
           f"use one of {server.SAMPLINGS}")
  _require(c.weighting in server.WEIGHTINGS, "weighting", c.weighting,
           f"use one of {server.WEIGHTINGS}")
  return c


class Experiment(NamedTuple):
  train: FederatedData
  test_x: jax.Array
  test_y: jax.Array
  stats: dict


def _partition(c, labels):
  try:
    if c.iid:
      return partition.iid_partition(len(labels), c.num_clients, c.partition_seed)
    return partition.power_law_partition(labels, c.num_clients, c.labels_per_client,
                                         c.min_per_client, c.lognormal_sigma, c.partition_seed)
  except ValueError as e:
    raise ConfigError(f"cannot partition {len(labels)} training examples: {e}") from e


def prepare_experiment(c: ml_collections.ConfigDict, mnist: data_lib.Mnist) -> Experiment:
  """Partitions the data per ``c.protocol`` and puts train and test sets on the device once.

  * 'seed' (the Flower baseline): the 60k training set is partitioned; each client holds out
    int(n / (1 / client_val_fraction)) examples that never train (Flower's unused validation
    split); the 10k test set is the server's centralised test set; pixels normalised with
    mean 0.1307, std 0.3081.
  * 'paper' (the authors' code): train and test pooled (70k), each pixel standardised with the
    pooled mean and std (+0.001), partitioned, each client's examples shuffled and split
    90 % train / 10 % test; the test set is all clients' test splits together.
  """
  if c.protocol == "paper":
    images = np.concatenate([mnist.train_images, mnist.test_images])
    labels = np.concatenate([mnist.train_labels, mnist.test_labels])
    if c.train_subset:
      images, labels = images[:c.train_subset], labels[:c.train_subset]
    pixels = images.astype(np.float32)
    x_all = (pixels - pixels.mean(axis=0)) / (pixels.std(axis=0) + 0.001)
    split = _partition(c, labels)
    stats = partition.partition_stats(split, labels)
    rng = np.random.RandomState(c.partition_seed)
    train_parts, test_parts = [], []
    for o, n in zip(split.offsets, split.sizes):
      own = rng.permutation(split.order[o:o + n])
      n_train = int(0.9 * n)
      train_parts.append(own[:n_train])
      test_parts.append(own[n_train:])
    if min(len(t) for t in train_parts) < 1:
      raise ConfigError("protocol='paper' gives a client no training example after its 90/10 "
                        "split: raise min_per_client to at least 2")
    sizes = np.array([len(t) for t in train_parts], np.int32)
    train_order, test_order = np.concatenate(train_parts), np.concatenate(test_parts)
    train = FederatedData(
        x=jnp.asarray(x_all[train_order]), y=jnp.asarray(labels[train_order].astype(np.int32)),
        offsets=jnp.asarray(np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)),
        sizes=jnp.asarray(sizes))
    stats = {**stats, "train_examples": int(sizes.sum()), "test_examples": len(test_order),
             "max_train": int(sizes.max()), "paper": PAPER_STATS}
    return Experiment(train, jnp.asarray(x_all[test_order]),
                      jnp.asarray(labels[test_order].astype(np.int32)), stats)

  train_images, train_labels = mnist.train_images, mnist.train_labels
  if c.train_subset:
    train_images, train_labels = train_images[:c.train_subset], train_labels[:c.train_subset]
  split = _partition(c, train_labels)
  stats = partition.partition_stats(split, train_labels)
  train_split = partition.hold_out(split, c.client_val_fraction, c.partition_seed)
  # Clients become contiguous ranges of one array, which lives on the device once.
  train = FederatedData(
      x=jnp.asarray(data_lib.normalize(train_images[train_split.order])),
      y=jnp.asarray(train_labels[train_split.order].astype(np.int32)),
      offsets=jnp.asarray(train_split.offsets), sizes=jnp.asarray(train_split.sizes))
  stats = {**stats, "train_examples": int(train_split.sizes.sum()),
           "held_out_examples": int(split.sizes.sum() - train_split.sizes.sum()),
           "test_examples": len(mnist.test_labels), "max_train": int(train_split.sizes.max())}
  return Experiment(train, jnp.asarray(data_lib.normalize(mnist.test_images)),
                    jnp.asarray(mnist.test_labels.astype(np.int32)), stats)


def make_evaluate_fn(apply_fn, batch_size: int):
  """Jitted (params, x, y) -> (accuracy, mean loss), in batches of ``batch_size``."""
  return jax.jit(functools.partial(metrics.evaluate, apply_fn, batch_size=batch_size))


def default_eval_batch_size(model: str, backend: str | None = None) -> int:
  """Small batches for the CNN on CPU: its im2col patches of a big batch spill out of cache
  (10k test images: 0.84 s at batch 10, 2.1 s at batch 1000 on the 2-core CI CPU). The
  logistic regression is one matmul: big batches, few loop iterations."""
  if model == "cnn" and (backend or jax.default_backend()) == "cpu":
    return 10
  return 1000


def _format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 \
      else f"{seconds // 60}m{seconds % 60:02d}s"


def round_spec(c: ml_collections.ConfigDict, max_client_size: int,
               mesh: jax.sharding.Mesh | None = None) -> server.RoundSpec:
  """The static round settings of config ``c``; lanes rounded up to fill the mesh's devices."""
  lanes = c.num_lanes or server.default_num_lanes(c.clients_per_round)
  if mesh is not None:
    lanes = distributed.round_up(lanes, mesh)
  return server.RoundSpec(
      clients_per_round=c.clients_per_round, local_epochs=c.local_epochs,
      batch_size=c.batch_size, max_client_size=max_client_size, num_lanes=lanes,
      sampling=c.sampling, straggler_rule=c.straggler_rule, weighting=c.weighting, mesh=mesh)


class DivergenceError(Exception):
  """Training produced a non-finite loss or parameters."""


def _open_workdir(c: ml_collections.ConfigDict, workdir: str) -> bool:
  """Creates or checks ``workdir``; True when it holds an unfinished run of the same config."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, ".write_test")
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f"workdir {workdir!r} cannot be written ({e.strerror or e}): pass a "
                      "--workdir in a writable place") from e
  if os.path.exists(os.path.join(workdir, "summary.json")):
    raise ConfigError(f"workdir {workdir!r} holds a finished run: pass a new --workdir, or "
                      "delete the old one")
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    outputs.write_json(workdir, "config.json", c.to_dict())
    return False
  with open(config_path) as f:
    saved = json.load(f)
  now = json.loads(json.dumps(c.to_dict()))
  changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
  if changed:
    details = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
    raise ConfigError(f"workdir {workdir!r} holds an unfinished run with a different config "
                      f"({details}). Resume it with its own config, or pass a new --workdir.")
  return True


def run(c: ml_collections.ConfigDict, workdir: str, mnist: data_lib.Mnist | None = None,
        on_round=None) -> dict:
  """Runs the experiment of config ``c``, writing everything into ``workdir``; returns the summary.

  A ``workdir`` holding an unfinished run of the same config is resumed from its last good
  checkpoint and gives exactly the metrics of an uninterrupted run. ``mnist`` may be passed in
  (already loaded); ``on_round(round, row)`` is called after each evaluated round.
  """
  c = validate_config(c)
  # With several processes (hosts), process 0 writes the workdir, which must be shared.
  primary = jax.process_index() == 0
  if primary:
    resuming = _open_workdir(c, workdir)
    outputs.write_json(workdir, "environment.json", outputs.environment())
  distributed.barrier("workdir ready")
  if not primary:
    resuming = os.path.exists(os.path.join(workdir, "config.json"))
  start = time.perf_counter()

  if mnist is None:
    mnist = data_lib.load_mnist(c.data_source, c.data_dir, c.download)
  mesh = distributed.make_mesh(c.num_devices)
  replicate = distributed.replicator(mesh)
  exp = prepare_experiment(c, mnist)
  exp = exp._replace(train=replicate(exp.train), test_x=replicate(exp.test_x),
                     test_y=replicate(exp.test_y))
  if primary:
    outputs.write_json(workdir, "partition_stats.json", exp.stats)
  logging.info("partition: %s", partition.format_stats(exp.stats))
  if c.protocol == "paper":
    logging.info("the paper's table: %s", PAPER_STATS)

  model = models.make_model(c.model, c.conv_impl, mlr_init=c.mlr_init)
  init_key, rounds_key = jax.random.split(jax.random.key(c.seed))
  params = models.init_params(model, init_key)
  checkpoints = checkpoints_lib.Checkpoints(os.path.join(workdir, "checkpoints"))
  first_round = 1
  restored = checkpoints.restore_latest(params) if resuming else None
  if restored is not None:
    done, params = restored
    first_round = done + 1
    logging.info("resuming %s after round %d", workdir, done)
  params = replicate(params)
  rows = outputs.truncate_jsonl(workdir, "metrics.jsonl", first_round - 1) if primary else []
  spec = round_spec(c, exp.stats["max_train"], mesh)
  hp = replicate(server.HParams.create(c.lr, c.mu, c.stragglers_fraction, c.drop_stragglers,
                                           c.clients_per_round, c.weight_decay))
  round_fn = server.make_round_fn(model.apply, spec)
  evaluate = make_evaluate_fn(
      model.apply, min(c.eval_batch_size or default_eval_batch_size(c.model), len(exp.test_y)))
  writer = (outputs.TensorBoard(os.path.join(workdir, "tensorboard"))
            if c.tensorboard and primary else None)
  logging.info("model %s, %d lanes on %d device(s), backend %s; setup took %.1fs", c.model,
               spec.num_lanes, spec.mesh.size, jax.default_backend(), time.perf_counter() - start)

  loop_start = time.perf_counter()
  try:
    # The first non-finite round, tracked on the device: rounds between checkpoints and
    # evaluations are dispatched without waiting for the host.
    diverged_at = jnp.int32(0)
    for t in range(first_round, c.num_rounds + 1):
      params, m = round_fn(params, exp.train, hp,
                           replicate(jax.random.fold_in(rounds_key, t)))
      diverged_at = jnp.where((diverged_at == 0) & ~m.finite, t, diverged_at)
      save = t % c.checkpoint_every == 0 or t == c.num_rounds
      if not save and t % c.eval_every and t != c.num_rounds:
        continue
      if int(diverged_at):
        last = checkpoints.steps()
        raise DivergenceError(
            f"training diverged at round {int(diverged_at)}: the train loss or the parameters "
            f"are not finite (lr={c.lr}, mu={c.mu}). "
            + (f"The last good checkpoint is round {last[-1]} in {checkpoints.directory}. "
               if last else "No checkpoint was saved yet. ")
            + "Lower --config.lr (or raise --config.mu) and start a new --workdir.")
      if save:
        checkpoints.save(t, params)
      if t % c.eval_every and t != c.num_rounds:
        continue
      accuracy, test_loss = evaluate(params, exp.test_x, exp.test_y)
      m, accuracy, test_loss = jax.device_get((m, accuracy, test_loss))
      elapsed = time.perf_counter() - loop_start
      row = {
          "round": t, "test_accuracy": float(accuracy), "test_loss": float(test_loss),
          "train_loss": float(m.train_loss), "num_stragglers": int(m.num_stragglers),
          "num_aggregated": int(m.num_aggregated), "all_dropped": bool(m.all_dropped),
          "useful_steps": int(m.lanes.useful_steps),
          "executed_steps": int(m.lanes.executed_steps),
          "step_efficiency": float(m.lanes.useful_steps / max(m.lanes.executed_steps, 1)),
          "wall_time": elapsed,
      }
      if primary:
        outputs.append_jsonl(workdir, "metrics.jsonl", row)
      rows.append(row)
      if writer:
        writer.write(t, row)
      rate = (t - first_round + 1) / elapsed
      logging.info("round %d/%d  acc %.4f  test loss %.4f  train loss %.4f  stragglers %d%s  "
                   "%.2f rounds/s  ETA %s", t, c.num_rounds, row["test_accuracy"],
                   row["test_loss"], row["train_loss"], row["num_stragglers"],
                   "  (all dropped: global model kept)" if row["all_dropped"] else "", rate,
                   _format_duration((c.num_rounds - t) / rate))
      if on_round:
        on_round(t, row)
  finally:
    checkpoints.close()
    if writer:
      writer.close()

  total = time.perf_counter() - start
  rounds_run = c.num_rounds - first_round + 1
  summary = {
      "final_round": rows[-1]["round"], "final_test_accuracy": rows[-1]["test_accuracy"],
      "final_test_loss": rows[-1]["test_loss"],
      "best_test_accuracy": max(r["test_accuracy"] for r in rows),
      "rounds_loop_seconds": rows[-1]["wall_time"],
      "seconds_per_round": rows[-1]["wall_time"] / max(rounds_run, 1),
      "total_seconds": total, "seed": c.seed, "partition": exp.stats,
      "resumed_after_round": first_round - 1 if first_round > 1 else None,
      # 1 = the round compiled once for the whole run (JAX's jit cache entries).
      "round_compilations": round_fn._cache_size(),
  }
  if primary:
    outputs.write_json(workdir, "summary.json", summary)
    outputs.plot_metrics(rows, os.path.join(workdir, "metrics.png"),
                         f"{c.variant}: {c.model}, mu={c.mu}, stragglers={c.stragglers_fraction}")
  logging.info("done: final accuracy %.4f after %d rounds, %.1fs in all (%.3f s/round); "
               "outputs in %s", summary["final_test_accuracy"], c.num_rounds, total,
               summary["seconds_per_round"], workdir)
  return summary
