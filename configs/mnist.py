"""FedProx / FedAvg on MNIST: ``--config=configs/mnist.py:VARIANT``.

Variants (the seed's protocol: Flower's fedprox baseline; protocol=paper for the authors'):
  fedprox      mu = 1.0, 90 % stragglers, stragglers' partial work kept
  fedavg       mu = 0,   90 % stragglers, stragglers dropped
  fedprox_mu0  mu = 0,   90 % stragglers, stragglers' partial work kept
Sweeps (the paper's Figure 1 grid: FedAvg, FedProx mu=0, FedProx mu>0 x stragglers 0, 0.5,
0.9 x seeds, run as vmapped programs):
  figure1        the seed protocol with the CNN
  figure1_paper  the authors' protocol with logistic regression (20 local epochs)
  figure1_e1     figure1_paper with E = 1, stragglers by SGD steps (straggler_work=iterations)
  figure1_successors  figure1_paper with FedNova, SCAFFOLD and FedAdam columns too
  mu_grid        the paper's appendix: FedProx with mu 0, 0.001, 0.01, 0.1, 1 x stragglers 0, 0.9
                 (fedprox_mu<value> in sweep.algorithms: FedProx with that mu)
Every field can be overridden: --config.mu=0.5 --config.num_rounds=200 --config.model=mlr
--config.sweep.seeds=3 --config.sweep.stragglers=0,0.9
Partitions are an axis too: --config.sweep.partitions=5 (5 draws x every seed) or
--config.sweep.partition_per_seed=True (each seed its own draw, as both sources do).
"""

import ml_collections
from ml_collections import config_dict

from fedprox_jax.core import algorithms

VARIANTS = {
    "fedprox": dict(mu=1.0, stragglers_fraction=0.9, drop_stragglers=False),
    "fedavg": dict(mu=0.0, stragglers_fraction=0.9, drop_stragglers=True),
    "fedprox_mu0": dict(mu=0.0, stragglers_fraction=0.9, drop_stragglers=False),
    "figure1": dict(mode="sweep", protocol="seed", model="cnn", eval_every=5),
    "figure1_paper": dict(mode="sweep", protocol="paper", model="mlr"),
    # The paper's appendix grid of mu (its code's MNIST setting), with and without stragglers.
    "mu_grid": dict(mode="sweep", protocol="paper", model="mlr"),
    # The appendix's E = 1: stragglers run a number of SGD steps, not epochs (none below 1).
    "figure1_e1": dict(mode="sweep", protocol="paper", model="mlr", local_epochs=1,
                       straggler_work="iterations"),
    # Figure 1 with FedProx's successors, a column each (configs/niid_bench.py: NIID-Bench's grid).
    "figure1_successors": dict(mode="sweep", protocol="paper", model="mlr"),
}
SUCCESSORS = "fedavg,fedprox,fednova,scaffold,fedadam"
MU_GRID = "fedprox_mu0,fedprox_mu0.001,fedprox_mu0.01,fedprox_mu0.1,fedprox_mu1"


