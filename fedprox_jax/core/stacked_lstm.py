"""The paper's LSTM models: Shakespeare's (the authors' ``flearn/models/shakespeare/
stacked_lstm.py``: each character id embedded in 8 dimensions, two LSTM layers of 256 units, a
dense layer from the last step's output to the next-character logits) and Sent140's
(``flearn/models/sent140/stacked_lstm.py``: the words' frozen 300-d vectors, two LSTM layers of
100, a linear dense layer of 30, one logit).

Written as TensorFlow 1's ``BasicLSTMCell``, which the authors' code runs: one kernel on
[x, h] giving the i, j, f, o gates (Glorot-uniform, zero bias, as ``tf.get_variable`` and
``tf.layers.dense`` initialise), 1.0 added to the forget gate; the embedding Glorot-uniform
too. ``tests/test_models.py`` checks it against a step-by-step loop in plain jax.numpy and,
without the forget bias, against ``flax.linen.LSTMCell``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

_GLOROT = nn.initializers.glorot_uniform()


class LSTMCell(nn.Module):
  """One step: ((c, h), x) -> ((c', h'), h')."""
  hidden: int
  forget_bias: float = 1.0

  @nn.compact
  def __call__(self, carry, x):
    c, h = carry
    gates = nn.Dense(4 * self.hidden, kernel_init=_GLOROT, bias_init=nn.initializers.zeros,
                     name="gates")(jnp.concatenate([x, h], axis=-1))
    i, j, f, o = jnp.split(gates, 4, axis=-1)
    c = c * jax.nn.sigmoid(f + self.forget_bias) + jax.nn.sigmoid(i) * jnp.tanh(j)
    h = jnp.tanh(c) * jax.nn.sigmoid(o)
    return (c, h), h


# The cell over the time axis of [batch, time, features], its parameters shared by the steps.
_OverTime = nn.scan(LSTMCell, variable_broadcast="params", split_rngs={"params": False},
                    in_axes=1, out_axes=1)


def lstm_layers(x, hidden: int, layers: int, forget_bias: float):
  """``layers`` LSTM layers over [batch, time, features] -> the last layer's outputs."""
  for layer in range(layers):
    zeros = jnp.zeros((x.shape[0], hidden), x.dtype)
    _, x = _OverTime(hidden, forget_bias, name=f"lstm_{layer}")((zeros, zeros), x)
  return x


class StackedLSTM(nn.Module):
  """Token ids [batch, time] -> logits [batch, num_classes] of the token after the last."""
  vocab_size: int
  num_classes: int
  embedding: int = 8
  hidden: int = 256
  layers: int = 2
  forget_bias: float = 1.0

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(self.vocab_size, self.embedding, embedding_init=_GLOROT)(tokens)
    x = lstm_layers(x, self.hidden, self.layers, self.forget_bias)
    return nn.Dense(self.num_classes, kernel_init=_GLOROT, bias_init=nn.initializers.zeros)(
        x[:, -1])


class SentimentLSTM(nn.Module):
  """Word vectors [batch, time, 300] -> two logits (0, z): softmax cross-entropy on them is the
  authors' sigmoid cross-entropy on their one logit z, and argmax is their z > 0."""
  hidden: int = 100
  layers: int = 2
  dense: int = 30
  forget_bias: float = 1.0

  @nn.compact
  def __call__(self, vectors):
    x = lstm_layers(vectors, self.hidden, self.layers, self.forget_bias)
    dense = lambda n, name: nn.Dense(n, kernel_init=_GLOROT, bias_init=nn.initializers.zeros,
                                     name=name)
    hidden = dense(self.dense, "hidden")(x[:, -1])  # no activation after it, as theirs
    z = dense(1, "logit")(hidden)
    return jnp.concatenate([jnp.zeros_like(z), z], axis=-1)
