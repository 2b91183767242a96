"""Models of the FedProx MNIST experiments, used purely: ``model.apply(params, x)``.

* ``CNN``: the seed baseline's network (Conv5x5/32 -> pool -> Conv5x5/64 -> pool -> FC512 -> FC10).
* ``LogisticRegression``: multinomial logistic regression 784 -> 10 (the paper's MNIST model).
* ``LeNet`` (``niid_cnn``): NIID-Bench's MNIST CNN (conv 6@5x5 -> pool -> conv 16@5x5 -> pool ->
  FC120 -> FC84 -> FC10; Flower's ``baselines/niid_bench`` ``CNNMnist``).

Initialisation follows PyTorch's defaults (weights and biases ~ U(+-1/sqrt(fan_in))) so that
training dynamics at the seed's learning rate (0.03) match the PyTorch baseline.

The convolution has two interchangeable implementations with the same parameters
(``kernel`` HWIO, ``bias``) as ``flax.linen.Conv``:

* ``"xla"``: ``lax.conv_general_dilated``. Fastest for one model, but when it is vmapped over
  clients with per-client kernels XLA lowers it to a grouped convolution, which XLA:CPU runs
  3-9x slower than a Python loop over the clients.
* ``"im2col"``: k*k static slices of the padded input concatenated on the channel axis and one
  matmul with the reshaped kernel. Vmapped, that is a batched matmul, which every backend runs
  well. It is the fixed table's CPU default.
* ``"patches"``: the same matmul on XLA's own patch extraction; ``"xla_nchw"``: XLA's
  convolution in PyTorch's NCHW layout.

On a CPU, ``run/autotune.py`` times them on the machine and uses the fastest.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedprox_jax.core import stacked_lstm
from fedprox_jax.federated_data import InputSpec
from fedprox_jax.registry import Registry

MLR_INITS = ("torch", "glorot")  # PyTorch nn.Linear's default (the seed) | TF Glorot (the paper)


def torch_uniform(fan_in: int):
  """PyTorch's default init for Linear/Conv weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


@jax.custom_vjp
def _patch_matmul(patches: jax.Array, kernel: jax.Array) -> jax.Array:
  """``patches @ kernel`` ([..., P] x [P, O]) whose kernel gradient is computed as
  (g^T patches)^T: XLA:CPU runs the plain gradient patches^T g, a contraction over the long
  leading axis, at half the rate of the forward product (seed CNN, second convolution,
  batch 10, Intel Xeon: its forward + backward 3.05 -> 2.80 ms)."""
  return patches @ kernel


def _patch_matmul_fwd(patches, kernel):
  return patches @ kernel, (patches, kernel)


def _patch_matmul_bwd(saved, g):
  patches, kernel = saved
  rows = patches.reshape(-1, patches.shape[-1])
  g_rows = g.reshape(-1, g.shape[-1])
  # The barrier keeps XLA from folding the final transpose back into the product.
  return g @ kernel.T, jax.lax.optimization_barrier(g_rows.T @ rows).T


_patch_matmul.defvjp(_patch_matmul_fwd, _patch_matmul_bwd)


