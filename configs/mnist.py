"""FedProx / FedAvg on MNIST: ``--config=configs/mnist.py:VARIANT``.

Variants (defaults follow the seed baseline, Flower's fedprox):
  fedprox      mu = 1.0, 90 % stragglers, stragglers' partial work kept
  fedavg       mu = 0,   90 % stragglers, stragglers dropped
  fedprox_mu0  mu = 0,   90 % stragglers, stragglers' partial work kept
Sweeps (the paper's Figure 1 grid: FedAvg, FedProx mu=0, FedProx mu>0 x stragglers 0, 0.5,
0.9 x seeds, run as vmapped programs):
  figure1        the seed protocol with the CNN
  figure1_paper  the authors' protocol with logistic regression, 20 local epochs
Every field can be overridden: --config.mu=0.5 --config.num_rounds=200 --config.model=mlr
--config.sweep.seeds=3 --config.sweep.stragglers=0,0.9
"""

import ml_collections

VARIANTS = {
    "fedprox": dict(mu=1.0, stragglers_fraction=0.9, drop_stragglers=False),
    "fedavg": dict(mu=0.0, stragglers_fraction=0.9, drop_stragglers=True),
    "fedprox_mu0": dict(mu=0.0, stragglers_fraction=0.9, drop_stragglers=False),
    "figure1": dict(mode="sweep", protocol="seed", model="cnn", eval_every=5),
    "figure1_paper": dict(mode="sweep", protocol="paper", model="mlr", local_epochs=20),
}


def get_config(variant: str = "fedprox") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}: use configs/mnist.py:NAME with NAME one of "
                     f"{', '.join(VARIANTS)}")
  c = ml_collections.ConfigDict()
  c.variant = variant
  c.mode = "single"          # single | sweep (the grid of c.sweep)
  # Data.
  c.protocol = "seed"        # seed (Flower: 60k partitioned, 10k central test) | paper (authors)
  c.data_source = "tfds"     # tfds | idx (a directory of the four raw IDX files)
  c.data_dir = ""            # tfds: a TFDS data dir ('' = $TFDS_DATA_DIR or TFDS's default)
  c.download = True          # tfds: download MNIST when it is not in the data dir
  c.train_subset = 0         # use only the first N training examples (0 = all), for quick runs
  # Partition.
  c.num_clients = 1000
  c.iid = False
  c.labels_per_client = 2
  c.min_per_client = 10
  c.lognormal_sigma = 2.0
  c.partition_seed = 42      # the seed baseline's numpy seed: its exact partition
  # Model.
  c.model = "cnn"            # cnn | mlr
  c.conv_impl = "auto"       # auto | im2col | xla
  # Federated optimisation.
  c.num_rounds = 100
  c.clients_per_round = 10
  c.local_epochs = 10
  c.batch_size = 10
  c.lr = 0.03
  c.mu = 1.0
  c.stragglers_fraction = 0.9
  c.drop_stragglers = False
  c.straggler_rule = "exact"  # exact (the authors') | bernoulli (the seed's)
  c.sampling = "uniform"      # uniform | weighted (probability ∝ client size)
  c.weighting = "samples"     # samples (∝ n_k) | uniform
  c.num_lanes = 0             # vmap lanes the clients are packed into (0 = backend default)
  c.num_devices = 0           # devices to spread lanes / a sweep's experiments over (0 = all)
  # Evaluation and bookkeeping.
  c.eval_every = 1
  c.eval_batch_size = 0       # test-set batch (0 = backend default: 10 on CPU, 1000 otherwise)
  c.checkpoint_every = 10    # rounds between checkpoints (and at the end); resume = same --workdir
  c.tensorboard = True       # TensorBoard event files in WORKDIR/tensorboard
  c.seed = 0                 # a sweep runs seeds seed .. seed + sweep.seeds - 1
  # Sweeps (mode='sweep').
  c.sweep = ml_collections.ConfigDict()
  c.sweep.algorithms = "fedavg,fedprox_mu0,fedprox"  # fedprox uses sweep.mu
  c.sweep.stragglers = "0,0.5,0.9"
  c.sweep.seeds = 5
  c.sweep.mu = 1.0
  c.sweep.dissimilarity = True        # log mean_k ||grad f_k - grad f||^2 at each evaluation
  c.sweep.experiments_per_program = 0  # experiments vmapped together (0 = backend default)
  c.update(VARIANTS[variant])
  return c
