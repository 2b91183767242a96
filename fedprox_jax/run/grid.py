"""A sweep's grid: its experiments (``GridPoint``: algorithm x stragglers x seed x partition,
and the federation or split), each one's traced hyper-parameters, and which of them
may share a compiled program (``statics``) and in what chunks (``programs``).

A run's algorithm follows the same rule (``Algorithm.proximal_mu``, its straggler rule): one
name means one algorithm in both modes.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from fedprox_jax.core import adaptive_mu, algorithms
from fedprox_jax.data import datasets
from fedprox_jax.errors import ConfigError
from fedprox_jax.run import config as config_lib
from fedprox_jax.run import experiment


@dataclasses.dataclass(frozen=True)
class GridPoint:
  """One experiment of a sweep: an algorithm of ``core/algorithms`` at a straggler level, a
  seed and a partition (and the federation or split, where the sweep has that axis)."""
  algorithm: str
  mu: float  # adaptive: the first round's
  drop_stragglers: bool
  stragglers_fraction: float
  seed: int
  adaptive: bool = False
  # The federation's name (sweep.federations: synthetic_A_B, synthetic_iid) or the split's
  # (sweep.splits: labeldir0.5, label2, ...); '' without
  federation: str = ""
  # The partition's seed (data=synthetic: the generator's); ``partition_axis``: the sweep draws
  # several, and the name says which.
  partition: int = 0
  partition_axis: bool = False

  @property
  def name(self) -> str:
    prefix = f"{self.federation}_" if self.federation else ""
    suffix = f"_p{self.partition}" if self.partition_axis else ""
    return f"{prefix}{self.algorithm}_s{self.stragglers_fraction:g}_seed{self.seed}{suffix}"

  @property
  def data_key(self) -> tuple:
    """Experiments with the same key share their data (and may share a program)."""
    return (self.federation, self.partition)

  @property
  def data_label(self) -> str:
    return "_".join(filter(None, [self.federation,
                                  f"partition{self.partition}" if self.partition_axis else ""]))


def data_config(c: ml_collections.ConfigDict, federation, partition: int
                ) -> ml_collections.ConfigDict:
  """``c`` with ``federation``'s config fields (``config.federations``: a split's partition
  fields, a synthetic federation's; None: c's own) and the partition seed ``partition``."""
  out = ml_collections.ConfigDict(c.to_dict())
  if federation is not None:
    out.update(federation)
  out.partition_seed = partition
  return out


def partition_seeds(c: ml_collections.ConfigDict, seed: int) -> list:
  """The partitions experiments of ``seed`` run on: its own (partition_per_seed), else
  partition_seed .. partition_seed + sweep.partitions - 1."""
  if c.sweep.partition_per_seed:
    return [seed]
  return list(range(c.partition_seed, c.partition_seed + c.sweep.partitions))


def experiment_grid(c: ml_collections.ConfigDict) -> list:
  """The sweep's experiments, from ``c.sweep`` (federations, partitions, stragglers,
  algorithms, seeds, mu), federation after federation, partition after partition."""
  chosen = config_lib.parse_list("algorithms", c.sweep.algorithms, str)
  try:
    chosen = [algorithms.get(a) for a in chosen]
  except ValueError as e:
    raise ConfigError(f"config.sweep.algorithms: {e}") from e
  fractions = config_lib.parse_list("stragglers", c.sweep.stragglers, float)  # checked there
  seeds = range(c.seed, c.seed + c.sweep.seeds)
  axis = c.sweep.partitions > 1 or c.sweep.partition_per_seed
  partitions = sorted({p for seed in seeds for p in partition_seeds(c, seed)})
  grid = []
  for name, federation in config_lib.federations(c).items():
    iid = datasets.get(c.data).identical_clients(data_config(c, federation, c.partition_seed))
    for partition in partitions:
      for fraction in fractions:
        for a in chosen:
          mu = a.proximal_mu(c.sweep.mu, adaptive_mu.initial_mu(iid)
                             if c.sweep.adaptive_mu_init is None else c.sweep.adaptive_mu_init)
          for seed in seeds:
            if partition in partition_seeds(c, seed):
              grid.append(GridPoint(a.name, mu, a.drop_stragglers, fraction, seed,
                                    a.mu_rule == "adaptive", name, partition, axis))
  return grid


def stacked_hparams(c, specs):
  """The experiments' hyper-parameters (``experiment.hparams`` of each grid point), stacked."""
  return jax.tree_util.tree_map(lambda *v: jnp.stack(v), *[
      experiment.hparams(c, algorithms.get(s.algorithm), mu=s.mu,
                         drop_stragglers=s.drop_stragglers,
                         stragglers_fraction=s.stragglers_fraction) for s in specs])


def statics(c: ml_collections.ConfigDict, point: GridPoint) -> tuple:
  """The static round parts of ``point``'s algorithm: experiments share a program only where
  these are equal (``algorithms.round_statics``)."""
  return tuple(sorted(algorithms.round_statics(algorithms.get(point.algorithm),
                                               c.momentum).items()))


def programs(c: ml_collections.ConfigDict, points: list, per_program: int) -> list:
  """[(data key, points)]: ``points`` in chunks of at most ``per_program``; a program never
  mixes data sets, nor algorithms whose rounds differ in their static parts."""
  out = []
  for key in dict.fromkeys(p.data_key for p in points):
    for kind in dict.fromkeys(statics(c, p) for p in points):
      own = [p for p in points if p.data_key == key and statics(c, p) == kind]
      out += [(key, own[first:first + per_program]) for first in range(0, len(own), per_program)]
  return out
