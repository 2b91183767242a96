"""Every backend-dependent default, in one table: what a config field left at 0 or 'auto'
becomes. ``run/config.py`` fills them (``resolve``; the measured ones at set-up, for the data's
shapes: ``fill_measured``); nothing else decides them.

| field                          | CPU                                 | GPU / TPU          |
|--------------------------------|-------------------------------------|--------------------|
| num_lanes                      | 1 (CNN run: measured, 1 or 2)       | clients_per_round  |
| conv_impl (training)           | im2col (CNN: measured)              | xla                |
| eval_conv_impl                 | xla (CNN: measured)                 | xla                |
| eval_batch_size                | CNN 50, MLR 10000                   | CNN 1000, MLR 10000 |
| sweep.experiments_per_program  | CNN and synthetic: 1, else all      | all                |
| sweep.concurrent_programs      | one per core with programs of 1     | 1                  |

The model-dependent cells come from each model's entry (``core/models.py``: its evaluation
batches, whether a CPU sweep runs it one experiment per program, whether it is convolutional).
"measured": with ``autotune`` (the default) on a CPU, the convolutional models' fields left at
auto/0 are chosen by timing the candidates on this machine once (``run/autotune.py``, cached);
the CPU column is what ``autotune=False`` uses.

Why each (the measurements, with their commands and CPU, are in benchmarks/README.md):
* one lane on CPU: a wide vmapped CNN step spills its im2col patches out of cache, and the
  clients packed into one lane do exactly the useful work; accelerators want the width;
* im2col for training on CPU: XLA:CPU's backward convolution made a CNN round ~6x slower;
  evaluation (forward only, never vmapped) is faster with XLA's convolution;
* evaluation batch 50 for the CNN on CPU (the fastest of 25..500); the logistic regression
  is one matmul, the whole test set at once;
* programs of one experiment on CPU for the CNN (a wide vmapped CNN step is slower than the
  same steps in turn) and the synthetic federations (a program's round lasts as long as its
  longest experiment's, and their devices' sizes are heavy-tailed), with one program per
  core side by side (their steps are too small for XLA:CPU to spread over the cores).
"""

from __future__ import annotations

import os

import jax


def _backend(backend: str | None) -> str:
  return backend or jax.default_backend()


def num_lanes(clients_per_round: int, backend: str | None = None) -> int:
  return 1 if _backend(backend) == "cpu" else clients_per_round


def autotuned(backend: str | None = None) -> bool:
  """Whether a convolutional model's paths are chosen by measurement (``run/autotune.py``)
  rather than by this table: on CPUs, whose kinds differ (the fastest path on one AMD EPYC is
  not on every CPU); accelerators use XLA's convolution. Not with several processes: each
  would time its own host and might choose another program than the others run."""
  return _backend(backend) == "cpu" and jax.process_count() == 1


def conv_impl(backend: str | None = None) -> str:
  return "im2col" if _backend(backend) == "cpu" else "xla"


def eval_conv_impl(backend: str | None = None) -> str:
  del backend  # the same everywhere, measured on CPU and assumed on accelerators
  return "xla"


def eval_batch_size(model, backend: str | None = None) -> int:
  """``model``'s (a ``models.Model``) evaluation batch on this backend."""
  cpu, accelerator = model.eval_batch_size
  return cpu if _backend(backend) == "cpu" else accelerator


def experiments_per_program(model, num_experiments: int, dataset=None,
                            backend: str | None = None) -> int:
  """``model``'s (a ``models.Model``) experiments per program on ``dataset`` (a
  ``datasets.Dataset``; None: one without rules of its own)."""
  one_by_one = _backend(backend) == "cpu" and (
      model.one_per_program_on_cpu or (dataset is not None and dataset.one_per_program_on_cpu))
  return 1 if one_by_one else num_experiments


def concurrent_programs(experiments_per_program: int, backend: str | None = None) -> int:
  if _backend(backend) != "cpu" or experiments_per_program != 1 or jax.process_count() > 1:
    return 1
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
