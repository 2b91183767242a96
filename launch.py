"""Runs one FedProx/FedAvg experiment, or a sweep of them.

  python launch.py --config=configs/mnist.py:fedprox [--config.mu=0.5 ...] [--workdir=DIR]
"""

import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TFDS imports TensorFlow: keep it quiet

# Ctrl-C or SIGTERM before the run starts (while absl, the config and JAX load) is only noted,
# and answered in one line once they have loaded: raised inside an extension module's import
# it could abort the process or be swallowed.
from fedprox_jax.run import signals  # noqa: E402  (no JAX import)
if __name__ == "__main__":  # (not when a test imports this module)
  signals.install()
  signals.defer()

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = "configs/mnist.py"

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config FILE:VARIANT, e.g. configs/mnist.py:fedprox; --help "
    "lists every config file's variants (runs and sweeps) and the fields. Override fields with "
    "--config.FIELD=VALUE; any variant runs as a sweep of its sweep.* grid with "
    "--config.mode=sweep.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where the outputs go (default: a new outputs/YYYY-MM-DD/HH-MM-SS). "
    "Passing the workdir of an interrupted run or sweep resumes it.")
flags.mark_flags_as_required(["config"])

USAGE = ("Flags: --config=configs/mnist.py:VARIANT (or configs/synthetic.py:VARIANT) "
         "[--config.FIELD=VALUE ...] [--workdir=DIR]; "
         "--help lists the config fields.")


def _fail(message: str, code: int = 2, prefix: str = "error: "):
  print(f"{prefix}{message}", file=sys.stderr)
  sys.exit(code)


def config_fields_help(path: str) -> dict:
  """{field: help} of a config file: its ``HELP`` (a config built on configs/mnist.py adds to
  that file's, which holds every field's) and each registered algorithm's own
  hyper-parameters (``hparams.<name>.<field>``, from their registrations)."""
  from fedprox_jax.core import algorithms
  fields = dict(_load_module(os.path.join(ROOT, DEFAULT_CONFIG)).HELP)
  fields.update(getattr(_load_module(path), "HELP", {}))
  fields.update({f"hparams.{k}": v for k, v in algorithms.hparams_help().items()})
  return fields


