"""Rounds of the seed's CNN: this project against pfl-research (Apple's `pfl`, PyTorch) on the
same machine, the same partition and protocol, in client-steps per second.

  python benchmarks/pfl_round.py --torch_python=/tmp/torchvenv/bin/python [--rounds=10]
      [--repeats=2]

pfl is never a project requirement: install it in torch's own venv
(``/tmp/torchvenv/bin/pip install torch==2.13.0 'pfl[pytorch]==0.6.0' absl-py``). This file is
also pfl's side (``--worker``, run in that interpreter). Both sides run plain FedAvg on the
default partition of configs/mnist.py (1000 power-law clients, partition_seed 42): 10 clients a
round drawn uniformly, every client trains (no stragglers), E = 10 epochs of B = 10, SGD lr 0.03
with weight decay 0.001, the server averages; no evaluation but ours at the last round (not
timed). A round's clients differ between the sides (each draws its own), so the figures are
rates over the rounds after the first (compilation, warm-up): client SGD steps per second and
examples trained per second (a client's last, partial batch is a smaller step for pfl and a
padded one for us: examples/s is the like-for-like figure). Sides
alternate (A B A B, ``--repeats``); torch uses as many threads as cores, as XLA:CPU does.
"""

import json
import os
import statistics
import subprocess
import tempfile
import time

import numpy as np
from absl import app, flags

flags.DEFINE_string("torch_python", "", "an interpreter with torch and pfl (its own venv)")
flags.DEFINE_integer("rounds", 10, "rounds per side and repeat")
flags.DEFINE_integer("repeats", 2, "alternations of the two sides")
flags.DEFINE_integer("local_epochs", 10, "E")
flags.DEFINE_bool("worker", False, "internal: pfl's side; prints JSON")
flags.DEFINE_string("data", "", "internal: the partition's arrays (.npz) for the worker")
F = flags.FLAGS
CLIENTS_PER_ROUND, BATCH, LR, WD = 10, 10, 0.03, 0.001


