"""Metrics of a global model, as pure functions (jit or vmap them over experiments).

* ``evaluate``: accuracy and mean cross-entropy over a dataset, in fixed-size batches.
* ``dissimilarities``: the authors' code's gradient dissimilarity, mean over clients k of
  ||grad f_k(w) - grad f(w)||^2 with grad f the sample-weighted mean of the clients' gradients
  and f_k the client's mean loss over all of its training data; and the paper's B-local
  dissimilarity (Definition 3), B(w) = sqrt(sum_k p_k ||grad f_k(w)||^2) / ||grad f(w)||,
  p_k = n_k / n (1 when every client holds the same data; larger, more heterogeneous).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fedprox_jax.core.client import ApplyFn, FederatedData, cdiv, full_gradient


def evaluate(apply_fn: ApplyFn, params, x, y, batch_size: int):
  """(accuracy, mean loss) of ``params`` on (x, y), ``batch_size`` examples at a time.

  Batches are slices of x in place (no padded copy of the dataset: that copy cost more than
  the logistic regression's whole evaluation); when batch_size does not divide n, the last
  batch is the last batch_size examples, and the ones an earlier batch counted are masked.
  """
  n = x.shape[0]
  batch_size = min(batch_size, n)

  def add_batch(i, sums):
    correct, loss = sums
    start = jnp.minimum(i * batch_size, n - batch_size)
    bx = jax.lax.dynamic_slice_in_dim(x, start, batch_size)
    by = jax.lax.dynamic_slice_in_dim(y, start, batch_size)
    new = start + jnp.arange(batch_size) >= i * batch_size
    logits = apply_fn(params, bx)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, by)
    return (correct + jnp.sum(jnp.where(new, jnp.argmax(logits, -1) == by, 0)),
            loss + jnp.sum(jnp.where(new, ce, 0.0)))

  correct, loss = jax.lax.fori_loop(0, cdiv(n, batch_size), add_batch,
                                    (jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32)))
  return correct / n, loss / n


def client_gradient(apply_fn: ApplyFn, params, data: FederatedData, client, chunk: int):
  """Gradient of client ``client``'s mean loss over all its examples, ``chunk`` at a time."""
  return full_gradient(apply_fn, params, data, data.offsets[client], data.sizes[client], chunk)


def dissimilarities(apply_fn: ApplyFn, params, data: FederatedData, chunk: int = 100) -> dict:
  """{"dissimilarity": mean_k ||g_k - g||^2, "b_dissimilarity": sqrt(sum_k p_k ||g_k||^2) / ||g||}
  with g = sum_k p_k g_k, p_k = n_k / n, over all clients of ``data``.

  Streams over clients with mean_k ||g_k - g||^2 = mean_k ||g_k||^2 - 2 <mean_k g_k, g> + ||g||^2,
  so memory stays at a few parameter copies whatever the number of clients.
  """
  num_clients = data.sizes.shape[0]
  weights = data.sizes / jnp.sum(data.sizes)

  def add_client(k, carry):
    sq_norms, weighted_sq_norms, mean_grad, weighted_grad = carry
    g = client_gradient(apply_fn, params, data, k, chunk)
    sq = sum(jnp.sum(leaf ** 2) for leaf in jax.tree_util.tree_leaves(g))
    mean_grad = jax.tree_util.tree_map(lambda a, b: a + b / num_clients, mean_grad, g)
    weighted_grad = jax.tree_util.tree_map(lambda a, b: a + weights[k] * b, weighted_grad, g)
    return (sq_norms + sq / num_clients, weighted_sq_norms + weights[k] * sq, mean_grad,
            weighted_grad)

  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  sq_norms, weighted_sq_norms, mean_grad, g = jax.lax.fori_loop(
      0, num_clients, add_client, (jnp.zeros(()), jnp.zeros(()), zeros, zeros))
  dot = lambda a, b: sum(jnp.sum(u * v) for u, v in zip(jax.tree_util.tree_leaves(a),
                                                          jax.tree_util.tree_leaves(b)))
  g_sq = dot(g, g)
  return {"dissimilarity": sq_norms - 2 * dot(mean_grad, g) + g_sq,
          # inf at a stationary point of f (grad f = 0) where some client's gradient is not
          "b_dissimilarity": jnp.sqrt(weighted_sq_norms / g_sq)}
