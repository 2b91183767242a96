"""Evaluation time of the 10k MNIST test images, by model, convolution and batch size.

  python benchmarks/evaluation.py [--batches=10,25,50,100,500] [--repeats=3]

Interleaved: every (model, conv, batch) is timed once per repeat, in turn; medians reported.
"""

import statistics
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import common
from fedprox_jax.data import mnist as data_lib
from fedprox_jax.run import defaults, experiment
from fedprox_jax.core import models

flags.DEFINE_list("batches", ["10", "25", "50", "100", "500"], "CNN evaluation batch sizes")
flags.DEFINE_list("mlr_batches", ["1000", "10000"], "logistic regression batch sizes")
flags.DEFINE_integer("repeats", 3, "interleaved repeats (median reported)")
F = flags.FLAGS


def main(_):
  mnist = data_lib.load_mnist("idx", common.DEFAULT_DATA_DIR)
  x = jnp.asarray(data_lib.normalize(mnist.test_images))
  y = jnp.asarray(mnist.test_labels.astype(np.int32))
  cases = [("mlr", "-", int(b)) for b in F.mlr_batches]
  cases += [("cnn", impl, int(b)) for impl in models.CONV_IMPLS for b in F.batches]
  fns = {}
  for name, impl, batch in cases:
    model = models.make_model(name, defaults.conv_impl() if impl == "-" else impl)
    params = models.init_params(model, jax.random.key(0))
    evaluate = experiment.make_evaluate_fn(model.apply, batch)
    jax.block_until_ready(evaluate(params, x, y))  # compile
    fns[(name, impl, batch)] = (evaluate, params)
  times = {case: [] for case in cases}
  for _ in range(F.repeats):
    for case in cases:
      evaluate, params = fns[case]
      start = time.perf_counter()
      jax.block_until_ready(evaluate(params, x, y))
      times[case].append(time.perf_counter() - start)
  cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True,
                       text=True).stdout.split(":")[-1].strip()
  print(common.header() + f"\ncpu={cpu or '-'}\n")
  print("| model | convolution | batch | ms per 10k-image evaluation (median) |")
  print("|---|---|---:|---:|")
  for name, impl, batch in cases:
    print(f"| {name} | {impl} | {batch} | {1000 * statistics.median(times[(name, impl, batch)]):.1f} |")


if __name__ == "__main__":
  app.run(main)
