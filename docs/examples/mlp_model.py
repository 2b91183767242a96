"""A worked example: a model of your own, registered from outside the package
(docs/extending.md).

A two-layer perceptron (flattened input -> 200 ReLU -> classes), written with Flax linen. A
model entry builds a Flax module for the data set's class count: ``init(key, x)`` and
``apply(params, x) -> logits`` are all the engine calls; the entry's fields carry the rules
that hinge on the model (its evaluation batch, whether it is convolutional or needs images).

    python launch.py --config=docs/examples/mlp_model.py --config.num_rounds=20
"""

import flax.linen as nn

from configs import mnist
from fedprox_jax.core import models


class MLP(nn.Module):
  num_classes: int
  hidden: int = 200

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(self.num_classes)(nn.relu(nn.Dense(self.hidden)(x)))


def build(num_classes, **options):
  del options  # conv_impl, mlr_init: not this model's
  return MLP(num_classes)


if "mlp" not in models.REGISTRY:  # a second import of this file registers nothing
  models.register(models.Model("mlp", build, "a two-layer perceptron (200 hidden units)",
                               eval_batch_size=(1000, 10_000)))


def get_config(variant: str = "fedprox"):
  """configs/mnist.py's ``variant`` with this model."""
  c = mnist.get_config(variant)
  c.model = "mlp"
  return c
