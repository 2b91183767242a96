"""NIID-Bench MNIST cells: this project's sweep vs Flower's niid_bench client loop written in plain
PyTorch, on the same machine, the same partition and protocol.

  python benchmarks/niid_torch.py [--rounds=3] [--local_epochs=1] [--algorithms=fedavg,scaffold]
      [--repeats=2]

The torch side is Flower's `baselines/niid_bench` training written out without Flower: each
round, the 10 clients one after another load the global model, run `local_epochs` epochs of
SGD(lr 0.01, momentum 0.9, weight decay 1e-5) over a shuffled DataLoader of batch 64 (SCAFFOLD:
its ScaffoldOptimizer step and option-II variates), the server averages by data size and
evaluates the 10k test set. Flower's own overhead (Ray, messages) is not in it: it is a lower
bound of the baseline's time. Our side is `configs/niid_bench.py` for the same cells (one
split, labeldir0.5, seed 0), one program per algorithm, wall time from its rows. Sides
alternate (A B A B, `--repeats`); torch runs with as many threads as cores, as XLA:CPU does.
torch is not a project requirement: install it beside (`pip install torch==2.13.0`).
"""

import os
import statistics
import tempfile
import time

import numpy as np
from absl import app, flags

import common
from configs import niid_bench
from fedprox_jax.data import mnist as data_lib
from fedprox_jax.data import partition
from fedprox_jax.run import config as config_lib

flags.DEFINE_integer("rounds", 3, "rounds per cell")
flags.DEFINE_integer("local_epochs", 1, "local epochs (the grid's: 10; reduced: 2)")
flags.DEFINE_list("algorithms", ["fedavg", "scaffold"], "fedavg | scaffold | fednova")
flags.DEFINE_integer("repeats", 2, "alternations of the two sides")
flags.DEFINE_string("split", "labeldir0.5", "a split of sweep.splits (labeldir0.5, label2, ...)")
flags.DEFINE_integer("seed", 0, "the partition's (and training) seed")
flags.DEFINE_list("sides", ["jax", "torch"], "jax | torch")
F = flags.FLAGS


def torch_cells(mnist, split):
  import torch
  import torch.nn as nn
  import torch.nn.functional as tf
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)

  class CNNMnist(nn.Module):  # Flower's niid_bench CNNMnist
    def __init__(self):
      super().__init__()
      self.conv1, self.pool, self.conv2 = nn.Conv2d(1, 6, 5), nn.MaxPool2d(2, 2), nn.Conv2d(6, 16, 5)
      self.fc1, self.fc2, self.fc3 = nn.Linear(256, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x):
      x = self.pool(tf.relu(self.conv1(x)))
      x = self.pool(tf.relu(self.conv2(x))).reshape(-1, 256)
      return self.fc3(tf.relu(self.fc2(tf.relu(self.fc1(x)))))

  norm = lambda a: torch.tensor(data_lib.normalize(a)).permute(0, 3, 1, 2).contiguous()
  x, y = norm(mnist.train_images), torch.tensor(mnist.train_labels.astype(np.int64))
  test_x, test_y = norm(mnist.test_images), torch.tensor(mnist.test_labels.astype(np.int64))
  loaders = [torch.utils.data.DataLoader(torch.utils.data.TensorDataset(
      x[split.order[o:o + n]], y[split.order[o:o + n]]), batch_size=64, shuffle=True)
             for o, n in zip(split.offsets, split.sizes)]
  sizes = np.asarray(split.sizes, np.float64)
  out = {}
  for algorithm in F.algorithms:
    net = CNNMnist()
    global_state = {k: v.clone() for k, v in net.state_dict().items()}
    zeros = lambda: [torch.zeros_like(p) for p in net.parameters()]
    c_server, c_clients = zeros(), [zeros() for _ in loaders]
    start = time.perf_counter()
    for _ in range(F.rounds):
      states, deltas, taus = [], [], []
      for i, loader in enumerate(loaders):
        net.load_state_dict(global_state)
        x0 = [p.detach().clone() for p in net.parameters()]
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-5)
        steps = 0
        for _ in range(F.local_epochs):
          for bx, by in loader:
            opt.zero_grad()
            tf.cross_entropy(net(bx), by).backward()
            opt.step()
            if algorithm == "scaffold":
              with torch.no_grad():
                for p, s, c in zip(net.parameters(), c_server, c_clients[i]):
                  p.add_(s - c, alpha=-0.01)
            steps += 1
        if algorithm == "scaffold":
          with torch.no_grad():
            new = [c - s + (a - p) / (steps * 0.01) for c, s, a, p in
                   zip(c_clients[i], c_server, x0, net.parameters())]
            deltas.append([n - c for n, c in zip(new, c_clients[i])])
            c_clients[i] = new
        states.append({k: v.clone() for k, v in net.state_dict().items()})
        taus.append(steps)
      w = sizes / sizes.sum()
      if algorithm == "fednova":  # NIID-Bench's experiments.py: d_i = (x - y_i) / a_i
        a = [(t - 0.9 * (1 - 0.9 ** t) / 0.1) / 0.1 for t in taus]
        tau_eff = sum(float(w[i]) * a[i] for i in range(len(a)))
        global_state = {k: global_state[k] - tau_eff * sum(
            float(w[i]) * (global_state[k] - s[k]) / a[i] for i, s in enumerate(states))
                        for k in states[0]}
      else:
        global_state = {k: sum(float(w[i]) * s[k] for i, s in enumerate(states))
                        for k in states[0]}
      if algorithm == "scaffold":
        c_server = [s + sum(d[j] for d in deltas) / len(loaders) for j, s in enumerate(c_server)]
      net.load_state_dict(global_state)
      with torch.no_grad():
        accuracy = float((net(test_x).argmax(1) == test_y).float().mean())
    out[algorithm] = ((time.perf_counter() - start) / F.rounds, accuracy)
  return out


