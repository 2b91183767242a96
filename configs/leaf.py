"""The paper's LEAF federations: ``--config=configs/leaf.py:VARIANT --config.data_dir=DIR``, DIR
a LEAF folder holding ``train/`` and ``test/`` (the paper's zips, or LEAF's preprocessing with
the paper's flags: docs/guide.md#leaf).

The authors' protocol (protocol=paper) with the paper's settings per data set (its appendix and
the authors' plot_final_e20.py): 10 clients per round, batch 10, E = 20, and
  femnist      200 writers, multinomial logistic regression (26 outputs), lr 0.003, mu 1,
               200 rounds
  shakespeare  143 roles, the stacked LSTM (embedding 8, 2 x 256), lr 0.8, mu 0.001, 40 rounds
  sent140      772 users, frozen GloVe 300-d vectors of the first 25 words (--config.embeddings=
               PATH), 2 x LSTM 100, dense 30, one logit, lr 0.3, mu 0.01, 800 rounds
Runs are FedProx at 90 % stragglers (--config.algorithm=fedavg, fedprox_mu0, scaffold, ...:
the others); the sweeps are the paper's Figure 1 column of each: FedAvg, FedProx (mu = 0) and
FedProx (mu > 0) x stragglers 0, 0.5, 0.9:
  figure1_femnist, figure1_shakespeare, figure1_sent140
"""

import ml_collections

from configs import mnist

DATASETS = {
    "femnist": dict(data="femnist", model="mlr", num_clients=200, lr=0.003, mu=1.0,
                    num_rounds=200),
    "shakespeare": dict(data="shakespeare", model="stacked_lstm", num_clients=143, lr=0.8,
                        mu=0.001, num_rounds=40),
    "sent140": dict(data="sent140", model="sent140_lstm", num_clients=772, lr=0.3, mu=0.01,
                    num_rounds=800),
}
VARIANTS = {**{name: dict(mode="single") for name in DATASETS},
            **{f"figure1_{name}": dict(mode="sweep") for name in DATASETS}}


def get_config(variant: str = "femnist") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}: use configs/leaf.py:NAME with NAME one of "
                     f"{', '.join(VARIANTS)}")
  c = mnist.get_config("fedprox")  # the fields and their help: configs/mnist.py
  settings = DATASETS[variant.removeprefix("figure1_")]
  c.variant = variant
  c.update(dict(protocol="paper", data_dir="", clients_per_round=10, batch_size=10,
                stragglers_fraction=0.9, drop_stragglers=False, **settings))
  c.update(VARIANTS[variant])
  if c.mode == "sweep":
    c.sweep.mu = settings["mu"]
  return c
