"""One CNN SGD step (batch 10): this project's vs a plain PyTorch loop, with the machine's
f32 matmul peak next to both.

  python benchmarks/torch_step.py --torch_python=/tmp/torchvenv/bin/python [--repeats=5]

torch is never a project requirement: make a venv of its own (``python -m venv /tmp/torchvenv
&& /tmp/torchvenv/bin/pip install torch numpy absl-py``) and point --torch_python at its interpreter.
This file is also the torch side (``--worker``), run in that interpreter, so both sides are
one script. Rounds alternate JAX and torch (A B A B); each side runs ``--steps`` steps on
MNIST-shaped random data and reports ms per step, medians over the rounds.

Both sides do the same work per step: gather a minibatch of 10 from a device-resident client
of 600 examples, forward, cross-entropy, backward, SGD with weight decay 0.001 (the seed's
optimizer). 'mu = 1' adds the proximal term: ours folds it into the update
(``client.proximal``); the torch loop adds mu/2 ||w - w_global||^2 to the loss and lets autograd
differentiate it, as the Flower baseline and pfl-research write it.
"""

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

flags.DEFINE_string("torch_python", "", "a Python interpreter that has torch (its own venv)")
flags.DEFINE_integer("repeats", 5, "alternating rounds (medians reported)")
flags.DEFINE_integer("steps", 200, "SGD steps timed per round and side")
flags.DEFINE_integer("threads", 0, "torch threads (0 = the machine's cores, like XLA:CPU)")
flags.DEFINE_bool("worker", False, "internal: run the torch side and print JSON")
F = flags.FLAGS

BATCH, CLIENT, LR, WD = 10, 600, 0.03, 0.001
# Multiply-adds x 2 of the CNN's forward per example; backward ~2x forward (the first conv's
# input gradient, which neither side computes, is a negligible 0.5 %).
FORWARD_FLOP = 2 * (26 * 26 * 32 * 25 + 12 * 12 * 64 * 800 + 3136 * 512 + 512 * 10)
STEP_FLOP = 3 * FORWARD_FLOP * BATCH


def torch_worker():
  import numpy as np
  import torch
  from torch import nn
  torch.set_num_threads(F.threads or os.cpu_count())
  torch.manual_seed(0)

  def cnn():  # the seed's network (Flower baselines/fedprox models.py)
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2, padding=1),
        nn.Conv2d(32, 64, 5, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2, padding=1),
        nn.Flatten(), nn.Linear(7 * 7 * 64, 512), nn.ReLU(), nn.Linear(512, 10))

  rng = np.random.default_rng(0)
  x = torch.from_numpy(rng.normal(size=(CLIENT, 1, 28, 28)).astype(np.float32))
  y = torch.from_numpy(rng.integers(0, 10, CLIENT))
  out = {}
  for mu in (0.0, 1.0):
    model = cnn()
    global_params = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=LR, weight_decay=WD)
    loss_fn = nn.CrossEntropyLoss()

    def steps(n):
      perm = torch.randperm(CLIENT)
      for s in range(n):
        idx = perm[(s * BATCH) % CLIENT:(s * BATCH) % CLIENT + BATCH]
        opt.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx])
        if mu:
          loss = loss + mu / 2 * sum((p - g).pow(2).sum()
                                     for p, g in zip(model.parameters(), global_params))
        loss.backward()
        opt.step()

    steps(20)  # warm-up
    start = time.perf_counter()
    steps(F.steps)
    out[f"mu{mu:g}"] = (time.perf_counter() - start) / F.steps
  a = torch.randn(1024, 1024)
  for _ in range(3):
    a @ a
  start = time.perf_counter()
  for _ in range(20):
    a @ a
  out["matmul_gflops"] = 20 * 2 * 1024 ** 3 / (time.perf_counter() - start) / 1e9
  out["version"] = torch.__version__
  out["threads"] = torch.get_num_threads()
  print(json.dumps(out))


