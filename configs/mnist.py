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


HELP = {  # each field's help: what --help prints beside it (its value is the variant's)
    'variant': 'the variant name (a label: changes nothing by itself)',
    'mode': 'single | sweep (the grid of c.sweep)',
    'protocol': "seed (the Flower baseline) | paper (the authors' code)",
    'data_source': 'tfds | idx (a directory of the four raw IDX files)',
    'data_dir': "tfds: a TFDS data dir ('' = $TFDS_DATA_DIR or TFDS's default)",
    'embeddings': "data=sent140: the word vectors, LEAF's embs.json or GloVe's glove.6B.300d.txt",
    'download': 'tfds: download MNIST when it is not in the data dir',
    'allow_modified_mnist': 'train on MNIST whose examples differ from the published files (refused otherwise; config.json records genuine_mnist)',
    'train_subset': 'use only the first N training examples (0 = all), for quick runs',
    'data': "mnist | synthetic (the paper's generated federations) | one you register (docs/extending.md)",
    'synthetic.alpha': "data=synthetic: how much the devices' models differ (u_k ~ N(0, alpha))",
    'synthetic.beta': "data=synthetic: how much the devices' features differ (B_k ~ N(0, beta))",
    'synthetic.iid': 'data=synthetic: True = Synthetic-IID (one shared model; alpha, beta unused)',
    'num_clients': 'clients the training set is split over',
    'partition': "power_law (the seed's) | iid | labeldir (NIID-Bench: Dirichlet(dirichlet_beta) over each label's clients) | label_count (NIID-Bench #C=k: labels_per_client labels each) | quantity (NIID-Bench: IID, Dirichlet(dirichlet_beta) sizes)",
    'iid': 'True: the same as partition=iid (a random equal split)',
    'dirichlet_beta': "partition=labeldir | quantity: the Dirichlet concentration (smaller: more skew; NIID-Bench's 0.5)",
    'labels_per_client': 'digits each client holds (power_law and label_count splits)',
    'min_per_client': 'examples every client gets before the log-normal shares',
    'lognormal_sigma': 'sigma of the log-normal client shares (bigger: more skew)',
    'partition_seed': 'numpy seed of the partition (and hold-out) draws',
    'client_val_fraction': 'seed 0.1 (held out, unused) | paper 0',
    'model': 'cnn | mlr | niid_cnn | one you register (docs/extending.md)',
    'mlr_init': 'torch (seed) | glorot (paper: Glorot kernel, 0 bias)',
    'conv_impl': 'auto (CPU: measured, see autotune) | im2col | xla | patches | xla_nchw',
    'autotune': "on a CPU, fields of the CNNs left at auto/0 (conv_impl, eval_conv_impl, a run's num_lanes) are chosen by timing the candidates once per machine (seconds; cached in the user cache); False: run/defaults.py's fixed table",
    'autotuned': 'filled in by the run: what autotune chose and measured (recorded in config.json)',
    'num_rounds': 'communication rounds',
    'clients_per_round': 'clients sampled each round (K)',
    'local_epochs': 'seed 10 (its README table: 5) | paper 20',
    'batch_size': 'local minibatch size (B)',
    'lr': 'local SGD learning rate',
    'mu': "proximal term weight: mu/2 ||w - w_global||^2 (0 = FedAvg's)",
    'weight_decay': 'seed 0.001 (torch SGD) | paper 0',
    'stragglers_fraction': 'share of sampled clients that run fewer local epochs',
    'drop_stragglers': 'True: FedAvg drops stragglers; False: FedProx keeps partial work',
    'algorithm': "'' = FedAvg/FedProx by mu, drop_stragglers, adaptive_mu | scaffold | fednova | fedavgm | fedadam | fedyogi | fedadagrad | feddyn | one you register (docs/extending.md) | fedavg | fedprox | fedprox_mu<value> | ...: as in sweep.algorithms, the name sets mu and the straggler rule (a sweep names its algorithms in sweep.algorithms)",
    'momentum': "the clients' SGD momentum (torch's; NIID-Bench: 0.9), with every algorithm",
    'server_lr': "the server's learning rate (FedOpt, SCAFFOLD); None: the algorithm's own (1; FedAdam/FedYogi 0.01, FedAdagrad 0.1)",
    'server_momentum': "FedAvgM's server momentum; FedAdam/FedYogi/FedAdagrad's beta_1",
    'server_beta2': "FedAdam/FedYogi's beta_2",
    'server_tau': "FedAdam/FedYogi/FedAdagrad's adaptivity tau",
    'adaptive_mu': "the paper's heuristic from mu: +0.1 when the global training loss rises, -0.1 after 5 falls (costs an evaluation on all training data per round)",
    'straggler_rule': 'bernoulli (seed) | exact (paper: a count)',
    'straggler_work': "what a straggler runs: epochs (both sources: 1 .. E-1) | iterations (1 .. int(E n / B) + 1 SGD steps, the authors' commented-out solve_iters: stragglers at E = 1)",
    'sampling': 'uniform (both) | weighted | weighted_replacement',
    'weighting': 'batches (seed) | samples (paper) | uniform',
    'num_lanes': 'vmap lanes the clients are packed into (0 = backend default)',
    'num_devices': "devices to spread lanes / a sweep's experiments over (0 = all)",
    'eval_every': 'rounds between evaluations (and the last round)',
    'eval_batch_size': 'evaluation batch (0 = default: CNN 50 on CPU, 1000 otherwise; MLR 10000)',
    'eval_conv_impl': "the CNN's convolution when evaluating: auto (CPU: measured; else xla) | im2col | xla | patches | xla_nchw",
    'checkpoint_every': 'rounds between checkpoints (and at the end); resume = same --workdir',
    'inexactness': "log the gamma-inexactness each round's clients reached (the paper's Definition 1; mean and max): about one more local epoch per client",
    'tensorboard': 'TensorBoard event files in WORKDIR/tensorboard',
    'seed': 'a sweep runs seeds seed .. seed + sweep.seeds - 1',
    'sweep.algorithms': 'comma-separated; fedprox uses sweep.mu; also fedprox_adaptive',
    'sweep.stragglers': 'comma-separated straggler fractions',
    'sweep.seeds': 'seeds seed .. seed + seeds - 1 per (algorithm, level)',
    'sweep.partitions': 'partition draws: partition seeds partition_seed .. partition_seed + partitions - 1, each with every (algorithm, level, seed)',
    'sweep.partition_per_seed': "True: each seed draws its own partition (partition seed = seed), as both sources' code does; then sweep.partitions must be 1",
    'sweep.mu': 'mu of the fedprox algorithm (> 0)',
    'sweep.global_train_loss': "log the global model's loss on all training data at each evaluation (the paper's Figure 1 curve; an evaluation of the whole training set)",
    'sweep.dissimilarity': "log mean_k ||grad f_k - grad f||^2 and the paper's B(w) at each evaluation",
    'sweep.experiments_per_program': 'experiments vmapped together (0 = backend default)',
    'sweep.concurrent_programs': 'programs run side by side in threads (0 = backend default: on CPU one per core when programs hold one experiment, else 1)',
    'sweep.adaptive_mu_init': "fedprox_adaptive's first mu (None: the paper's, 1 on Synthetic-IID, else 0)",
    'sweep.splits': "data=mnist: comma-separated partitions as an axis: iid | power_law | labeldir<beta> | label<k> | quantity<beta>, e.g. labeldir0.5,label1,label2,label3,quantity0.5 ('' = the config's partition)",
    'sweep.federations': "data=synthetic: comma-separated iid | ALPHA_BETA, e.g. iid,0_0,1_1 ('' = c.synthetic's)",
}


