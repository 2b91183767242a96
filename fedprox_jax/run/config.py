"""The config, resolved once: every field validated (the sweep's grid included), the
protocol's values (``protocols``) and the backend's defaults (``defaults``) filled in.

A ConfigError names the field, its value and what to use instead, before any work is done.
"""

from __future__ import annotations

import math

import ml_collections
import numpy as np

from fedprox_jax.core import algorithms, hooks as hooks_lib, models, rounds
from fedprox_jax.data import datasets, partition
from fedprox_jax.errors import ConfigError
from fedprox_jax.run import autotune, defaults, protocols

MAX_SEED = 2**31 - 1  # jax.random.key and numpy's RandomState both take it
# The log-normal shares' largest sigma: exp(sigma * 6 standard deviations) stays well inside
# float64 (sigma 1e12 made the shares inf, then NaN).
MAX_LOGNORMAL_SIGMA = 50.0


def require(ok: bool, field: str, value, what: str):
  if not ok:
    raise ConfigError(f"config.{field}={value!r}: {what}")


def _require_float32(field: str, value, positive: bool = False) -> None:
  """A finite number >= 0 (> 0 with ``positive``) that float32, the training's precision,
  holds as such: 1e-46 is 0 there (no training at all) and 1e39 is inf."""
  bound = "> 0" if positive else ">= 0"
  require(isinstance(value, (int, float)) and not isinstance(value, bool)
           and math.isfinite(value) and (value > 0 if positive else value >= 0), field, value,
           f"must be a finite number {bound}")
  as_trained = float(np.float32(value)) if abs(value) < 3.4e38 else math.inf
  tiny = float(np.finfo(np.float32).tiny)
  require(math.isfinite(as_trained) and (value == 0 or as_trained >= tiny), field, value,
           f"{'overflows to inf' if not math.isfinite(as_trained) else 'is too small'} in "
           f"float32, the precision training computes in: use a value from {tiny:.3g} to 3.4e38"
           + ("" if positive else " (or 0)"))


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


# The sweep's fields as configs/mnist.py sets them (tests/test_config_modes.py checks it): a
# run (mode='single') ignores them, so one set to anything else is refused.
SWEEP_DEFAULTS = {
    "algorithms": "fedavg,fedprox_mu0,fedprox", "stragglers": "0,0.5,0.9", "seeds": 5,
    "partitions": 1, "partition_per_seed": False, "mu": 1.0, "global_train_loss": True,
    "dissimilarity": True, "experiments_per_program": 0, "concurrent_programs": 0,
    "adaptive_mu_init": None, "splits": "", "federations": ""}
# A run's choice of algorithm, which a sweep takes from sweep.algorithms, sweep.mu and
# sweep.stragglers instead: refused when given to a sweep (``check_mode_fields``).
RUN_ONLY_FIELDS = ("algorithm", "mu", "stragglers_fraction", "drop_stragglers", "adaptive_mu")


def check_mode_fields(c: ml_collections.ConfigDict, given=()) -> None:
  """Refuses, in one line, a field the config's mode would ignore: a sweep field set for a run
  (a value other than ``SWEEP_DEFAULTS``, or named in ``given``), or a run's algorithm field
  for a sweep (``algorithm`` or ``adaptive_mu`` set, or any of ``RUN_ONLY_FIELDS`` in
  ``given``: the fields the command line overrode); and an algorithm's hyper-parameters where
  it does not run (``check_hparams``)."""
  if c.mode == "sweep":
    for field in RUN_ONLY_FIELDS:
      if field in given or (field == "algorithm" and c.algorithm) or (
          field == "adaptive_mu" and c.adaptive_mu):
        raise ConfigError(
            f"config.{field}={c[field]!r} applies to a run (mode='single'), and this is a "
            "sweep: it runs the algorithms of sweep.algorithms (fedprox with sweep.mu, "
            "fedprox_mu<value>, fedprox_adaptive, scaffold, ...) at the levels of "
            "sweep.stragglers; set those instead")
    check_hparams(c, given)
    return
  _check_run_algorithm(c, given)
  for field, default in SWEEP_DEFAULTS.items():  # a run
    if f"sweep.{field}" in given or (field in c.sweep and c.sweep[field] != default):
      raise ConfigError(
          f"config.sweep.{field}={c.sweep[field]!r} applies to a sweep, and this is a run "
          "(mode='single'), which would ignore it: add --config.mode=sweep to run the grid, "
          "or choose the run's algorithm with algorithm, mu, drop_stragglers and "
          "stragglers_fraction")
  check_hparams(c, given)