def _load_module(path: str):
  import importlib.util
  if ROOT not in sys.path:  # configs/*.py import each other as configs.NAME
    sys.path.insert(0, ROOT)
  spec = importlib.util.spec_from_file_location(f"_help_{os.path.basename(path)[:-3]}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _variants_help() -> list:
  """A line per config file of configs/: its variants that are runs and those that are sweeps."""
  lines = []
  directory = os.path.join(ROOT, "configs")
  for name in sorted(os.listdir(directory)):
    if not name.endswith(".py") or name.startswith("_"):
      continue
    module = _load_module(os.path.join(directory, name))
    variants = list(getattr(module, "VARIANTS", {}))
    sweeps = [v for v in variants if module.get_config(v).mode == "sweep"]
    runs = [v for v in variants if v not in sweeps]
    lines.append(f"  configs/{name}:  runs: {', '.join(runs) or '-'};  sweeps: "
                 f"{', '.join(sweeps) or '-'}")
  return lines


def _print_help(config_arg: str) -> None:
  """The usage, the flags, every config file's variants, and every config field with its help
  and its value in the variant named (None = set by the protocol)."""
  from fedprox_jax.run import protocols  # no JAX import
  path, _, variant = config_arg.partition(":")
  module = _load_module(path)
  values = module.get_config(*([variant] if variant else [])).to_dict()
  print(__doc__.strip() + "\n")
  print(f"  --config   {flags.FLAGS['config'].help}")
  print(f"  --workdir  {flags.FLAGS['workdir'].help}\n")
  print("Variants (--config=FILE:VARIANT; a sweep runs its grid of algorithms x stragglers x "
        "seeds x partitions, the sweep.* fields):")
  print("\n".join(_variants_help()) + "\n")
  print(f"Config fields of {path}:{variant or '(default)'} "
        "(set with --config.FIELD=VALUE):")
  for name, text in config_fields_help(path).items():
    value = values
    for part in name.split("."):
      value = value[part]
    shown = repr(value) if value is not None else (
        "the protocol's value" if name in protocols.PROTOCOL_FIELDS else "unset")
    print(f"  {name:<30} {text}  [{shown}]")


def _locate_config(argv: list) -> list:
  """argv with --config's file found relative to the current directory, else to the project
  (so launch.py works from anywhere); one clear line when it is in neither."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith("--config="):
      value = arg[len("--config="):]
    elif arg == "--config" and i + 1 < len(out):
      value, i = out[i + 1], i + 1
    else:
      continue
    path, sep, variant = value.partition(":")
    if not os.path.isfile(path):
      in_project = os.path.join(ROOT, path)
      if not os.path.isfile(in_project):
        places = list(dict.fromkeys([os.getcwd(), ROOT]))  # once when launched from ROOT
        where = "" if os.path.isabs(path) else f" (looked in {' and in '.join(places)})"
        _fail(f"config file {path!r} not found{where}; e.g. --config={DEFAULT_CONFIG}:fedprox")
      value = in_project + sep + variant
      out[i] = value if out[i] != arg else f"--config={value}"
  return out


def _parse_flags(argv):
  """absl's flag parsing, with one clear line for a bad flag instead of a traceback (config
  files' errors reach absl wrapped with the traceback of the call that raised them)."""
  if any(a in ("-h", "--help", "--helpfull", "--helpshort", "-?") for a in argv[1:]):
    given = [a.split("=", 1)[1] for a in _locate_config(argv) if a.startswith("--config=")]
    try:
      _print_help(given[0] if given else os.path.join(ROOT, DEFAULT_CONFIG))
    except Exception as e:  # the config file's own code failed (an unknown variant, a typo)
      _fail(f"cannot load the --config file for --help: {type(e).__name__}: "
            f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}; e.g. "
            f"--config={DEFAULT_CONFIG}:fedprox")
    sys.exit(0)
  argv = _locate_config(argv)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if not any(a == "--config" or a.startswith("--config=") for a in argv[1:]):
      _fail("--config is missing: name a config first, e.g. "
            f"--config={DEFAULT_CONFIG}:fedprox, then its fields (--config.FIELD=VALUE)\n{USAGE}")
    _fail(f"{lines[-1] if lines else e}\n{USAGE}")
  except (AttributeError, KeyError) as e:  # an override of a field the config does not have
    # ml_collections' KeyError holds "'name'" and, on a line of its own, its suggestion.
    inner = e.args[0] if e.args else e
    inner = inner.args[0] if isinstance(inner, KeyError) and inner.args else inner
    name, _, hint = str(inner).partition("\n")
    suggestion = re.search(r'Did you mean "([^"]+)"', hint)
    _fail(f"the config has no field {name.strip()}"
          + (f" (did you mean {suggestion.group(1)!r}?)" if suggestion else "")
          + ": --help lists the fields --config.FIELD=VALUE can set.")
  except Exception as e:  # the config file's own code failed (e.g. an unknown variant)
    _fail(f"cannot load the --config file: {type(e).__name__}: {e}")


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected argument(s) {' '.join(argv[1:])!r}: every setting is a flag. {USAGE}")
  # Imported here so that flag errors answer without loading more than the config needs.
  from fedprox_jax import cache
  from fedprox_jax.errors import Interrupted, UserError
  from fedprox_jax.run import config as config_lib
  from fedprox_jax.run import distributed, single, sweep, workdir
  logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    config = _CONFIG.value
    config.mode  # config_flags defers a load failure until the config is first used
  except Exception as e:
    reason = str(e.__cause__ or e).strip().splitlines()[-1].strip()
    _fail(f"cannot load the --config file ({reason}); e.g. --config={DEFAULT_CONFIG}:fedprox")
  path, created = _WORKDIR.value, False
  if signals.received():  # (still deferred: nothing can raise here)
    _fail(f"stopped by {signals.received()} before the run started: nothing was written",
          signals.EXIT_CODES[signals.received()], prefix="")
  try:
    # From here a signal stops the set-up at once, and the rounds after the one running.
    signals.undefer()
    # Fields the command line set that this mode would ignore: refused before any work.
    config_lib.check_mode_fields(config, _given_fields(sys.argv))
    cache.enable_compilation_cache()
    distributed.maybe_initialize()
    if not path:
      path, created = workdir.default_workdir(), True
    logging.info("workdir: %s", path)
    if config.mode == "sweep":
      sweep.run(config, path)
    else:
      single.run(config, path)
  except (UserError, Interrupted) as e:
    signals.restore_default()  # the run has stopped: a further Ctrl-C ends the process at once
    message = str(e)
    if signals.received() and "resume" not in message:
      message += f": run the same command with --workdir={path} to resume or restart it"
    _remove_if_unused(path if created else None)
    # A stop is what was asked for, not an error: its line says "stopped by ...".
    _fail(message, signals.EXIT_CODES.get(signals.received(), 2),
          prefix="" if isinstance(e, Interrupted) else "error: ")
  except OSError as e:  # a full disk, a vanished directory, ...
    _remove_if_unused(path if created else None)
    _fail(f"{e.strerror or e} ({getattr(e, 'filename', '') or type(e).__name__}): free disk "
          "space or fix the path's permissions; an interrupted run resumes with the same "
          "command and --workdir")


def _given_fields(argv: list) -> set:
  """The config fields the command line overrides (--config.FIELD=VALUE or --config.FIELD
  VALUE), as FIELD."""
  return {a[len("--config."):].split("=", 1)[0] for a in argv
          if a.startswith("--config.")}


def _remove_if_unused(path: str | None) -> None:
  """A default workdir whose run failed before it started leaves no empty directory behind."""
  if path is None:
    return
  for directory in (path, os.path.dirname(path)):  # outputs/DATE/TIME, then outputs/DATE
    try:
      os.rmdir(directory)  # only when empty
    except OSError:
      return


class _QuietLibraries:
  """Drops orbax's per-save INFO chatter and JAX's INFO lines about the backends it probes
  and does not find ("Unable to initialize backend 'tpu'", which reads like an error);
  warnings and errors still show."""

  def filter(self, record):
    import logging as std_logging
    if record.levelno >= std_logging.WARNING:
      return True
    return "orbax" not in record.pathname and "xla_bridge" not in record.pathname


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  app.run(main, flags_parser=_parse_flags)
