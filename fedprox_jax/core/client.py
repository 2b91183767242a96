"""The client update: minibatch SGD on cross-entropy + mu/2 * ||w - w_global||^2.

Everything here is a pure function of arrays, so it can be jitted, vmapped and looped alike.
The dataset lives on the device once (``FederatedData``); a client is an (offset, size)
range of it and a minibatch is a gather by indices computed inside the step.

Data order: each epoch visits the client's own examples once in a fresh random order; the last
batch of an epoch may be partial and its loss is the mean over its real examples only (as a
PyTorch DataLoader with drop_last=False does). Client k runs ``epochs_k * ceil(n_k / B)`` steps.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedprox_jax.federated_data import FederatedData

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]


class LocalHParams(NamedTuple):
  """Traced (not static) hyper-parameters of the local solver, so sweeps need no recompile."""
  lr: jax.Array
  mu: jax.Array
  weight_decay: jax.Array | float = 0.0  # torch.optim.SGD's weight_decay (the seed: 0.001)
  momentum: jax.Array | float = 0.0  # torch.optim.SGD's momentum (local_momentum_optimizer)
  algorithm: tuple = ()  # the algorithm's own hyper-parameters (``core/hooks.py``)


class ProximalState(NamedTuple):
  anchor: Params  # w_global: the parameters the optimizer was initialised with


def proximal(mu) -> optax.GradientTransformation:
  """Adds mu * (w - w_anchor), the gradient of mu/2 * ||w - w_anchor||^2 (the squared norm).

  The anchor is the parameters passed to ``init``: a client initialises its optimizer with the
  global model, which is exactly the FedProx anchor. With mu = 0 the updates pass unchanged.
  """

  def init_fn(params):
    return ProximalState(anchor=params)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("proximal() needs the current params: call tx.update(grads, state, params)")
    updates = jax.tree_util.tree_map(
        lambda g, w, a: g + mu * (w - a), updates, params, state.anchor)
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)


def local_optimizer(hp: LocalHParams) -> optax.GradientTransformation:
  """FedProx's local solver: the proximal term, weight decay, then plain SGD.

  As ``torch.optim.SGD(lr, weight_decay=wd)`` on the loss with the proximal term (the seed):
  the step is -lr * (grad(CE) + mu * (w - w_global) + wd * w), i.e. plain SGD on
  CE + mu/2 ||w - w_global||^2 + wd/2 ||w||^2. With wd = 0 (the paper) it is plain SGD.
  """
  return optax.chain(proximal(hp.mu), optax.add_decayed_weights(hp.weight_decay),
                     optax.sgd(hp.lr))


def local_momentum_optimizer(hp: LocalHParams) -> optax.GradientTransformation:
  """``local_optimizer`` with heavy-ball momentum, as ``torch.optim.SGD(lr, momentum,
  weight_decay)``: buf <- momentum * buf + (grad + mu (w - w_global) + wd w), w <- w - lr buf
  (NIID-Bench's clients: momentum 0.9). Its state (the buffer) is per client: the lanes carry
  it per lane and reset it at each client's start."""
  return optax.chain(proximal(hp.mu), optax.add_decayed_weights(hp.weight_decay),
                     optax.sgd(hp.lr, momentum=hp.momentum))


def cdiv(a, b):
  return (a + b - 1) // b


def num_local_steps(sizes, epochs, batch_size: int):
  """Steps a client runs: epochs * ceil(n / B)."""
  return epochs * cdiv(sizes, batch_size)


def shuffle_buckets(max_size: int) -> tuple:
  """Shuffle widths: powers of 4 from 16 below max_size, and max_size itself."""
  widths, w = [], 16
  while w < max_size:
    widths.append(w)
    w *= 4
  return tuple(widths) + (max_size,)


def epoch_permutations(key: jax.Array, size, max_size: int, num_epochs: int) -> jax.Array:
  """[num_epochs, max_size] int32: row e starts with a uniform permutation of 0..size-1.

  Random keys for the slots, slots >= size pushed to the end, argsort: a fresh shuffle of a
  variable-length client with static shapes and no host work. The sort runs over the smallest
  bucket width >= size (``lax.switch``), not over max_size: with power-law sizes that is ~10x
  cheaper. Call it unbatched (a loop or ``lax.map`` over clients): under vmap the switch would
  evaluate every bucket.
  """
  widths = shuffle_buckets(max_size)

  def shuffle_in(width):
    def shuffle(keys, size):
      slots = jnp.arange(width, dtype=jnp.uint32)

      def one_epoch(k):
        head = _argsort_random_keys(jax.random.bits(k, (width,), jnp.uint32), slots < size)
        return jnp.concatenate([head, jnp.arange(width, max_size, dtype=jnp.int32)])

      return jax.vmap(one_epoch)(keys)
    return shuffle

  bucket = jnp.searchsorted(jnp.array(widths), size)  # first width >= size
  return jax.lax.switch(bucket, [shuffle_in(w) for w in widths],
                        jax.random.split(key, num_epochs), size)


def _argsort_random_keys(bits, real):
  """The order ``jnp.argsort(where(real, uniform, 2.0))`` (stable) gives, for the uniform
  floats ``jax.random.uniform`` makes of these ``bits``, in one sort of packed uint64 keys.

  uniform() keeps the top 23 bits (its float's mantissa), so the floats' order is that of
  ``bits >> 9``, ties by slot; a key (bits >> 9, or 2^23 for slots past the client's size)
  << 32 | slot sorts to the same order. XLA:CPU sorts one array of integers ~6x faster than
  it argsorts floats (20 x 4096 keys: 2.9 vs 17 ms), and the orders are bit-identical, so no
  run's results change (tests/test_client.py checks both).
  """
  slots = jnp.arange(bits.shape[-1], dtype=jnp.uint32)
  with jax.enable_x64():
    high = jnp.where(real, bits >> 9, jnp.uint32(1 << 23)).astype(jnp.uint64)
    packed = jnp.sort((high << 32) | slots.astype(jnp.uint64), axis=-1)
    return (packed & jnp.uint64(0xFFFFFFFF)).astype(jnp.int32)


def minibatch(data: FederatedData, offset, size, perms: jax.Array, local_step, batch_size: int):
  """(x, y, valid) of a client's minibatch number ``local_step`` (epochs run back to back)."""
  batches_per_epoch = cdiv(size, batch_size)
  epoch = jnp.minimum(local_step // batches_per_epoch, perms.shape[0] - 1)
  pos = (local_step % batches_per_epoch) * batch_size + jnp.arange(batch_size)
  valid = pos < size
  idx = offset + perms[epoch, jnp.minimum(pos, size - 1)]
  return data.x[idx], data.y[idx], valid


def masked_cross_entropy(logits, labels, valid):
  """Mean cross-entropy over the real (valid) examples of a possibly partial batch."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return jnp.sum(jnp.where(valid, ce, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def sgd_step(apply_fn: ApplyFn, tx: optax.GradientTransformation, params, opt_state, x, y, valid,
             active=None, extra_update=None):
  """One local step; returns (params, opt_state, minibatch loss before the step).

  ``active`` (a traced bool) masks the step: when False the update is zeroed, so the params
  come back bit-identical. Masking the update rather than selecting between old and new params
  fuses into the SGD update and costs no extra pass over the parameters. ``extra_update`` (a
  parameter tree) is added to the optimizer's update: SCAFFOLD's -lr (c - c_i).
  """

  def loss_fn(p):
    return masked_cross_entropy(apply_fn(p, x), y, valid)

  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  if extra_update is not None:
    updates = jax.tree_util.tree_map(jnp.add, updates, extra_update)
  if active is not None:
    updates = jax.tree_util.tree_map(lambda u: jnp.where(active, u, 0.0), updates)
  return optax.apply_updates(params, updates), opt_state, loss


def local_step(apply_fn: ApplyFn, tx: optax.GradientTransformation, data: FederatedData,
               offset, size, perms, step, batch_size: int, params, opt_state, active=None,
               extra_update=None):
  """Step number ``step`` of a client's local training: its minibatch, then ``sgd_step``.

  The one step both the vectorized lanes and the looped reference (``reference.py``) run, so
  the two cannot drift apart.
  """
  x, y, valid = minibatch(data, offset, size, perms, step, batch_size)
  return sgd_step(apply_fn, tx, params, opt_state, x, y, valid, active, extra_update)


def full_gradient(apply_fn: ApplyFn, params, data: FederatedData, offset, size, chunk: int = 100):
  """Gradient of the mean cross-entropy over a client's ``size`` examples from ``offset``,
  ``chunk`` at a time (memory: one chunk's activations, whatever the client's size)."""

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


def local_objective_grad_norm(apply_fn: ApplyFn, params, anchor, data: FederatedData, offset,
                              size, hp: LocalHParams, chunk: int = 100):
  """||grad h(params; anchor)|| for the objective the local solver descends,
  h(w; w_t) = F_k(w) + wd/2 ||w||^2 + mu/2 ||w - w_t||^2 (F_k: the client's mean loss over all
  its examples; wd = 0 is the paper's h_k). The paper's gamma-inexactness (Definition 1) of a
  local solution w* is ||grad h(w*; w_t)|| / ||grad h(w_t; w_t)||."""
  g = full_gradient(apply_fn, params, data, offset, size, chunk)
  total = jax.tree_util.tree_map(lambda g, w, a: g + hp.weight_decay * w + hp.mu * (w - a),
                                 g, params, anchor)
  return jnp.sqrt(sum(jnp.sum(leaf ** 2) for leaf in jax.tree_util.tree_leaves(total)))
