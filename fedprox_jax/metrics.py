"""Metrics of a global model, as pure functions (jit or vmap them over experiments).

* ``evaluate``: accuracy and mean cross-entropy over a dataset, in fixed-size batches.
* ``dissimilarity``: the paper's gradient dissimilarity, mean over clients k of
  ||grad f_k(w) - grad f(w)||^2 with grad f the sample-weighted mean of the clients' gradients
  and f_k the client's mean loss over all of its training data.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fedprox_jax.client import ApplyFn, FederatedData, cdiv


def evaluate(apply_fn: ApplyFn, params, x, y, batch_size: int):
  """(accuracy, mean loss) of ``params`` on (x, y), ``batch_size`` examples at a time."""
  n = x.shape[0]
  pad = -n % batch_size
  xb = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1)).reshape((-1, batch_size) + x.shape[1:])
  yb = jnp.pad(y, (0, pad)).reshape(-1, batch_size)
  valid = (jnp.arange(n + pad) < n).reshape(-1, batch_size)

  def batch_sums(batch):
    bx, by, bv = batch
    logits = apply_fn(params, bx)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, by)
    correct = jnp.argmax(logits, -1) == by
    return jnp.sum(jnp.where(bv, correct, 0)), jnp.sum(jnp.where(bv, loss, 0.0))

  correct, loss = jax.lax.map(batch_sums, (xb, yb, valid))
  return jnp.sum(correct) / n, jnp.sum(loss) / n


def client_gradient(apply_fn: ApplyFn, params, data: FederatedData, client, chunk: int):
  """Gradient of client ``client``'s mean loss over all its examples, ``chunk`` at a time."""
  offset, size = data.offsets[client], data.sizes[client]

  def add_chunk(i, grad_sum):
    pos = i * chunk + jnp.arange(chunk)
    valid = pos < size
    idx = offset + jnp.minimum(pos, size - 1)

    def loss_sum(p):
      ce = optax.softmax_cross_entropy_with_integer_labels(apply_fn(p, data.x[idx]), data.y[idx])
      return jnp.sum(jnp.where(valid, ce, 0.0))

    return jax.tree_util.tree_map(jnp.add, grad_sum, jax.grad(loss_sum)(params))

  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  total = jax.lax.fori_loop(0, cdiv(size, chunk), add_chunk, zeros)
  return jax.tree_util.tree_map(lambda g: g / size, total)


def dissimilarity(apply_fn: ApplyFn, params, data: FederatedData, chunk: int = 100):
  """mean_k ||g_k - g||^2, g = sum_k (n_k / n) g_k, over all clients of ``data``.

  Streams over clients with mean_k ||g_k - g||^2 = mean_k ||g_k||^2 - 2 <mean_k g_k, g> + ||g||^2,
  so memory stays at a few parameter copies whatever the number of clients.
  """
  num_clients = data.sizes.shape[0]
  weights = data.sizes / jnp.sum(data.sizes)

  def add_client(k, carry):
    sq_norms, mean_grad, weighted_grad = carry
    g = client_gradient(apply_fn, params, data, k, chunk)
    sq = sum(jnp.sum(leaf ** 2) for leaf in jax.tree_util.tree_leaves(g))
    mean_grad = jax.tree_util.tree_map(lambda a, b: a + b / num_clients, mean_grad, g)
    weighted_grad = jax.tree_util.tree_map(lambda a, b: a + weights[k] * b, weighted_grad, g)
    return sq_norms + sq / num_clients, mean_grad, weighted_grad

  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  sq_norms, mean_grad, g = jax.lax.fori_loop(0, num_clients, add_client,
                                             (jnp.zeros(()), zeros, zeros))
  dot = lambda a, b: sum(jnp.sum(u * v) for u, v in zip(jax.tree_util.tree_leaves(a),
                                                          jax.tree_util.tree_leaves(b)))
  return sq_norms - 2 * dot(mean_grad, g) + dot(g, g)