def get_config(variant: str = "fedprox") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}: use configs/mnist.py:NAME with NAME one of "
                     f"{', '.join(VARIANTS)}")
  c = ml_collections.ConfigDict()
  c.variant = variant        # the variant name (a label: changes nothing by itself)
  c.mode = "single"          # single | sweep (the grid of c.sweep)
  # Data.
  # seed: the Flower baseline exactly (60k partitioned, the 10k test set central); paper: the
  # authors' code (70k pooled and standardised, 90/10 train/test per client). Fields left
  # unset (None) below take the protocol's value (fedprox_jax/protocols.py says which source
  # does what); setting one mixes the protocols.
  c.protocol = "seed"        # seed (the Flower baseline) | paper (the authors' code)
  c.data_source = "tfds"     # tfds | idx (a directory of the four raw IDX files)
  c.data_dir = ""            # tfds: a TFDS data dir ('' = $TFDS_DATA_DIR or TFDS's default)
  c.download = True          # tfds: download MNIST when it is not in the data dir
  c.allow_modified_mnist = False  # train on MNIST whose examples differ from the published files (refused otherwise; config.json records genuine_mnist)
  c.train_subset = 0         # use only the first N training examples (0 = all), for quick runs
  # data=synthetic: the paper's Synthetic(alpha, beta) federations (configs/synthetic.py);
  # num_clients is then the number of devices and partition_seed the generator's seed.
  c.data = "mnist"           # mnist | synthetic (the paper's generated federations) | one you register (docs/extending.md)
  c.synthetic = ml_collections.ConfigDict()
  c.synthetic.alpha = 1.0    # data=synthetic: how much the devices' models differ (u_k ~ N(0, alpha))
  c.synthetic.beta = 1.0     # data=synthetic: how much the devices' features differ (B_k ~ N(0, beta))
  c.synthetic.iid = False    # data=synthetic: True = Synthetic-IID (one shared model; alpha, beta unused)
  # Partition.
  c.num_clients = 1000       # clients the training set is split over
  c.partition = "power_law"  # power_law (the seed's) | iid | labeldir (NIID-Bench: Dirichlet(dirichlet_beta) over each label's clients) | label_count (NIID-Bench #C=k: labels_per_client labels each) | quantity (NIID-Bench: IID, Dirichlet(dirichlet_beta) sizes)
  c.iid = False              # True: the same as partition=iid (a random equal split)
  c.dirichlet_beta = 0.5     # partition=labeldir | quantity: the Dirichlet concentration (smaller: more skew; NIID-Bench's 0.5)
  c.labels_per_client = 2    # digits each client holds (power_law and label_count splits)
  c.min_per_client = 10      # examples every client gets before the log-normal shares
  c.lognormal_sigma = 2.0    # sigma of the log-normal client shares (bigger: more skew)
  # numpy seed of the power-law draws. 42 is the seed baseline's argument, but its draws came
  # from numpy's unseeded global RNG (a different partition every run): ours is a fixed one.
  c.partition_seed = 42      # numpy seed of the partition (and hold-out) draws
  c.client_val_fraction = config_dict.placeholder(float)  # seed 0.1 (held out, unused) | paper 0
  # Model.
  c.model = "cnn"            # cnn | mlr | niid_cnn | one you register (docs/extending.md)
  c.mlr_init = config_dict.placeholder(str)  # torch (seed) | glorot (paper: Glorot kernel, 0 bias)
  c.conv_impl = "auto"       # auto (CPU: measured, see autotune) | im2col | xla | patches | xla_nchw
  c.autotune = True          # on a CPU, fields of the CNNs left at auto/0 (conv_impl, eval_conv_impl, a run's num_lanes) are chosen by timing the candidates once per machine (seconds; cached in the user cache); False: run/defaults.py's fixed table
  c.autotuned = ""           # filled in by the run: what autotune chose and measured (recorded in config.json)
  # Federated optimisation.
  c.num_rounds = 100         # communication rounds
  c.clients_per_round = 10   # clients sampled each round (K)
  c.local_epochs = config_dict.placeholder(int)  # seed 10 (its README table: 5) | paper 20
  c.batch_size = 10          # local minibatch size (B)
  c.lr = 0.03                # local SGD learning rate
  c.mu = 1.0                 # proximal term weight: mu/2 ||w - w_global||^2 (0 = FedAvg's)
  c.weight_decay = config_dict.placeholder(float)  # seed 0.001 (torch SGD) | paper 0
  c.stragglers_fraction = 0.9  # share of sampled clients that run fewer local epochs
  c.drop_stragglers = False  # True: FedAvg drops stragglers; False: FedProx keeps partial work
  c.algorithm = ""           # '' = FedAvg/FedProx by mu, drop_stragglers, adaptive_mu | scaffold | fednova | fedavgm | fedadam | fedyogi | fedadagrad | feddyn | one you register (docs/extending.md) | fedavg | fedprox | fedprox_mu<value> | ...: as in sweep.algorithms, the name sets mu and the straggler rule (a sweep names its algorithms in sweep.algorithms)
  c.momentum = 0.0           # the clients' SGD momentum (torch's; NIID-Bench: 0.9), with every algorithm
  c.server_lr = config_dict.placeholder(float)  # the server's learning rate (FedOpt, SCAFFOLD); None: the algorithm's own (1; FedAdam/FedYogi 0.01, FedAdagrad 0.1)
  c.server_momentum = 0.9    # FedAvgM's server momentum; FedAdam/FedYogi/FedAdagrad's beta_1
  c.server_beta2 = 0.99      # FedAdam/FedYogi's beta_2
  c.server_tau = 1e-3        # FedAdam/FedYogi/FedAdagrad's adaptivity tau
  # Each registered algorithm's own hyper-parameters (its core/hooks.py entry says what each
  # is): --config.hparams.feddyn.alpha=0.1. The resolved config keeps the ones it runs.
  c.hparams = ml_collections.ConfigDict(algorithms.hparams_config())
  c.adaptive_mu = False      # the paper's heuristic from mu: +0.1 when the global training loss rises, -0.1 after 5 falls (costs an evaluation on all training data per round)
  # (the help of a field is the comment on its line)
  c.straggler_rule = config_dict.placeholder(str)  # bernoulli (seed) | exact (paper: a count)
  c.straggler_work = "epochs"  # what a straggler runs: epochs (both sources: 1 .. E-1) | iterations (1 .. int(E n / B) + 1 SGD steps, the authors' commented-out solve_iters: stragglers at E = 1)
  c.sampling = config_dict.placeholder(str)  # uniform (both) | weighted | weighted_replacement
  c.weighting = config_dict.placeholder(str)  # batches (seed) | samples (paper) | uniform
  c.num_lanes = 0             # vmap lanes the clients are packed into (0 = backend default)
  c.num_devices = 0           # devices to spread lanes / a sweep's experiments over (0 = all)
  # Evaluation and bookkeeping.
  c.eval_every = 1           # rounds between evaluations (and the last round)
  c.eval_batch_size = 0       # evaluation batch (0 = default: CNN 50 on CPU, 1000 otherwise; MLR 10000)
  c.eval_conv_impl = "auto"   # the CNN's convolution when evaluating: auto (CPU: measured; else xla) | im2col | xla | patches | xla_nchw
  c.checkpoint_every = 10    # rounds between checkpoints (and at the end); resume = same --workdir
  c.inexactness = False      # log the gamma-inexactness each round's clients reached (the paper's Definition 1; mean and max): about one more local epoch per client
  c.tensorboard = True       # TensorBoard event files in WORKDIR/tensorboard
  c.seed = 0                 # a sweep runs seeds seed .. seed + sweep.seeds - 1
  # Sweeps (mode='sweep').
  c.sweep = ml_collections.ConfigDict()
  c.sweep.algorithms = "fedavg,fedprox_mu0,fedprox"  # comma-separated; fedprox uses sweep.mu; also fedprox_adaptive
  c.sweep.stragglers = "0,0.5,0.9"  # comma-separated straggler fractions
  c.sweep.seeds = 5                  # seeds seed .. seed + seeds - 1 per (algorithm, level)
  c.sweep.partitions = 1             # partition draws: partition seeds partition_seed .. partition_seed + partitions - 1, each with every (algorithm, level, seed)
  c.sweep.partition_per_seed = False  # True: each seed draws its own partition (partition seed = seed), as both sources' code does; then sweep.partitions must be 1
  c.sweep.mu = 1.0                   # mu of the fedprox algorithm (> 0)
  c.sweep.global_train_loss = True   # log the global model's loss on all training data at each evaluation (the paper's Figure 1 curve; an evaluation of the whole training set)
  c.sweep.dissimilarity = True        # log mean_k ||grad f_k - grad f||^2 and the paper's B(w) at each evaluation
  c.sweep.experiments_per_program = 0  # experiments vmapped together (0 = backend default)
  c.sweep.concurrent_programs = 0    # programs run side by side in threads (0 = backend default: on CPU one per core when programs hold one experiment, else 1)
  c.sweep.adaptive_mu_init = config_dict.placeholder(float)  # fedprox_adaptive's first mu (None: the paper's, 1 on Synthetic-IID, else 0)
  c.sweep.splits = ""                # data=mnist: comma-separated partitions as an axis: iid | power_law | labeldir<beta> | label<k> | quantity<beta>, e.g. labeldir0.5,label1,label2,label3,quantity0.5 ('' = the config's partition)
  c.sweep.federations = ""           # data=synthetic: comma-separated iid | ALPHA_BETA, e.g. iid,0_0,1_1 ('' = c.synthetic's)
  c.update(VARIANTS[variant])
  if variant == "mu_grid":
    c.sweep.algorithms, c.sweep.stragglers = MU_GRID, "0,0.9"
  if variant == "figure1_successors":
    c.sweep.update(dict(algorithms=SUCCESSORS))
  return c
