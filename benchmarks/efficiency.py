"""Packing efficiency (useful / executed client-steps) of the default config's rounds.

  python benchmarks/efficiency.py [--rounds=100] [--lanes=1,2,3,5,10] [--local_epochs=10]

Only plans and packs the rounds (no training): for each stragglers fraction and lane count,
the mean over rounds of useful steps, executed lane-steps, critical path and efficiency.
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
flags.DEFINE_integer("local_epochs", 10, "local epochs")
flags.DEFINE_integer("clients_per_round", 10, "clients per round")
F = flags.FLAGS


def main(argv):
  del argv
  c, exp = common.default_experiment(local_epochs=F.local_epochs,
                                     clients_per_round=F.clients_per_round)
  print(common.header())
  print(f"clients_per_round={c.clients_per_round} local_epochs={c.local_epochs} "
        f"batch={c.batch_size} rounds={F.rounds} (FedProx: stragglers keep partial work)")
  print(f"{'stragglers':>10} {'lanes':>5} {'useful':>8} {'executed':>9} {'critical':>9} "
        f"{'sequential':>10} {'efficiency':>10}")
  for fraction in map(float, F.stragglers):
    for lanes in map(int, F.lanes):
      spec = experiment.round_spec(c, exp.stats["max_train"], num_lanes=lanes)
      hp = experiment.hparams(c)._replace(stragglers_fraction=jnp.float32(fraction),
                                          drop_stragglers=jnp.bool_(False))

      @jax.jit
      def one(t, spec=spec, hp=hp):
        plan = rounds.plan_round(jax.random.fold_in(jax.random.key(c.seed), t), exp.train, hp, spec)
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
