"""Runs one FedProx/FedAvg experiment.

  python launch.py --config=configs/mnist.py:fedprox [--config.mu=0.5 ...] [--workdir=DIR]
"""

import logging as std_logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TFDS imports TensorFlow: keep it quiet

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from fedprox_jax import cache, checkpoints, data, distributed, outputs, simulate, sweep  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config, e.g. configs/mnist.py:fedprox (variants: fedprox, "
    "fedavg, fedprox_mu0; sweeps: figure1, figure1_paper). Override fields with --config.FIELD=VALUE.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where the run's outputs go (default: outputs/YYYY-MM-DD/HH-MM-SS). "
    "Passing the workdir of an interrupted run resumes it.")
flags.mark_flags_as_required(["config"])


class _QuietLibraries(std_logging.Filter):
  """Drops orbax's per-save INFO chatter (its warnings and errors still show)."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


def _parse_flags(argv):
  """absl's flag parsing, with one clear line for a bad flag instead of a traceback (config
  files' errors reach absl wrapped with the traceback of the call that raised them)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    print(f"error: {lines[-1] if lines else e}\n"
          "Flags: --config=configs/mnist.py:VARIANT [--config.FIELD=VALUE ...] [--workdir=DIR]; "
          "see --helpfull.", file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError) as e:  # an override of a field the config does not have
    print(f"error: the config has no field {str(e).strip(chr(34))}: see configs/mnist.py for "
          "the fields --config.FIELD=VALUE can set.", file=sys.stderr)
    sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  cache.enable_compilation_cache()
  distributed.maybe_initialize()
  try:
    config = _CONFIG.value
    config.mode  # config_flags defers a load failure until the config is first used
  except OSError as e:
    reason = str(e.__cause__ or e).strip().splitlines()[-1].strip()
    print(f"error: cannot load the --config file ({reason}); "
          "e.g. --config=configs/mnist.py:fedprox, relative to where you run launch.py.",
          file=sys.stderr)
    sys.exit(2)
  workdir = _WORKDIR.value or outputs.default_workdir()
  logging.info("workdir: %s", workdir)
  try:
    if config.mode == "sweep":
      sweep.run_sweep(config, workdir)
    else:
      simulate.run(config, workdir)
  except (simulate.ConfigError, data.DataError, simulate.DivergenceError,
          checkpoints.CheckpointError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  app.run(main, flags_parser=_parse_flags)
