"""A worked example: a model that takes token ids, registered from outside the package, run
on a data set of token sequences (docs/extending.md).

A bag of embeddings (each token's learned vector, averaged over the sequence -> dense ->
classes), written with Flax linen. Its entry says ``token_inputs=True``: it is built for the
data set's ``InputSpec`` (one example's shape, dtype 'int32' and ``vocab_size``) and refuses
a data set of features, as the feature models refuse token ids, in one line.

The data is docs/examples/own_data.py's ``.npz`` layout with ``vocab_size`` added (``x``: one
row of token ids per example):

    python launch.py --config=docs/examples/token_model.py --config.data_dir=my_tokens.npz \\
        --config.num_clients=12 --config.clients_per_round=4
"""

import importlib.util
import os

import flax.linen as nn

from fedprox_jax.core import models


class BagOfTokens(nn.Module):
  vocab_size: int
  num_classes: int
  features: int = 16

  @nn.compact
  def __call__(self, tokens):  # [batch, length] int32
    vectors = nn.Embed(self.vocab_size, self.features)(tokens)
    return nn.Dense(self.num_classes)(vectors.mean(axis=1))


def build(num_classes, input_spec, **options):
  del options  # conv_impl, mlr_init: not this model's
  return BagOfTokens(vocab_size=input_spec.vocab_size, num_classes=num_classes)


if "bag_of_tokens" not in models.REGISTRY:  # a second import of this file registers nothing
  models.register(models.Model("bag_of_tokens", build, "a bag of token embeddings",
                               token_inputs=True, eval_batch_size=(1000, 10_000)))


def _own_data():
  """docs/examples/own_data.py, which registers the data set ``own_npz``."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "own_data.py")
  spec = importlib.util.spec_from_file_location("own_data_example", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(variant: str = "fedprox"):
  """own_data.py's config (configs/mnist.py's ``variant`` on an .npz file) with this model."""
  c = _own_data().get_config(variant)
  c.model = "bag_of_tokens"
  return c