def jax_cells(mnist):
  from fedprox_jax.run import sweep
  c = niid_bench.get_config("grid")
  c.update(num_rounds=F.rounds, local_epochs=F.local_epochs, tensorboard=False)
  c.sweep.update(algorithms=",".join(F.algorithms), seeds=1, splits=F.split)
  c.seed = F.seed
  out = {}
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    rows = sweep.run(c, workdir, source=mnist)
    total = time.perf_counter() - start
  for name, r in rows.items():
    algorithm = name.split("_")[1]
    # after the first round (compilation), per round
    out[algorithm] = ((r[-1]["wall_time"] - r[0]["wall_time"]) / max(len(r) - 1, 1),
                      r[-1]["test_accuracy"], r[0]["wall_time"])
  out["whole sweep s"] = total
  return out


def main(_):
  mnist = data_lib.load_mnist("idx", common.DEFAULT_DATA_DIR)
  c = niid_bench.get_config("grid")
  c.update(config_lib.split_fields(F.split))
  c.partition_seed = F.seed
  split = partition.split(config_lib.resolve(c), mnist.train_labels)  # the sweep's own
  runs = {"jax": [], "torch": []}
  for _ in range(F.repeats):
    if "jax" in F.sides:
      runs["jax"].append(jax_cells(mnist))
    if "torch" in F.sides:
      runs["torch"].append(torch_cells(mnist, split))
  if F.sides != ["jax", "torch"]:
    print({side: [{a: r[a][:2] for a in F.algorithms} for r in rs] for side, rs in runs.items()})
    return
  print(common.header())
  print(f"cpu={common.cpu_model()} rounds={F.rounds} local_epochs={F.local_epochs} "
        f"(medians of {F.repeats}, sides alternated)")
  print("| algorithm | fedprox_jax s/round (after the 1st) | torch loop s/round | torch / ours |"
        "\n|---|---:|---:|---:|")
  for a in F.algorithms:
    ours = statistics.median(r[a][0] for r in runs["jax"])
    theirs = statistics.median(r[a][0] for r in runs["torch"])
    print(f"| {a} | {ours:.2f} | {theirs:.2f} | {theirs / ours:.2f}x |")
  print("final accuracies (jax, torch):",
        {a: (round(runs['jax'][-1][a][1], 4), round(runs['torch'][-1][a][1], 4))
         for a in F.algorithms})
  print("our first round (compilation included), s:",
        {a: round(runs['jax'][-1][a][2], 1) for a in F.algorithms},
        "whole sweeps, s:", [round(r["whole sweep s"], 1) for r in runs["jax"]])


if __name__ == "__main__":
  app.run(main)