def named_algorithm(c: ml_collections.ConfigDict) -> algorithms.Algorithm:
  """The registered algorithm ``c.algorithm`` names, or one line naming the registered ones."""
  try:
    return algorithms.get(c.algorithm)
  except ValueError as e:
    raise ConfigError(f"config.algorithm: {e}") from e


def _check_run_algorithm(c: ml_collections.ConfigDict, given) -> None:
  """Refuses a run's ``mu``, ``drop_stragglers`` or ``adaptive_mu`` named on the command line
  with a value the named ``algorithm``'s own rule replaces (as in a sweep, where the name
  alone says what runs): it would be ignored."""
  if not c.algorithm or not set(given) & {"mu", "drop_stragglers", "adaptive_mu"}:
    return
  a = named_algorithm(c)
  own = {"mu": a.proximal_mu(c.mu, c.mu), "drop_stragglers": a.drop_stragglers,
         "adaptive_mu": a.mu_rule == "adaptive"}
  for field, value in own.items():
    if field in given and c[field] != value:
      raise ConfigError(
          f"config.{field}={c[field]!r} does not apply to algorithm={c.algorithm!r}, which "
          f"runs with {field}={value!r} as it does in a sweep ({a.description}): leave "
          f"{field} unset, or set --config.algorithm='' to choose mu, drop_stragglers and "
          "adaptive_mu freely")


def algorithms_run(c: ml_collections.ConfigDict) -> list:
  """The registered algorithms ``c`` runs: a run's ``algorithm`` (FedProx's machinery for '',
  the family mu and drop_stragglers choose), a sweep's ``sweep.algorithms``."""
  if c.mode == "sweep":
    return [algorithms.get(a) for a in parse_list("algorithms", c.sweep.algorithms, str)]
  return [algorithms.get(c.algorithm) if c.algorithm else algorithms.FEDPROX]


def check_hparams(c: ml_collections.ConfigDict, given=()) -> None:
  """Refuses, in one line, a hyper-parameter of an algorithm ``c`` does not run (set to another
  value than its default, or named in ``given``) and a bad value of one it runs. Returns
  quietly while an algorithm name is wrong: ``resolve`` names that first."""
  try:
    running = {a.name: a for a in algorithms_run(c)}
  except (ValueError, ConfigError):
    return
  for name, values in (c.hparams.to_dict() if "hparams" in c else {}).items():
    a = running.get(name)
    if a is None:
      default = algorithms.get(name).hparams._asdict() if name in algorithms.REGISTRY else {}
      for field, value in values.items():
        if f"hparams.{name}.{field}" in given or default.get(field) != value:
          raise ConfigError(
              f"config.hparams.{name}.{field}={value!r} applies to the algorithm {name}, "
              f"which this {'sweep' if c.mode == 'sweep' else 'run'} does not run: "
              + ("add it to sweep.algorithms" if c.mode == "sweep" else
                 f"add --config.algorithm={name}") + ", or leave the field unset")
      continue
    unknown = set(values) - set(a.hparams._fields)
    require(not unknown, f"hparams.{name}", values, f"{name} has no field "
            f"{', '.join(sorted(unknown))}: its fields are {', '.join(a.hparams._fields)}")
    problem = hooks_lib.check_hparams(a.hooks, type(a.hparams)(**values))
    if problem:
      raise ConfigError(f"config.hparams.{name}.{problem}")