def get_config(variant: str = "fedprox") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}: use configs/mnist.py:NAME with NAME one of "
                     f"{', '.join(VARIANTS)}")
  c = ml_collections.ConfigDict()
  c.variant = variant
  c.mode = "single"
  # Data.
  # seed: the Flower baseline exactly (60k partitioned, the 10k test set central); paper: the
  # authors' code (70k pooled and standardised, 90/10 train/test per client). Fields left
  # unset (None) below take the protocol's value (fedprox_jax/protocols.py says which source
  # does what); setting one mixes the protocols.
  c.protocol = "seed"
  c.data_source = "tfds"
  c.data_dir = ""
  c.embeddings = ""
  c.download = True
  c.allow_modified_mnist = False
  c.train_subset = 0
  # data=synthetic: the paper's Synthetic(alpha, beta) federations (configs/synthetic.py);
  # num_clients is then the number of devices and partition_seed the generator's seed.
  c.data = "mnist"
  c.synthetic = ml_collections.ConfigDict()
  c.synthetic.alpha = 1.0
  c.synthetic.beta = 1.0
  c.synthetic.iid = False
  # Partition.
  c.num_clients = 1000
  c.partition = "power_law"
  c.iid = False
  c.dirichlet_beta = 0.5
  c.labels_per_client = 2
  c.min_per_client = 10
  c.lognormal_sigma = 2.0
  # numpy seed of the power-law draws. 42 is the seed baseline's argument, but its draws came
  # from numpy's unseeded global RNG (a different partition every run): ours is a fixed one.
  c.partition_seed = 42
  c.client_val_fraction = config_dict.placeholder(float)
  # Model.
  c.model = "cnn"
  c.mlr_init = config_dict.placeholder(str)
  c.conv_impl = "auto"
  c.autotune = True
  c.autotuned = ""
  # Federated optimisation.
  c.num_rounds = 100
  c.clients_per_round = 10
  c.local_epochs = config_dict.placeholder(int)
  c.batch_size = 10
  c.lr = 0.03
  c.mu = 1.0
  c.weight_decay = config_dict.placeholder(float)
  c.stragglers_fraction = 0.9
  c.drop_stragglers = False
  c.algorithm = ""
  c.momentum = 0.0
  c.server_lr = config_dict.placeholder(float)
  c.server_momentum = 0.9
  c.server_beta2 = 0.99
  c.server_tau = 1e-3
  # Each registered algorithm's own hyper-parameters (its core/hooks.py entry says what each
  # is): --config.hparams.feddyn.alpha=0.1. The resolved config keeps the ones it runs.
  c.hparams = ml_collections.ConfigDict(algorithms.hparams_config())
  c.adaptive_mu = False
  c.straggler_rule = config_dict.placeholder(str)
  c.straggler_work = "epochs"
  c.sampling = config_dict.placeholder(str)
  c.weighting = config_dict.placeholder(str)
  c.num_lanes = 0
  c.num_devices = 0
  # Evaluation and bookkeeping.
  c.eval_every = 1
  c.eval_batch_size = 0
  c.eval_conv_impl = "auto"
  c.checkpoint_every = 10
  c.inexactness = False
  c.tensorboard = True
  c.seed = 0
  # Sweeps (mode='sweep').
  c.sweep = ml_collections.ConfigDict()
  c.sweep.algorithms = "fedavg,fedprox_mu0,fedprox"
  c.sweep.stragglers = "0,0.5,0.9"
  c.sweep.seeds = 5
  c.sweep.partitions = 1
  c.sweep.partition_per_seed = False
  c.sweep.mu = 1.0
  c.sweep.global_train_loss = True
  c.sweep.dissimilarity = True
  c.sweep.experiments_per_program = 0
  c.sweep.concurrent_programs = 0
  c.sweep.adaptive_mu_init = config_dict.placeholder(float)
  c.sweep.splits = ""
  c.sweep.federations = ""
  c.update(VARIANTS[variant])
  if variant == "mu_grid":
    c.sweep.algorithms, c.sweep.stragglers = MU_GRID, "0,0.9"
  if variant == "figure1_successors":
    c.sweep.update(dict(algorithms=SUCCESSORS))
  return c
