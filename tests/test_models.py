"""Every conv variant equals flax.linen.Conv; the models have the seed's shapes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedprox_jax.core import models


@pytest.mark.parametrize("impl", models.CONV_IMPLS)
@pytest.mark.parametrize("cin,cout,padding", [(1, 32, 1), (32, 64, 1), (3, 5, 0), (2, 4, 2)])
def test_conv_variants_equal_flax_conv(impl, cin, cout, padding):
  kx, kp = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (3, 14, 14, cin))
  ours = models.Conv2D(cout, 5, padding, impl)
  params = ours.init(kp, x)
  reference = nn.Conv(cout, (5, 5), padding=((padding, padding), (padding, padding)))

  def out_ours(p, x):
    return ours.apply(p, x)

  def out_ref(p, x):
    return reference.apply(p, x)  # same {'kernel': HWIO, 'bias'} layout

  np.testing.assert_allclose(out_ours(params, x), out_ref(params, x), rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda p, x: jnp.sum(jnp.sin(f(p, x)))
  g_ours = jax.grad(loss(out_ours), argnums=(0, 1))(params, x)
  g_ref = jax.grad(loss(out_ref), argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree_util.tree_leaves(g_ours), jax.tree_util.tree_leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_cnn_variants_give_same_logits_and_grads():
  x = jax.random.normal(jax.random.key(1), (4, 28, 28, 1))
  cnn_im2col, cnn_xla = models.CNN(conv_impl="im2col"), models.CNN(conv_impl="xla")
  params = models.init_params(cnn_im2col, jax.random.key(2))
  np.testing.assert_allclose(cnn_im2col.apply(params, x), cnn_xla.apply(params, x),
                             rtol=1e-4, atol=1e-5)
  grad = lambda m: jax.grad(lambda p: jnp.sum(m.apply(p, x) ** 2))(params)
  for a, b in zip(jax.tree_util.tree_leaves(grad(cnn_im2col)),
                  jax.tree_util.tree_leaves(grad(cnn_xla))):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_cnn_matches_seed_architecture():
  params = models.init_params(models.CNN(), jax.random.key(0))["params"]
  shapes = {name: {k: v.shape for k, v in layer.items()} for name, layer in params.items()}
  assert shapes == {
      "Conv2D_0": {"kernel": (5, 5, 1, 32), "bias": (32,)},
      "Conv2D_1": {"kernel": (5, 5, 32, 64), "bias": (64,)},
      "Dense_0": {"kernel": (7 * 7 * 64, 512), "bias": (512,)},
      "Dense_1": {"kernel": (512, 10), "bias": (10,)},
  }
  assert models.CNN().apply({"params": params}, jnp.zeros((2, 28, 28, 1))).shape == (2, 10)


def test_max_pool_padding_matches_pytorch_semantics():
  # MaxPool2d(2, 2, padding=1) on 4x4: windows start at -1, padded cells never win.
  x = -jnp.arange(16, dtype=jnp.float32).reshape(1, 4, 4, 1) - 1.0
  out = models.max_pool_2x2_pad1(x)[0, :, :, 0]
  expected = np.array([[-1, -2, -4], [-5, -6, -8], [-13, -14, -16]], np.float32)
  np.testing.assert_array_equal(out, expected)
  y = jax.random.normal(jax.random.key(0), (2, 26, 26, 3))
  flax_pool = nn.max_pool(y, (2, 2), strides=(2, 2), padding=((1, 1), (1, 1)))
  np.testing.assert_array_equal(models.max_pool_2x2_pad1(y), flax_pool)


@pytest.mark.parametrize("ours,padding,size", [(models.max_pool_2x2_pad1, 1, 26),
                                               (models.max_pool_2x2, 0, 25)])
def test_max_pools_equal_flax_max_pool_in_values_and_gradients(ours, padding, size):
  # Random values have no ties, so the gradient is the one subgradient every library takes.
  y = jax.random.normal(jax.random.key(3), (2, size, size, 3))
  theirs = lambda y: nn.max_pool(y, (2, 2), strides=(2, 2),
                                 padding=((padding, padding), (padding, padding)))
  np.testing.assert_array_equal(ours(y), theirs(y))
  weights = jax.random.normal(jax.random.key(4), ours(y).shape)
  grad = lambda pool: jax.grad(lambda y: jnp.sum(pool(y) * weights))(y)
  np.testing.assert_array_equal(grad(ours), grad(theirs))


def test_mlr_is_one_dense_layer():
  model = models.LogisticRegression()
  params = models.init_params(model, jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (5, 28, 28, 1))
  w, b = params["params"]["Dense_0"]["kernel"], params["params"]["Dense_0"]["bias"]
  np.testing.assert_allclose(model.apply(params, x), x.reshape(5, -1) @ w + b, rtol=1e-5, atol=1e-5)


def test_pytorch_default_init_bounds():
  params = models.init_params(models.CNN(), jax.random.key(0))["params"]
  for layer, fan_in in (("Conv2D_0", 25), ("Conv2D_1", 800), ("Dense_0", 3136), ("Dense_1", 512)):
    for leaf in params[layer].values():
      assert float(jnp.max(jnp.abs(leaf))) <= 1 / np.sqrt(fan_in)


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="resnet"), "model='resnet' is not one of"),
    (dict(name="cnn", conv_impl="fft"), "conv_impl='fft' is not one of"),
])
def test_make_model_rejects_unknown_names(kwargs, match):
  with pytest.raises(ValueError, match=match):
    models.make_model(**kwargs)


def test_jitted_init_equals_flax_eager_init():
  for model in (models.CNN(), models.LogisticRegression()):
    key = jax.random.key(7)
    eager = model.init(key, jnp.zeros((1, 28, 28, 1), jnp.float32))
    jitted = models.init_params(model, key)
    for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted),
                    strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_niid_bench_cnn_layers_and_convolutions():
  """NIID-Bench's MNIST CNN (Flower's CNNMnist): its layers' shapes, 44,426 parameters as in
  PyTorch, and the two convolutions giving the same logits and gradients."""
  x = jax.random.normal(jax.random.key(0), (3, 28, 28, 1))
  a, b = models.make_model("niid_cnn", "im2col"), models.make_model("niid_cnn", "xla")
  params = models.init_params(a, jax.random.key(1))
  shapes = sorted(tuple(v.shape) for v in jax.tree_util.tree_leaves(params))
  assert shapes == sorted([(6,), (5, 5, 1, 6), (16,), (5, 5, 6, 16), (120,), (256, 120), (84,),
                           (120, 84), (10,), (84, 10)])
  assert sum(v.size for v in jax.tree_util.tree_leaves(params)) == 44426
  np.testing.assert_allclose(a.apply(params, x), b.apply(params, x), rtol=1e-5, atol=1e-5)
  loss = lambda m: lambda p: jnp.sum(m.apply(p, x) ** 2)
  ga, gb = jax.grad(loss(a))(params), jax.grad(loss(b))(params)
  for u, v in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb)):
    np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5)
