"""Packing efficiency (useful / executed client-steps) of the default config's rounds.

  python benchmarks/efficiency.py [--rounds=100] [--lanes=1,2,3,5,10] [--local_epochs=10]
  python benchmarks/efficiency.py --sizes=shakespeare [--lanes=1,2,4,8]

Only plans and packs the rounds (no training): for each stragglers fraction and lane count,
the mean over rounds of useful steps, executed lane-steps, critical path and efficiency.
``--sizes=shakespeare``: configs/leaf.py:shakespeare's rules (E = 20, batch 10, the authors'
exact stragglers) on 143 clients whose sizes are log-normal with the paper's Shakespeare
statistics (mean 3,616, std 6,808 samples per device; 80 % of each trains: LEAF's -tf 0.8),
the real folder's sizes being out of reach here.
"""

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import common
from fedprox_jax.core import rounds
from fedprox_jax.run import experiment
from fedprox_jax.core.lanes import pack_lanes

flags.DEFINE_integer("rounds", 100, "rounds to plan")
flags.DEFINE_list("lanes", ["1", "2", "3", "5", "10"], "lane counts")
flags.DEFINE_list("stragglers", ["0", "0.5", "0.9"], "stragglers fractions")
flags.DEFINE_integer("local_epochs", 10, "local epochs (--sizes=shakespeare: 0 = its 20)")
flags.DEFINE_integer("clients_per_round", 10, "clients per round")
flags.DEFINE_enum("sizes", "mnist", ["mnist", "shakespeare"], "the clients' sizes")
F = flags.FLAGS


def _shakespeare_like(seed: int = 0):
  """(config, Federation-like) with 143 log-normal client sizes of the paper's mean and std."""
  import sys
  from configs import leaf
  from fedprox_jax.core.client import FederatedData
  from fedprox_jax.run import config as config_lib
  mean, std = 3616.0, 6808.0
  sigma = np.sqrt(np.log(1 + (std / mean) ** 2))
  sizes = np.random.default_rng(seed).lognormal(np.log(mean) - sigma ** 2 / 2, sigma, 143)
  sizes = np.maximum(1, (0.8 * sizes).astype(np.int32))
  c = leaf.get_config("shakespeare")
  c.update(dict(data_dir="unused", local_epochs=F.local_epochs or 20))
  c = config_lib.resolve(c)
  offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
  train = FederatedData(jnp.zeros((int(sizes.sum()), 1)), jnp.zeros(int(sizes.sum()), jnp.int32),
                        jnp.asarray(offsets), jnp.asarray(sizes))
  print(f"sizes: {len(sizes)} clients, mean {sizes.mean():.0f}, std {sizes.std():.0f}, "
        f"max {sizes.max()} training examples", file=sys.stdout)
  return c, {"train": train, "max_train": int(sizes.max())}


def main(argv):
  del argv
  if F.sizes == "shakespeare":
    c, exp = _shakespeare_like()
    train, max_train = exp["train"], exp["max_train"]
  else:
    c, exp = common.default_experiment(local_epochs=F.local_epochs,
                                       clients_per_round=F.clients_per_round)
    train, max_train = exp.train, exp.stats["max_train"]
  print(common.header())
  print(f"clients_per_round={c.clients_per_round} local_epochs={c.local_epochs} "
        f"batch={c.batch_size} rounds={F.rounds} (FedProx: stragglers keep partial work)")
  print(f"{'stragglers':>10} {'lanes':>5} {'useful':>8} {'executed':>9} {'critical':>9} "
        f"{'sequential':>10} {'efficiency':>10}")
  for fraction in map(float, F.stragglers):
    for lanes in map(int, F.lanes):
      spec = experiment.round_spec(c, max_train, num_lanes=lanes)
      # (the 'exact' rule's straggler count follows the fraction: built, not replaced)
      hp = experiment.hparams(c, stragglers_fraction=fraction, drop_stragglers=False)

      @jax.jit
      def one(t, spec=spec, hp=hp):
        plan = rounds.plan_round(jax.random.fold_in(jax.random.key(c.seed), t), train, hp, spec)
        steps = plan.steps
        _, load = pack_lanes(steps, spec.num_lanes)
        return jnp.sum(steps), jnp.max(load) * spec.num_lanes, jnp.max(steps), jnp.max(load)

      useful, executed, critical, sequential = np.array(
          [jax.device_get(one(t)) for t in range(1, F.rounds + 1)]).T
      print(f"{fraction:>10.1f} {lanes:>5d} {useful.mean():>8.1f} {executed.mean():>9.1f} "
            f"{critical.mean():>9.1f} {sequential.mean():>10.1f} "
            f"{useful.sum() / executed.sum():>10.3f}")


if __name__ == "__main__":
  app.run(main)
