"""What one SGD step of the synthetic federations' model costs per vmap lane.

  python benchmarks/lane_step.py [--lanes=1,2,9,30,90] [--steps=5000] [--repeats=3]

The logistic regression 60 -> 10 at batch 10 (the paper's synthetic setting): each lane gathers
its own minibatch from a shared 20k-example array and takes a proximal SGD step with its own
weights (``client.sgd_step``), inside one jitted while loop of ``--steps`` steps, vmapped over
``--lanes`` lanes (a lane is a client, or an experiment of a sweep program). If a vmapped step
cost about the same as a single one, running a sweep's experiments as lanes of one program
would pay; the per-lane figure says whether it does on this backend. Prints microseconds per
step and per lane-step (minimum over repeats).
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import common
from fedprox_jax.core import client

flags.DEFINE_list("lanes", ["1", "2", "9", "30", "90"], "lane counts")
flags.DEFINE_integer("steps", 5000, "steps per timing")
flags.DEFINE_integer("repeats", 3, "timings per lane count (minimum reported)")
F = flags.FLAGS
N, D, C, B = 20000, 60, 10, 10


def make_loop(lanes: int, steps: int, x, y):
  hp = client.LocalHParams(lr=jnp.float32(0.01), mu=jnp.float32(1.0))
  tx = client.local_optimizer(hp)

  def apply(p, xb):
    return xb @ p["w"] + p["b"]

  def step(p, i, offset):
    idx = (offset + i * B + jnp.arange(B)) % N
    p, _, _ = client.sgd_step(apply, tx, p, tx.init(p), x[idx], y[idx], jnp.ones(B, bool), True)
    return p

  def lane_steps(p, i, offsets):
    if lanes == 1:  # as lanes.py does: a plain call, not a vmap of one
      return jax.tree_util.tree_map(
          lambda a: a[None], step(jax.tree_util.tree_map(lambda a: a[0], p), i, offsets[0]))
    return jax.vmap(step, in_axes=(0, None, 0))(p, i, offsets)

  def run(offsets):
    p = {"w": jnp.zeros((lanes, D, C)), "b": jnp.zeros((lanes, C))}
    return jax.lax.while_loop(lambda c: c[0] < steps,
                              lambda c: (c[0] + 1, lane_steps(c[1], c[0], offsets)), (0, p))[1]
  return jax.jit(run)


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((N, D), np.float32))
  y = jnp.asarray(rng.integers(0, C, N).astype(np.int32))
  print(common.header())
  print(f"cpu: {common.cpu_model()}")
  print("| lanes | µs per step | µs per lane-step | vs 1 lane, per lane-step |")
  print("|---:|---:|---:|---:|")
  single = None
  for lanes in map(int, F.lanes):
    loop, offsets = make_loop(lanes, F.steps, x, y), jnp.arange(lanes) * 997
    jax.block_until_ready(loop(offsets))  # compile
    times = []
    for _ in range(F.repeats):
      start = time.perf_counter()
      jax.block_until_ready(loop(offsets))
      times.append((time.perf_counter() - start) / F.steps * 1e6)
    per_lane = min(times) / lanes
    single = single or per_lane
    print(f"| {lanes} | {min(times):.2f} | {per_lane:.2f} | {single / per_lane:.2f}x |")


if __name__ == "__main__":
  app.run(main)