def jax_side():
  """(fn(mu) -> seconds per step, matmul GFLOP/s fn): the engine's own step, jitted as a loop of
  ``steps`` steps like a lane's local training."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import common  # noqa: F401  (puts the project on sys.path)
  from fedprox_jax.core import client, models

  rng = np.random.default_rng(0)
  data = client.FederatedData(
      x=jnp.asarray(rng.normal(size=(CLIENT, 28, 28, 1)).astype(np.float32)),
      y=jnp.asarray(rng.integers(0, 10, CLIENT).astype(np.int32)),
      offsets=jnp.zeros(1, jnp.int32), sizes=jnp.full(1, CLIENT, jnp.int32))
  choice, first_use, cached = autotune_times()
  model = models.make_model("cnn", choice.conv_impl)
  params = models.init_params(model, jax.random.key(0))

  @jax.jit
  def train(params, mu, key):
    hp = client.LocalHParams(lr=jnp.float32(LR), mu=mu, weight_decay=jnp.float32(WD))
    tx = client.local_optimizer(hp)
    epochs = -(-F.steps * BATCH // CLIENT)
    perms = client.epoch_permutations(key, data.sizes[0], CLIENT, epochs)

    def body(s, carry):
      p, o = carry
      p, o, _ = client.local_step(model.apply, tx, data, data.offsets[0], data.sizes[0], perms,
                                  s, BATCH, p, o)
      return p, o
    return jax.lax.fori_loop(0, F.steps, body, (params, tx.init(params)))[0]

  def time_steps(mu):
    start = time.perf_counter()
    jax.block_until_ready(train(params, jnp.float32(mu), jax.random.key(1)))
    return (time.perf_counter() - start) / F.steps

  a = jnp.asarray(rng.normal(size=(1024, 1024)).astype(np.float32))
  matmul = jax.jit(lambda a: jax.lax.fori_loop(0, 20, lambda i, b: a @ b * 1e-3, a))

  def matmul_gflops():
    jax.block_until_ready(matmul(a))
    start = time.perf_counter()
    jax.block_until_ready(matmul(a))
    return 20 * 2 * 1024 ** 3 / (time.perf_counter() - start) / 1e9

  for mu in (0.0, 1.0):
    time_steps(mu)  # compile
  return time_steps, matmul_gflops, jax.__version__, (choice, first_use, cached)


def autotune_times():
  """(the autotuner's choice for this step, seconds it took on first use, seconds from its
  cache), in a fresh cache directory so that the first use is measured here."""
  import tempfile
  from fedprox_jax import cache
  from fedprox_jax.run import autotune
  os.environ[cache.CACHE_ENV] = tempfile.mkdtemp(prefix="autotune_")
  start = time.perf_counter()
  choice = autotune.choose("cnn", BATCH, 1, 50)
  first_use = time.perf_counter() - start
  autotune.choose.cache_clear()  # as a new process would
  start = time.perf_counter()
  autotune.choose("cnn", BATCH, 1, 50)
  return choice, first_use, time.perf_counter() - start


def main(argv):
  del argv
  if F.worker:
    return torch_worker()
  if not F.torch_python:
    raise app.UsageError("--torch_python=PATH: an interpreter with torch (see the docstring)")
  time_steps, matmul_gflops, jax_version, (choice, first_use, cached) = jax_side()
  import common  # after jax_side put the project on sys.path
  cmd = [F.torch_python, os.path.abspath(__file__), "--worker", f"--steps={F.steps}",
         f"--threads={F.threads}"]
  results = {k: [] for k in ("jax_mu0", "jax_mu1", "jax_peak", "torch_mu0", "torch_mu1",
                             "torch_peak")}
  torch_version = threads = None
  for _ in range(F.repeats):  # A B A B
    results["jax_mu0"].append(time_steps(0.0))
    results["jax_mu1"].append(time_steps(1.0))
    results["jax_peak"].append(matmul_gflops())
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
      raise SystemExit(f"the torch worker failed: {proc.stderr.strip().splitlines()[-1:]}")
    t = json.loads(proc.stdout.strip().splitlines()[-1])
    results["torch_mu0"].append(t["mu0"])
    results["torch_mu1"].append(t["mu1"])
    results["torch_peak"].append(t["matmul_gflops"])
    torch_version, threads = t["version"], t["threads"]
  med = {k: statistics.median(v) for k, v in results.items()}
  peak = max(med["jax_peak"], med["torch_peak"])
  print(f"command: python {' '.join(sys.argv)}")
  print(f"cpu: {common.cpu_model()} ({os.cpu_count()} cores); jax {jax_version}; torch {torch_version} "
        f"({threads} threads); {F.repeats} alternating rounds of {F.steps} steps, medians; "
        f"{time.strftime('%Y-%m-%d')}")
  print(f"f32 matmul 1024x1024: jax {med['jax_peak']:.0f} GFLOP/s, torch "
        f"{med['torch_peak']:.0f} GFLOP/s (peak used below: {peak:.0f})")
  print(f"autotuner (one lane, as the step below): {choice.describe()}; chosen in "
        f"{first_use:.1f} s on first use, {cached * 1e3:.0f} ms from its cache")
  print(f"one step = {STEP_FLOP / 1e9:.3f} GFLOP (batch {BATCH}, forward + backward)")
  print("| step (batch 10) | fedprox_jax ms | GFLOP/s | % of peak | plain torch ms | GFLOP/s "
        "| fedprox_jax speed-up |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  for mu, what in ((0, "mu = 0"), (1, "mu = 1 (torch: proximal term through autograd)")):
    j, t = med[f"jax_mu{mu}"], med[f"torch_mu{mu}"]
    print(f"| {what} | {j * 1e3:.2f} | {STEP_FLOP / j / 1e9:.0f} | "
          f"{100 * STEP_FLOP / j / 1e9 / peak:.0f} % | {t * 1e3:.2f} | {STEP_FLOP / t / 1e9:.0f} | "
          f"{t / j:.2f}x |")


if __name__ == "__main__":
  app.run(main)