def conv2d_im2col(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
  """Stride-1 2D convolution (NHWC input, HWIO kernel) as im2col + one matmul."""
  kh, kw, cin, cout = kernel.shape
  x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  out_h, out_w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  # Patch feature order (i, j, c) matches kernel.reshape(kh * kw * cin, cout).
  patches = jnp.concatenate(
      [x[:, i:i + out_h, j:j + out_w, :] for i in range(kh) for j in range(kw)], axis=-1)
  return _patch_matmul(patches, kernel.reshape(kh * kw * cin, cout))


def conv2d_xla(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(1, 1), padding=((padding, padding), (padding, padding)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv2d_patches(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
  """im2col with XLA's own patch extraction (``conv_general_dilated_patches``, an identity-kernel
  convolution) and one matmul."""
  kh, kw, cin, cout = kernel.shape
  patches = jax.lax.conv_general_dilated_patches(
      x, (kh, kw), (1, 1), ((padding, padding), (padding, padding)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  # Its patch feature order is (c, i, j).
  return _patch_matmul(patches, kernel.transpose(2, 0, 1, 3).reshape(cin * kh * kw, cout))


def conv2d_xla_nchw(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
  """XLA's convolution in PyTorch's NCHW / OIHW layout (transposed in and out)."""
  out = jax.lax.conv_general_dilated(
      x.transpose(0, 3, 1, 2), kernel.transpose(3, 2, 0, 1), window_strides=(1, 1),
      padding=((padding, padding), (padding, padding)),
      dimension_numbers=("NCHW", "OIHW", "NCHW"))
  return out.transpose(0, 2, 3, 1)


# Interchangeable: the same parameters, outputs and gradients up to float rounding (tested
# against flax.linen.Conv), so which one runs is a question of speed only.
CONVOLUTIONS = {"im2col": conv2d_im2col, "xla": conv2d_xla, "patches": conv2d_patches,
                "xla_nchw": conv2d_xla_nchw}
CONV_IMPLS = tuple(CONVOLUTIONS)


class Conv2D(nn.Module):
  """Stride-1 square convolution with the parameter layout of ``flax.linen.Conv``."""
  features: int
  kernel_size: int
  padding: int
  impl: str = "im2col"

  @nn.compact
  def __call__(self, x):
    if self.impl not in CONV_IMPLS:
      raise ValueError(f"conv impl {self.impl!r} is not one of {CONV_IMPLS}")
    cin = x.shape[-1]
    fan_in = self.kernel_size * self.kernel_size * cin
    kernel = self.param("kernel", torch_uniform(fan_in),
                        (self.kernel_size, self.kernel_size, cin, self.features))
    bias = self.param("bias", torch_uniform(fan_in), (self.features,))
    return CONVOLUTIONS[self.impl](x, kernel, self.padding) + bias


class Dense(nn.Module):
  """``flax.linen.Dense`` with PyTorch's default initialisation."""
  features: int

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    kernel = self.param("kernel", torch_uniform(fan_in), (fan_in, self.features))
    bias = self.param("bias", torch_uniform(fan_in), (self.features,))
    return x @ kernel + bias


def _max_of_2x2(x: jax.Array) -> jax.Array:
  """Max over each 2x2 window of an NHWC array with even height and width, as the maximum of
  its four strided slices: the same values as a reshape + max or ``reduce_window``, and a
  gradient 4x cheaper on CPU (0.16 vs 0.68 ms fwd + bwd for the seed CNN's first pool at batch
  10, Intel Xeon; reduce_window's select-and-scatter 1.10). Tied maxima share the gradient
  (the last float bits only, for exactly equal positive activations; PyTorch picks one)."""
  return jnp.maximum(jnp.maximum(x[:, 0::2, 0::2], x[:, 0::2, 1::2]),
                     jnp.maximum(x[:, 1::2, 0::2], x[:, 1::2, 1::2]))


def max_pool_2x2_pad1(x: jax.Array) -> jax.Array:
  """PyTorch's MaxPool2d(kernel 2, stride 2, padding 1) on even sizes: padded cells never win."""
  n, h, w, c = x.shape
  if h % 2 or w % 2:
    raise ValueError(f"max_pool_2x2_pad1 needs even height and width, got {h}x{w}")
  return _max_of_2x2(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf))


class CNN(nn.Module):
  """The seed's CNN. 28x28 -> conv(pad 1) 26 -> pool(pad 1) 14 -> conv 12 -> pool 7 -> 7*7*64."""
  num_classes: int = 10
  conv_impl: str = "im2col"

  @nn.compact
  def __call__(self, x):
    x = max_pool_2x2_pad1(nn.relu(Conv2D(32, 5, 1, self.conv_impl)(x)))
    x = max_pool_2x2_pad1(nn.relu(Conv2D(64, 5, 1, self.conv_impl)(x)))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(Dense(512)(x))
    return Dense(self.num_classes)(x)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """PyTorch's MaxPool2d(2, 2) (no padding; an odd last row or column is dropped, as there)."""
  n, h, w, c = x.shape
  return _max_of_2x2(x[:, :h // 2 * 2, :w // 2 * 2])


class LeNet(nn.Module):
  """NIID-Bench's MNIST CNN: 28x28 -> conv 6@5x5 24 -> pool 12 -> conv 16@5x5 8 -> pool 4 ->
  FC120 -> FC84 -> FC10, ReLU after each but the last, PyTorch's default initialisation."""
  num_classes: int = 10
  conv_impl: str = "im2col"

  @nn.compact
  def __call__(self, x):
    x = max_pool_2x2(nn.relu(Conv2D(6, 5, 0, self.conv_impl)(x)))
    x = max_pool_2x2(nn.relu(Conv2D(16, 5, 0, self.conv_impl)(x)))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(Dense(120)(x))
    x = nn.relu(Dense(84)(x))
    return Dense(self.num_classes)(x)


class LogisticRegression(nn.Module):
  """Multinomial logistic regression on the flattened image. ``init_scheme``: 'torch' (PyTorch's
  nn.Linear default, the seed) or 'glorot' (the authors' TensorFlow dense layer: Glorot-
  uniform kernel, zero bias)."""
  num_classes: int = 10
  init_scheme: str = "torch"

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    if self.init_scheme == "glorot":
      return nn.Dense(self.num_classes, kernel_init=nn.initializers.glorot_uniform(),
                      bias_init=nn.initializers.zeros)(x)
    return Dense(self.num_classes)(x)


@dataclasses.dataclass(frozen=True)
class Model:
  """A model by name (``config.model``): how to build it and the rules that hinge on it.

  ``build(num_classes, input_spec=..., conv_impl=..., mlr_init=...)`` returns a Flax module
  (``init(key, x)``, ``apply(params, x) -> logits``; x a batch of the data set's inputs, as
  ``input_spec`` (``federated_data.InputSpec``) describes one: float32 features, or int32
  token ids below ``input_spec.vocab_size``); it takes the options it uses and ignores the
  others.
  """
  name: str
  build: Callable
  description: str = ""
  convolutional: bool = False  # conv_impl / eval_conv_impl apply (timed by the CPU autotuner)
  image_inputs: bool = False   # needs [H, W, C] inputs (not a vector data set's)
  token_inputs: bool = False   # takes int32 token ids (a data set with vocab_size), not features
  # Evaluation batch when config.eval_batch_size is 0: (CPU, accelerators).
  eval_batch_size: tuple = (50, 1000)
  # A CPU sweep runs its experiments one per program, side by side (a wide vmapped step of it
  # is slower than the same steps in turn), not vmapped together.
  one_per_program_on_cpu: bool = False


REGISTRY = Registry("a model")


def register(model: Model) -> Model:
  return REGISTRY.add(model)


def get(name: str) -> Model:
  return REGISTRY.lookup(name, f"model={name!r}")


def _convolutional(network):
  def build(num_classes, conv_impl="im2col", **_):
    if conv_impl not in CONV_IMPLS:
      raise ValueError(f"conv_impl={conv_impl!r} is not one of {CONV_IMPLS}")
    return network(num_classes=num_classes, conv_impl=conv_impl)
  return build


def _logistic_regression(num_classes, mlr_init="torch", **_):
  if mlr_init not in MLR_INITS:
    raise ValueError(f"mlr_init={mlr_init!r} is not one of {MLR_INITS}")
  return LogisticRegression(num_classes=num_classes, init_scheme=mlr_init)


register(Model("cnn", _convolutional(CNN), "the seed's CNN", convolutional=True,
               image_inputs=True, one_per_program_on_cpu=True))
register(Model("mlr", _logistic_regression, "multinomial logistic regression (the paper's)",
               eval_batch_size=(10_000, 10_000)))
register(Model("niid_cnn", _convolutional(LeNet), "NIID-Bench's MNIST CNN (LeNet)",
               convolutional=True, image_inputs=True))


register(Model("stacked_lstm", lambda num_classes, input_spec, **_: stacked_lstm.StackedLSTM(
                   vocab_size=input_spec.vocab_size, num_classes=num_classes),
               "the paper's Shakespeare model: embedding 8, two LSTM layers of 256",
               token_inputs=True, eval_batch_size=(500, 2000)))


def _sentiment_lstm(num_classes, **_):
  if num_classes != 2:
    raise ValueError(f"sent140_lstm has one logit: it needs 2 classes, not {num_classes}")
  return stacked_lstm.SentimentLSTM()


register(Model("sent140_lstm", _sentiment_lstm,
               "the paper's Sent140 model: frozen 300-d word vectors, two LSTM layers of 100",
               eval_batch_size=(500, 2000)))


# 28 x 28 grey images: the default where no data set is given (tests, benchmarks)
DEFAULT_INPUT = InputSpec((28, 28, 1))


def make_model(name: str, conv_impl: str = "im2col", num_classes: int = 10,
               mlr_init: str = "torch", input_spec: InputSpec = DEFAULT_INPUT) -> nn.Module:
  """Builds the registered model ``name`` for ``input_spec``'s examples: ``cnn`` or
  ``niid_cnn`` (its convolution one of CONV_IMPLS; the backend's default is
  ``run/defaults.conv_impl``), ``mlr`` (``mlr_init`` one of MLR_INITS), or one of your own
  (``register``)."""
  return get(name).build(num_classes, input_spec=input_spec, conv_impl=conv_impl,
                         mlr_init=mlr_init)


def check_inputs(name: str, spec: InputSpec) -> str | None:
  """Why model ``name`` cannot take ``spec``'s examples (None: it can)."""
  entry = get(name)
  if entry.token_inputs and not spec.tokens:
    return f"takes token ids, and the data set's inputs are {spec.dtype} features"
  if spec.tokens and not entry.token_inputs:
    return f"takes features, and the data set's inputs are token ids (vocab_size={spec.vocab_size})"
  if entry.image_inputs and len(spec.shape) != 3:
    return (f"needs images [height, width, channels], and the data set's inputs have shape "
            f"{tuple(spec.shape)}")
  return None


@functools.lru_cache(maxsize=None)
def _jitted_init(model: nn.Module):
  # One jitted init per model (flax modules are hashable): a fresh jax.jit per call would
  # trace and compile again each time (~1 s per experiment of a one-by-one sweep on CPU).
  return jax.jit(model.init)


def init_params(model: nn.Module, key: jax.Array, input_spec: InputSpec = DEFAULT_INPUT):
  """Initial parameters for examples as ``input_spec`` (``Federation.input_spec``) describes
  one; one compiled program, not one per parameter (the same values as flax's eager init)."""
  example = jnp.zeros((1,) + tuple(input_spec.shape), input_spec.dtype)
  return _jitted_init(model)(key, example)