def _keep_hparams_run(c: ml_collections.ConfigDict) -> None:
  """``c.hparams``: exactly the blocks of the algorithms ``c`` runs, complete (what ran is
  what config.json records; an algorithm registered after the config was built gets its
  defaults)."""
  given = c.hparams.to_dict() if "hparams" in c else {}
  kept = {a.name: {**a.hparams._asdict(), **given.get(a.name, {})} for a in algorithms_run(c)
          if a.hparams._fields}
  if "hparams" in c:
    del c["hparams"]
  c.hparams = ml_collections.ConfigDict(kept)


def as_run(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of ``c`` as a run (mode='single') with the sweep's fields at their defaults: one
  experiment with a sweep config's settings (a benchmark's, a test's)."""
  out = ml_collections.ConfigDict(c.to_dict())
  out.mode = "single"
  out.sweep.update(SWEEP_DEFAULTS)
  return out


PARTITIONS = partition.PARTITIONS  # how the training set is split (``partition.split``)


def resolve(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks every field, the sweep's grid included, before any work is done; returns a copy
  with its protocol's values and the backend's defaults (``defaults``) in the fields it left
  unset: the config a run actually uses. Only what depends on the data or the devices (the
  paths the CPU autotuner measures for the data's shapes, ``fill_measured``; the batch and
  lanes capped to the clients, the evaluation batch to the test set, lanes rounded to the
  devices, whether the data is the published one) is filled in later, by
  ``experiment.prepare``.

  Args:
    c: a config of ``configs/`` (with the user's overrides).
  Returns:
    The resolved copy; ``c`` is not changed.
  Raises:
    ConfigError: one line naming the field, its value and what to use instead.
  """
  require(c.protocol in protocols.PROTOCOLS, "protocol", c.protocol,
           f"use one of {protocols.PROTOCOLS}")
  c = protocols.resolve(c)
  _check_model(c)
  require(c.mode in ("single", "sweep"), "mode", c.mode, "use 'single' or 'sweep'")
  _check_data(c)
  _check_counts(c)
  _check_partition(c)
  _check_algorithm(c)
  _check_round_rules(c)
  _check_sweep_fields(c)
  _check_grid(c)
  check_mode_fields(c)  # after the values' own checks: a bad value is named as such first
  _keep_hparams_run(c)
  return _fill_defaults(c)


def _check_model(c: ml_collections.ConfigDict) -> None:
  """The model by name and its options."""
  require(c.model in models.REGISTRY, "model", c.model,
          f"use one of {tuple(models.REGISTRY)} (or register your own: docs/extending.md)")
  model = models.get(c.model)
  require(c.mlr_init in models.MLR_INITS, "mlr_init", c.mlr_init,
           f"use one of {models.MLR_INITS}")
  for field in ("conv_impl", "eval_conv_impl"):  # "none": a model without a convolution's
    allowed = ("auto",) + models.CONV_IMPLS + (("none",) if not model.convolutional else ())
    require(c[field] in allowed, field, c[field], f"use one of {allowed}")


def _check_data(c: ml_collections.ConfigDict) -> None:
  """The data set by name, its own rules (its entry's ``check``), and the fields of
  other data sets or of another kind of data set (federations, splits), refused."""
  require(c.data in datasets.REGISTRY, "data", c.data,
          f"use one of {tuple(datasets.REGISTRY)} (or register your own: docs/extending.md)")
  dataset = datasets.get(c.data)
  if dataset.check is not None:
    dataset.check(c)
  for name, other in datasets.REGISTRY.items():
    for field in other.own_fields if name != c.data else ():
      require(not c[field], field, c[field], f"applies to data={name!r} only: leave it unset")
  if dataset.federations is None:
    federated = [n for n, d in datasets.REGISTRY.items() if d.federations is not None]
    require(not c.sweep.federations, "sweep.federations", c.sweep.federations,
            f"applies to data={' or '.join(map(repr, federated))} only")
    require(not c.sweep.splits or c.mode == "sweep", "sweep.splits", c.sweep.splits,
            "applies to mode='sweep' only: a run takes --config.partition")
  else:
    require(not c.sweep.splits, "sweep.splits", c.sweep.splits, f"data={c.data!r} comes "
            "partitioned into federations: a sweep takes them from sweep.federations")


def _check_counts(c: ml_collections.ConfigDict) -> None:
  """The counts and seeds."""
  for field in ("num_clients", "clients_per_round", "num_rounds", "local_epochs", "batch_size",
                "eval_every", "labels_per_client", "min_per_client", "checkpoint_every"):
    require(_is_int(c[field]) and c[field] >= 1, field, c[field], "must be an integer >= 1")
  for field in ("seed", "partition_seed"):
    require(_is_int(c[field]) and 0 <= c[field] <= MAX_SEED, field, c[field],
             f"must be an integer from 0 to {MAX_SEED}")


def _check_partition(c: ml_collections.ConfigDict) -> None:
  """How the training set is split over the clients."""
  require(c.partition in PARTITIONS, "partition", c.partition, f"use one of {PARTITIONS}")
  if c.iid:
    require(c.partition in ("power_law", "iid"), "iid", c.iid,
            f"iid=True is partition=iid; it cannot be combined with partition={c.partition}")
    c.partition = "iid"
  if c.partition in ("labeldir", "quantity"):
    require(math.isfinite(c.dirichlet_beta) and c.dirichlet_beta > 0, "dirichlet_beta",
            c.dirichlet_beta, "must be a finite number > 0 (smaller: more skew; NIID-Bench "
            "uses 0.5)")
  classes = datasets.get(c.data).num_classes  # None: known once the data is read
  require(classes is None or c.labels_per_client <= classes, "labels_per_client",
          c.labels_per_client, f"must be between 1 and {classes}")
  require(c.clients_per_round <= c.num_clients, "clients_per_round", c.clients_per_round,
           f"cannot exceed num_clients={c.num_clients}")
  require(isinstance(c.lognormal_sigma, (int, float)) and math.isfinite(c.lognormal_sigma)
          and 0 < c.lognormal_sigma <= MAX_LOGNORMAL_SIGMA, "lognormal_sigma",
          c.lognormal_sigma, f"must be > 0, finite and at most {MAX_LOGNORMAL_SIGMA:g} (the "
          "seed's 2; above ~10 one client already holds nearly all of a digit)")


def _check_algorithm(c: ml_collections.ConfigDict) -> None:
  """The local solver's numbers, the algorithm by name (a run's name sets mu and the
  straggler rule as in a sweep: config.json records the values used) and the server's."""
  _require_float32("lr", c.lr, positive=True)
  _require_float32("mu", c.mu)
  _require_float32("weight_decay", c.weight_decay)
  if c.algorithm:
    chosen = named_algorithm(c)
    require(not c.adaptive_mu or chosen.mu_rule == "adaptive", "adaptive_mu", c.adaptive_mu,
            f"applies to FedProx (algorithm='' or 'fedprox_adaptive'), not to "
            f"algorithm={c.algorithm}")
    require(c.mode != "single" or chosen.mu_rule != "config" or c.mu > 0, "mu", c.mu,
            f"algorithm={c.algorithm!r} is FedProx with mu > 0, as in a sweep: set "
            "--config.mu, or use algorithm='fedprox_mu0' (FedProx without the proximal term)")
    if c.mode == "single":
      # The name means what it means in sweep.algorithms: its own mu and straggler rule
      # (config.json records the values used, the server's learning rate too).
      c.mu = chosen.proximal_mu(c.mu, c.mu)
      c.drop_stragglers = chosen.drop_stragglers
      c.adaptive_mu = chosen.mu_rule == "adaptive"
      if c.server_lr is None:
        c.server_lr = chosen.server_lr
  require(0 <= c.momentum < 1, "momentum", c.momentum, "must be in [0, 1) (NIID-Bench: 0.9)")
  if c.server_lr is not None:
    _require_float32("server_lr", c.server_lr, positive=True)
  require(0 <= c.server_momentum < 1, "server_momentum", c.server_momentum, "must be in [0, 1)")
  require(0 <= c.server_beta2 < 1, "server_beta2", c.server_beta2, "must be in [0, 1)")
  _require_float32("server_tau", c.server_tau, positive=True)


def _check_round_rules(c: ml_collections.ConfigDict) -> None:
  """The round's rules: hold-out, stragglers, lanes, sampling and weighting."""
  require(0 <= c.client_val_fraction < 1, "client_val_fraction", c.client_val_fraction,
           "must be in [0, 1)")
  require(c.protocol == "seed" or c.client_val_fraction == 0, "client_val_fraction",
           c.client_val_fraction, "applies to protocol='seed' only (protocol='paper' holds out "
           "10 % of each client as its test set already): leave it unset")
  require(0 <= c.stragglers_fraction <= 1, "stragglers_fraction", c.stragglers_fraction,
           "must be between 0 and 1")
  require(isinstance(c.inexactness, bool), "inexactness", c.inexactness, "must be True or False")
  for field, what in (("num_lanes", "backend default"), ("eval_batch_size", "backend default"),
                      ("num_devices", "all devices"), ("train_subset", "all")):
    require(_is_int(c[field]) and c[field] >= 0, field, c[field],
             f"must be an integer >= 0 (0 = {what})")
  require(c.straggler_rule in rounds.STRAGGLER_RULES, "straggler_rule", c.straggler_rule,
           f"use one of {rounds.STRAGGLER_RULES}")
  require(c.straggler_work in rounds.STRAGGLER_WORK, "straggler_work", c.straggler_work,
           f"use one of {rounds.STRAGGLER_WORK}")
  require(c.straggler_work == "epochs" or c.straggler_rule == "exact", "straggler_work",
           c.straggler_work, "'iterations' is the authors' alternative: use it with "
           "straggler_rule='exact' (the seed's Bernoulli rule has no stragglers at E = 1)")
  require(c.sampling in rounds.SAMPLINGS, "sampling", c.sampling,
           f"use one of {rounds.SAMPLINGS}")
  require(c.weighting in rounds.WEIGHTINGS, "weighting", c.weighting,
           f"use one of {rounds.WEIGHTINGS}")


def _check_sweep_fields(c: ml_collections.ConfigDict) -> None:
  """The sweep's own fields (checked for runs too: a typo never waits for mode=sweep)."""
  s = c.sweep
  require(s.adaptive_mu_init is None or (s.adaptive_mu_init >= 0
                                           and math.isfinite(s.adaptive_mu_init)),
           "sweep.adaptive_mu_init", s.adaptive_mu_init, "must be a finite number >= 0 "
           "(or unset for the paper's: 1 on Synthetic-IID, 0 otherwise)")
  require(s.mu > 0 and math.isfinite(s.mu), "sweep.mu", s.mu,
           "must be a finite number > 0 (the 'fedprox' algorithm is FedProx with mu > 0; "
           "'fedprox_mu0' is the mu = 0 one)")
  _require_float32("sweep.mu", s.mu, positive=True)
  require(_is_int(s.seeds) and 1 <= s.seeds <= MAX_SEED + 1, "sweep.seeds", s.seeds,
           f"must be an integer >= 1 (and <= {MAX_SEED + 1})")
  require(_is_int(s.partitions) and 1 <= s.partitions <= MAX_SEED + 1, "sweep.partitions",
           s.partitions, "must be an integer >= 1 (the number of partition draws)")
  require(isinstance(s.partition_per_seed, bool), "sweep.partition_per_seed",
           s.partition_per_seed, "must be True or False")
  require(not (s.partition_per_seed and s.partitions > 1), "sweep.partitions", s.partitions,
           "sweep.partition_per_seed=True draws one partition per seed already: leave "
           "sweep.partitions at 1 (or set partition_per_seed=False for partitions x seeds)")
  if c.mode == "sweep":
    require(c.partition_seed + s.partitions - 1 <= MAX_SEED, "partition_seed", c.partition_seed,
             f"a sweep draws partitions partition_seed .. partition_seed + sweep.partitions - 1 "
             f"= {c.partition_seed + s.partitions - 1}, past {MAX_SEED}: use partition_seed <= "
             f"{MAX_SEED - s.partitions + 1} (or fewer sweep.partitions)")
    require(c.seed + s.seeds - 1 <= MAX_SEED, "seed", c.seed,
             f"a sweep runs seeds seed .. seed + sweep.seeds - 1 = {c.seed + s.seeds - 1}, past "
             f"{MAX_SEED}: use seed <= {MAX_SEED - s.seeds + 1} (or fewer sweep.seeds)")
  require(_is_int(s.experiments_per_program) and s.experiments_per_program >= 0,
           "sweep.experiments_per_program", s.experiments_per_program,
           "must be an integer >= 0 (0 = backend default)")
  require(_is_int(s.concurrent_programs) and s.concurrent_programs >= 0,
           "sweep.concurrent_programs", s.concurrent_programs,
           "must be an integer >= 0 (0 = backend default)")


def _check_grid(c: ml_collections.ConfigDict) -> None:
  """The sweep's axes: every algorithm registered, every straggler level in [0, 1], every
  federation's name well formed (checked for runs too: a typo never waits for mode=sweep)."""
  try:
    [algorithms.get(a) for a in parse_list("algorithms", c.sweep.algorithms, str)]
  except ValueError as e:
    raise ConfigError(f"config.sweep.algorithms: {e}") from e
  for f in parse_list("stragglers", c.sweep.stragglers, float):
    if not 0 <= f <= 1:
      raise ConfigError(f"config.sweep.stragglers: {f} is not between 0 and 1")
  federations(c)


def _measured(c: ml_collections.ConfigDict) -> bool:
  """Whether set-up times this config's paths on this machine (``fill_measured``): on a CPU
  with ``autotune``, a convolutional model with a path left to choose."""
  return bool(c.autotune and models.get(c.model).convolutional and defaults.autotuned()
              and (c.conv_impl == "auto" or c.eval_conv_impl == "auto"
                   or (c.num_lanes == 0 and c.mode == "single")))


def _fill_defaults(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The backend's defaults (``defaults``) in the fields left at 'auto' or 0, except those
  set-up measures once it knows the data's shapes (``fill_measured``)."""
  c.eval_batch_size = c.eval_batch_size or defaults.eval_batch_size(models.get(c.model))
  if not _measured(c):
    return fill_measured(c, None, None)
  if c.mode == "sweep":  # a sweep keeps its lanes: its programs already share the cores
    c.num_lanes = c.num_lanes or defaults.num_lanes(c.clients_per_round)
  return c


def fill_measured(c: ml_collections.ConfigDict, input_shape, num_classes) -> ml_collections.ConfigDict:
  """The fields ``resolve`` left for set-up (``c``'s, changed and returned): on a CPU with
  ``autotune``, a convolutional model's paths as measured on this machine for the data's
  ``input_shape`` and ``num_classes`` (``autotune``, cached); else the table's."""
  convolutional = models.get(c.model).convolutional
  tuned = None
  if _measured(c):
    max_lanes = min(autotune.MAX_LANES, c.clients_per_round) if c.mode == "single" else 1
    tuned = autotune.choose(c.model, c.batch_size, max_lanes, c.eval_batch_size,
                            tuple(input_shape), num_classes)
    c.autotuned = tuned.describe()
  c.conv_impl = ("none" if not convolutional  # e.g. the logistic regression: no convolution
                 else c.conv_impl if c.conv_impl != "auto"
                 else tuned.conv_impl if tuned else defaults.conv_impl())
  c.eval_conv_impl = ("none" if not convolutional
                      else c.eval_conv_impl if c.eval_conv_impl != "auto"
                      else tuned.eval_conv_impl if tuned else defaults.eval_conv_impl())
  # The lanes were timed with the chosen convolution: another one keeps the table's.
  lanes_tuned = tuned and c.mode == "single" and c.conv_impl == tuned.conv_impl
  c.num_lanes = c.num_lanes or (tuned.num_lanes if lanes_tuned
                                else defaults.num_lanes(c.clients_per_round))
  return c


def parse_list(field: str, value, cast):
  try:
    items = [cast(v) for v in str(value).replace(" ", "").split(",") if v != ""]
  except ValueError as e:
    raise ConfigError(f"config.sweep.{field}={value!r}: not a comma-separated list "
                               f"({e})") from e
  if not items:
    raise ConfigError(f"config.sweep.{field} is empty")
  repeated = sorted({v for v in items if items.count(v) > 1})
  if repeated:
    raise ConfigError(f"config.sweep.{field}={value!r} lists {', '.join(map(str, repeated))} "
                      "more than once: list each once")
  return items


def split_fields(name: str, num_classes: int | None = partition.NUM_CLASSES) -> dict:
  """The partition fields a split of ``sweep.splits`` names: iid, power_law, labeldir<beta>,
  label<k> (NIID-Bench's #C = k), quantity<beta>."""
  hint = ("use iid, power_law, labeldir<beta> (e.g. labeldir0.5), label<k> (e.g. label2) or "
          "quantity<beta> (e.g. quantity0.5)")
  if name in ("iid", "power_law"):
    return {"partition": name}
  for prefix, partition_name, field, cast in (
      ("labeldir", "labeldir", "dirichlet_beta", float),
      ("label", "label_count", "labels_per_client", int),
      ("quantity", "quantity", "dirichlet_beta", float)):
    if name.startswith(prefix):
      try:
        value = cast(name[len(prefix):])
      except ValueError:
        raise ConfigError(f"config.sweep.splits: {name!r} is not a split: {hint}") from None
      ok = (1 <= value <= (num_classes or value)) if cast is int else (
          math.isfinite(value) and value > 0)
      if not ok:
        raise ConfigError(f"config.sweep.splits: {name!r}: "
                          + ((f"k must be from 1 to {num_classes}" if num_classes else
                              "k must be at least 1") if cast is int
                             else "beta must be a finite number > 0"))
      return {"partition": partition_name, field: value}
  raise ConfigError(f"config.sweep.splits: {name!r} is not a split: {hint}")


def federations(c: ml_collections.ConfigDict) -> dict:
  """{name: config fields} of the data sets a sweep runs on, each one of its own: a data set
  that comes partitioned (its entry's ``federations``) gives them for ``c.sweep.federations``
  (else the config's own one); one split by ``config.partition`` gives ``c.sweep.splits``'
  partition fields (NIID-Bench's partitions as a sweep axis), else {"": None}."""
  dataset = datasets.get(c.data)
  if dataset.federations is None:
    if c.mode != "sweep" or not c.sweep.splits:
      return {"": None}
    splits = {name: split_fields(name, dataset.num_classes)
              for name in parse_list("splits", c.sweep.splits, str)}
    _refuse_same("splits", {n: tuple(sorted(f.items())) for n, f in splits.items()})
    return splits
  if not c.sweep.federations:
    return dict([dataset.federations(c, None)])
  out, canonical = {}, {}
  for item in parse_list("federations", c.sweep.federations, str):
    try:
      name, fields = dataset.federations(c, item)
    except ValueError as e:
      raise ConfigError(f"config.sweep.federations: {e}") from e
    canonical[item] = name
    out[name] = fields
  _refuse_same("federations", canonical)
  return out


def _refuse_same(field: str, canonical: dict) -> None:
  """Two names of one axis that mean the same data set (label2 and label02, labeldir0.5 and
  labeldir0.50) would run it twice as two: refused."""
  seen = {}
  for name, value in canonical.items():
    if value in seen:
      raise ConfigError(f"config.sweep.{field}: {seen[value]!r} and {name!r} are the same "
                        "data set written two ways: list it once")
    seen[value] = name
