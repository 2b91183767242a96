"""NIID-Bench on MNIST (Li, Diao, Chen, He 2022, "Federated Learning on Non-IID Data Silos: An
Experimental Study"), with the protocol of Flower's ``baselines/niid_bench``:
``--config=configs/niid_bench.py:VARIANT``.

10 clients, all sampled every round, 50 rounds, 10 local epochs, batch 64, SGD lr 0.01 with
momentum 0.9 and weight decay 1e-5, NIID-Bench's CNN, the aggregate weighted by data size; the
grid is splits (NIID-Bench's partitions) x algorithms x seeds, as one sweep:
  grid     iid, labeldir0.5, label1, label2, label3 (Flower's five splits) x FedAvg, FedProx
           (mu 0.01), SCAFFOLD, FedNova x 3 seeds (60 experiments)
  mu_grid  the same with FedProx at each mu of NIID-Bench's search (0.001, 0.01, 0.1, 1)
  reduced  the CPU-sized grid of docs/results/niid_bench/: 10 rounds, 1 local epoch, 3 seeds
Each seed draws its own partitions (partition seed = seed, as NIID-Bench's --init_seed does).
Differences from Flower's code: pixels are normalised (mean 0.1307, std 0.3081; Flower uses
ToTensor only), the partitions draw from numpy's default_rng(seed) (theirs too) but not in
the same sequence of calls, and every client trains every round in one vmapped program.
"""

import ml_collections

from configs import mnist

ALGORITHMS = "fedavg,fedprox_mu0.01,scaffold,fednova"
# Flower's niid_bench splits (NIID-Bench's quantity skew, quantity0.5, can be added to the list)
SPLITS = "iid,labeldir0.5,label1,label2,label3"
VARIANTS = {
    "grid": dict(),
    "mu_grid": dict(algorithms="fedavg,fedprox_mu0.001,fedprox_mu0.01,fedprox_mu0.1,"
                               "fedprox_mu1,scaffold,fednova"),
    "reduced": dict(num_rounds=10, local_epochs=1),
}


def get_config(variant: str = "grid") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}: use configs/niid_bench.py:NAME with NAME one "
                     f"of {', '.join(VARIANTS)}")
  c = mnist.get_config("fedprox")  # the fields and their help: configs/mnist.py
  c.variant = f"niid_bench_{variant}"
  c.update(dict(
      mode="sweep", protocol="seed", model="niid_cnn", num_clients=10, clients_per_round=10,
      num_rounds=50, local_epochs=10, batch_size=64, lr=0.01, momentum=0.9, weight_decay=1e-5,
      mu=0.0, stragglers_fraction=0.0, client_val_fraction=0.0, weighting="samples",
      partition="labeldir", dirichlet_beta=0.5, eval_every=1, checkpoint_every=5))
  c.sweep.update(dict(algorithms=ALGORITHMS, stragglers="0", seeds=3, partition_per_seed=True,
                      splits=SPLITS, dissimilarity=False, global_train_loss=False))
  settings = dict(VARIANTS[variant])
  if "algorithms" in settings:
    c.sweep.algorithms = settings.pop("algorithms")
  c.update(settings)
  return c
