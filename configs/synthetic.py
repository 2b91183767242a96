"""FedProx / FedAvg on the paper's synthetic federations: ``--config=configs/synthetic.py:VARIANT``.

The authors' settings for them (litian96/FedProx run_fedprox.sh / run_fedavg.sh): 30 devices,
multinomial logistic regression 60 -> 10, lr 0.01, 200 rounds, 10 clients per round, E = 20,
B = 10, evaluation every round; their code's protocol (protocol=paper: sample weighting, the
exact straggler count, Glorot init, no weight decay). mu = 1 is the paper's for Synthetic.

Variants (one run, on Synthetic(1, 1) unless --config.synthetic.* says otherwise):
  fedprox      mu = 1, 90 % stragglers, their partial work kept
  fedavg       mu = 0, 90 % stragglers dropped
  adaptive     the paper's adaptive mu from mu = 0, no stragglers
Sweeps (one vmapped program per federation):
  heterogeneity  the paper's Figure 2 grid: Synthetic-IID, (0,0), (0.5,0.5), (1,1) x FedAvg,
                 FedProx mu=0, FedProx mu=1 x stragglers 0, 0.5, 0.9 x 5 seeds
  adaptive_mu    adaptive mu vs fixed mu = 0 and mu = 1 on the four federations, no stragglers
  mu_grid        the paper's appendix: FedProx with mu 0, 0.001, 0.01, 0.1, 1 on the four
                 federations x stragglers 0, 0.9
Every field can be overridden, e.g. --config.synthetic.alpha=0.5 --config.sweep.seeds=2.
"""

import ml_collections

from configs import mnist

FOUR_FEDERATIONS = "iid,0_0,0.5_0.5,1_1"
VARIANTS = {
    "fedprox": dict(mu=1.0, stragglers_fraction=0.9, drop_stragglers=False),
    "fedavg": dict(mu=0.0, stragglers_fraction=0.9, drop_stragglers=True),
    "adaptive": dict(mu=0.0, stragglers_fraction=0.0, drop_stragglers=False, adaptive_mu=True),
    "heterogeneity": dict(mode="sweep"),
    "adaptive_mu": dict(mode="sweep"),
    "mu_grid": dict(mode="sweep"),
}


def get_config(variant: str = "fedprox") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}: use configs/synthetic.py:NAME with NAME one "
                     f"of {', '.join(VARIANTS)}")
  c = mnist.get_config("fedprox")  # the fields and their help: configs/mnist.py
  c.variant = variant
  c.data = "synthetic"
  c.protocol = "paper"
  c.model = "mlr"
  c.synthetic.alpha, c.synthetic.beta, c.synthetic.iid = 1.0, 1.0, False
  c.num_clients = 30            # the paper's devices
  c.partition_seed = 0          # the generator's numpy seed
  c.lr = 0.01
  c.num_rounds = 200
  c.clients_per_round = 10
  c.batch_size = 10
  c.eval_every = 1
  c.sweep.mu = 1.0
  c.sweep.stragglers = "0,0.5,0.9"
  c.sweep.algorithms = "fedavg,fedprox_mu0,fedprox"
  c.sweep.federations = (FOUR_FEDERATIONS if variant in ("heterogeneity", "adaptive_mu", "mu_grid")
                         else "")
  if variant == "adaptive_mu":
    c.sweep.algorithms = "fedprox_mu0,fedprox,fedprox_adaptive"
    c.sweep.stragglers = "0"
  if variant == "mu_grid":
    c.sweep.algorithms, c.sweep.stragglers = mnist.MU_GRID, "0,0.9"
  c.update(VARIANTS[variant])
  return c
