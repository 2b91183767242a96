"""Shared set-up for the benchmarks: the default experiment's data on the device."""

import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import mnist as mnist_config  # noqa: E402
from fedprox_jax.data import mnist as data_lib  # noqa: E402
from fedprox_jax import outputs  # noqa: E402
from fedprox_jax.run import experiment  # noqa: E402
from fedprox_jax.run import config as config_lib

DEFAULT_DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "..", "shared", "data", "mnist")


def default_experiment(variant="fedprox", data_dir=DEFAULT_DATA_DIR, **overrides):
  """(config as set up, Federation) of configs/mnist.py:VARIANT with overrides, MNIST from IDX
  files (the config with the paths set-up chose: ``experiment.prepare``)."""
  c = mnist_config.get_config(variant)
  c.update(overrides)
  c = config_lib.resolve(c)  # the protocol's values in the unset fields
  mnist = data_lib.load_mnist("idx", data_dir)
  setup = experiment.prepare(c, mnist, lanes_over_devices=False)
  return setup.config, setup.data


def header():
  return (f"command: python {' '.join(sys.argv)}\n"
          f"backend={jax.default_backend()} device={jax.devices()[0].device_kind} "
          f"jax={jax.__version__} date={time.strftime('%Y-%m-%d')}")


def cpu_model() -> str:
  """The CPU's model name as ``lscpu`` prints it (the figure every CPU timing goes with)."""
  return outputs.cpu_model()