def pfl_worker():
  import torch
  from torch import nn
  from pfl.aggregate.simulate import SimulatedBackend
  from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
  from pfl.callback.base import TrainingProcessCallback
  from pfl.data.dataset import Dataset
  from pfl.data.federated_dataset import FederatedDataset
  from pfl.data.sampling import get_user_sampler
  from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
  from pfl.metrics import Weighted
  from pfl.model.pytorch import PyTorchModel
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  np.random.seed(0)

  class CNN(nn.Module):  # the seed's network (Flower baselines/fedprox models.py)
    def __init__(self):
      super().__init__()
      self.net = nn.Sequential(
          nn.Conv2d(1, 32, 5, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2, padding=1),
          nn.Conv2d(32, 64, 5, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2, padding=1),
          nn.Flatten(), nn.Linear(7 * 7 * 64, 512), nn.ReLU(), nn.Linear(512, 10))

    def forward(self, x):
      return self.net(x)

    def loss(self, x, y, eval=False):
      self.eval() if eval else self.train()
      return nn.functional.cross_entropy(self(x), y)

    @torch.no_grad()
    def metrics(self, x, y, eval=False):
      loss = nn.functional.cross_entropy(self(x), y, reduction="sum").item()
      return {"loss": Weighted(loss, len(x))}

  arrays = np.load(F.data)
  x = torch.from_numpy(arrays["x"]).permute(0, 3, 1, 2).contiguous()
  y = torch.from_numpy(arrays["y"].astype(np.int64))
  offsets, sizes = arrays["offsets"], arrays["sizes"]
  users = {u: Dataset(raw_data=[x[o:o + n], y[o:o + n]])
           for u, (o, n) in enumerate(zip(offsets, sizes))}
  data = FederatedDataset(lambda u: users[u], get_user_sampler("random", list(users)))
  model = PyTorchModel(
      CNN(), local_optimizer_create=lambda params, lr: torch.optim.SGD(params, lr=lr,
                                                                      weight_decay=WD),
      central_optimizer=torch.optim.SGD(CNN().parameters(), lr=1.0))
  ends = []

  class Clock(TrainingProcessCallback):
    def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
      ends.append(time.perf_counter())
      return False, type(aggregate_metrics)()

  steps, examples = [], []  # per trained client: E epochs of ceil(n / B) steps, of n examples
  train_one_user = FederatedAveraging.train_one_user

  def counted(self, initial_model_state, model, user_dataset, central_context):
    steps.append(F.local_epochs * -(-len(user_dataset) // BATCH))
    examples.append(F.local_epochs * len(user_dataset))
    return train_one_user(self, initial_model_state, model, user_dataset, central_context)
  FederatedAveraging.train_one_user = counted
  start = time.perf_counter()
  FederatedAveraging().run(
      algorithm_params=NNAlgorithmParams(central_num_iterations=F.rounds,
                                         evaluation_frequency=10 ** 9,
                                         train_cohort_size=CLIENTS_PER_ROUND,
                                         val_cohort_size=0),
      backend=SimulatedBackend(training_data=data, val_data=None),
      model=model,
      model_train_params=NNTrainHyperParams(local_num_epochs=F.local_epochs,
                                            local_learning_rate=LR, local_batch_size=BATCH),
      model_eval_params=NNEvalHyperParams(local_batch_size=1000),
      callbacks=[Clock()])
  import pfl
  print(json.dumps({"seconds": ends[-1] - ends[0], "first_round": ends[0] - start,
                    "steps": sum(steps[CLIENTS_PER_ROUND:]),
                    "examples": sum(examples[CLIENTS_PER_ROUND:]), "rounds": len(ends),
                    "clients": len(steps), "version": pfl.__version__,
                    "torch": torch.__version__}))


def ours(c, exp):
  """(seconds, client steps, examples trained) of our rounds 2 .. R (round 1 compiles), on
  the run's own path."""
  import jax
  from fedprox_jax.core import models, rounds
  from fedprox_jax.run import experiment
  model = models.make_model(c.model, c.conv_impl)
  params = models.init_params(model, jax.random.key(0))
  hp = experiment.hparams(c)
  spec = experiment.round_spec(c, exp.stats["max_train"])
  round_fn = rounds.make_round_fn(model.apply, spec)
  params, _ = jax.block_until_ready(round_fn(params, exp.train, hp, jax.random.key(0)))
  keys = [jax.random.fold_in(jax.random.key(1), t) for t in range(1, F.rounds)]
  examples = sum(int((p.sizes * p.epochs).sum()) for p in
                 (rounds.plan_round(key, exp.train, hp, spec) for key in keys))
  steps, start = 0, time.perf_counter()
  for key in keys:
    params, metrics = round_fn(params, exp.train, hp, key)
    steps += int(metrics.lanes.useful_steps)  # waits for the round, as a run's row does
  return time.perf_counter() - start, steps, examples


def main(argv):
  del argv
  if F.worker:
    return pfl_worker()
  if not F.torch_python:
    raise app.UsageError("--torch_python=PATH: an interpreter with torch and pfl (docstring)")
  import common
  c, exp = common.default_experiment(
      "fedavg", stragglers_fraction=0.0, local_epochs=F.local_epochs)
  print(common.header())
  print(f"cpu: {common.cpu_model()} ({os.cpu_count()} cores); path: conv_impl={c.conv_impl} "
        f"num_lanes={c.num_lanes} ({c.autotuned or 'set, not measured'})")
  train = exp.train
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "partition.npz")
    np.savez(path, x=np.asarray(train.x), y=np.asarray(train.y),
             offsets=np.asarray(train.offsets), sizes=np.asarray(train.sizes))
    results = {"ours": [], "pfl": [], "ours_examples": [], "pfl_examples": []}
    version = None
    for _ in range(F.repeats):  # A B A B
      seconds, steps, examples = ours(c, exp)
      results["ours"].append(steps / seconds)
      results["ours_examples"].append(examples / seconds)
      proc = subprocess.run([F.torch_python, os.path.abspath(__file__), "--worker",
                             f"--data={path}", f"--rounds={F.rounds}",
                             f"--local_epochs={F.local_epochs}"], capture_output=True, text=True)
      if proc.returncode:
        raise SystemExit(f"the pfl worker failed: {proc.stderr.strip()[-2000:]}")
      theirs = json.loads(proc.stdout.strip().splitlines()[-1])
      results["pfl"].append(theirs["steps"] / theirs["seconds"])
      results["pfl_examples"].append(theirs["examples"] / theirs["seconds"])
      version = f"pfl {theirs['version']}, torch {theirs['torch']}"
  med = {k: statistics.median(v) for k, v in results.items()}
  print(f"{version}; {F.repeats} alternating repeats of {F.rounds} rounds (the first not timed), "
        f"10 clients a round, E = {F.local_epochs}, B = {BATCH}, no stragglers; medians")
  print("| side | client steps/s | examples/s | runs (steps/s) |\n|---|---:|---:|---|")
  for side, name in (("ours", "fedprox_jax"), ("pfl", "pfl-research")):
    print(f"| {name} | {med[side]:.0f} | {med[side + '_examples']:.0f} | "
          f"{', '.join(f'{r:.0f}' for r in results[side])} |")
  # A client's last batch is partial: pfl runs it smaller, we pad and mask it, so examples/s
  # (the same work on both sides) is the fairer figure; steps/s is the issue's.
  print(f"fedprox_jax / pfl-research: {med['ours'] / med['pfl']:.2f}x in client steps/s, "
        f"{med['ours_examples'] / med['pfl_examples']:.2f}x in examples/s")

if __name__ == "__main__":
  app.run(main)
