"""Where one CNN SGD step's time goes on this CPU, piece by piece, with the alternatives that
were measured against the engine's choices (max pooling, the convolution's kernel gradient).

  python benchmarks/step_profile.py [--batch=10] [--steps=200] [--repeats=5]

The seed's CNN at batch 10 on MNIST-shaped random data; each piece is jitted as a loop of
``--steps`` iterations (forward and backward, as training runs it) and its fastest of
``--repeats`` timings is printed in ms per iteration, with the CPU's model name.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

import common
from fedprox_jax.core import client, models

flags.DEFINE_integer("batch", 10, "minibatch size")
flags.DEFINE_integer("steps", 200, "iterations per timing")
flags.DEFINE_integer("repeats", 5, "timings per piece (fastest reported)")
F = flags.FLAGS


def timed(body, init) -> float:
  run = jax.jit(lambda init: jax.lax.fori_loop(0, F.steps, body, init))
  jax.block_until_ready(run(init))
  best = float("inf")
  for _ in range(F.repeats):
    start = time.perf_counter()
    jax.block_until_ready(run(init))
    best = min(best, time.perf_counter() - start)
  return best / F.steps * 1e3


def grad_sum(f, *args):
  """fwd + bwd of sum(f(args)) w.r.t. every argument, summed (so nothing is dead code)."""
  return lambda s, acc: acc + sum(g.sum() for g in jax.grad(
      lambda *a: f(*a).sum(), argnums=tuple(range(len(args))))(*[a + s * 1e-9 for a in args]))


def pool_reshape(x):  # the engine's max pooling before 2026-12-02
  n, h, w, c = x.shape
  x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  return x.reshape(n, h // 2 + 1, 2, w // 2 + 1, 2, c).max(axis=(2, 4))


def pool_reduce_window(x):  # flax.linen.max_pool
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
                               ((0, 0), (1, 1), (1, 1), (0, 0)))


def conv_plain_gradient(x, kernel, padding):  # im2col with autodiff's kernel gradient
  kh, kw, cin, cout = kernel.shape
  x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  oh, ow = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  patches = jnp.concatenate(
      [x[:, i:i + oh, j:j + ow, :] for i in range(kh) for j in range(kw)], axis=-1)
  return patches @ kernel.reshape(kh * kw * cin, cout)


def main(argv):
  del argv
  b, rng = F.batch, np.random.default_rng(0)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape).astype(np.float32))
  x_all, y_all = normal(600, 28, 28, 1), jnp.asarray(rng.integers(0, 10, 600).astype(np.int32))
  model = models.make_model("cnn", "im2col")
  params = models.init_params(model, jax.random.key(0))
  p = params["params"]

  def batch(s):
    idx = (s * b + jnp.arange(b)) % 600
    return x_all[idx], y_all[idx]

  def loss(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply(params, x), y).mean()

  hp = client.LocalHParams(lr=jnp.float32(0.03), mu=jnp.float32(1.0),
                           weight_decay=jnp.float32(1e-3))
  tx = client.local_optimizer(hp)

  def engine_step(s, carry):
    params, opt_state = carry
    x, y = batch(s)
    params, opt_state, _ = client.sgd_step(model.apply, tx, params, opt_state, x, y,
                                           jnp.ones(b, bool))
    return params, opt_state

  conv = lambda impl, pad: lambda x, k: jax.nn.relu(impl(x, k, pad))
  x1, x2, x3 = normal(b, 28, 28, 1), normal(b, 14, 14, 32), normal(b, 3136)
  a1, a2 = normal(b, 26, 26, 32), normal(b, 12, 12, 64)
  rows = [
      ("the engine's SGD step (proximal term, weight decay)",
       timed(engine_step, (params, tx.init(params)))),
      ("forward + loss only", timed(lambda s, acc: acc + loss(params, *batch(s)), 0.0)),
      ("forward + backward (no update)", timed(lambda s, acc: acc + sum(
          g.sum() for g in jax.tree_util.tree_leaves(jax.grad(loss)(params, *batch(s)))), 0.0)),
      ("conv1 (1->32) fwd + kernel grad", timed(lambda s, acc: acc + jax.grad(
          lambda k: conv(models.conv2d_im2col, 1)(x1 + s * 1e-9, k).sum())(
              p["Conv2D_0"]["kernel"]).sum(), 0.0)),
      ("conv2 (32->64) fwd + bwd", timed(grad_sum(conv(models.conv2d_im2col, 1), x2,
                                                    p["Conv2D_1"]["kernel"]), 0.0)),
      ("  the same, autodiff's kernel gradient", timed(grad_sum(conv(conv_plain_gradient, 1),
                                                                x2, p["Conv2D_1"]["kernel"]), 0.0)),
      ("  the same, XLA's convolution", timed(grad_sum(conv(models.conv2d_xla, 1), x2,
                                                       p["Conv2D_1"]["kernel"]), 0.0)),
      ("pool1 (26x26x32) fwd + bwd", timed(grad_sum(models.max_pool_2x2_pad1, a1), 0.0)),
      ("  the same, reshape + max", timed(grad_sum(pool_reshape, a1), 0.0)),
      ("  the same, reduce_window (flax max_pool)", timed(grad_sum(pool_reduce_window, a1), 0.0)),
      ("pool2 (12x12x64) fwd + bwd", timed(grad_sum(models.max_pool_2x2_pad1, a2), 0.0)),
      ("fc1 (3136->512) fwd + bwd", timed(grad_sum(lambda x, k: jax.nn.relu(x @ k), x3,
                                                   p["Dense_0"]["kernel"]), 0.0)),
  ]
  print(common.header())
  print(f"cpu: {common.cpu_model()}; batch {b}; fastest of {F.repeats} timings of {F.steps} "
        "iterations")
  print("| piece | ms |\n|---|---:|")
  for name, ms in rows:
    print(f"| {name} | {ms:.3f} |")


if __name__ == "__main__":
  app.run(main)
