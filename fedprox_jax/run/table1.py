"""The paper's Table 1, the statistics of its four real federations (devices, samples, samples
per device: mean and standard deviation), computed from the data you have, beside the paper's.

  python -m fedprox_jax.run.table1 [--mnist_dir=DIR] [--femnist_dir=DIR]
      [--shakespeare_dir=DIR] [--sent140_dir=DIR] [--out=table1.md]

MNIST is the authors' partition (configs/mnist.py:figure1_paper: 1000 devices, power law over
the 70k pooled examples), read from TFDS's default data dir or ``--mnist_dir`` (a directory
of the four IDX files); the LEAF federations count every user's training and test examples, as
the paper's table does. A federation whose folder is not given has a row saying how to get
it; one that cannot be read, a row saying why (the loader's one line).
"""

from __future__ import annotations

import os
import sys

import numpy as np

from fedprox_jax import files
from fedprox_jax.errors import UserError

# The paper's Table 1 (and the authors' README): devices, samples, mean and std per device.
PAPER = {"MNIST": (1000, 69035, 69, 106), "FEMNIST": (200, 18345, 92, 159),
         "Shakespeare": (143, 517106, 3616, 6808), "Sent140": (772, 40783, 53, 32)}
HOW = {"MNIST": "pass --mnist_dir=DIR (the four IDX files) or let TFDS download it",
       "FEMNIST": "pass --femnist_dir=DIR, DIR holding LEAF's train/ and test/ (docs/guide.md#leaf)",
       "Shakespeare": "pass --shakespeare_dir=DIR (docs/guide.md#leaf)",
       "Sent140": "pass --sent140_dir=DIR (docs/guide.md#leaf)"}


def leaf_statistics(directory: str) -> tuple:
  """(devices, samples, mean, std) of LEAF folder ``directory``: each client's training and
  test examples."""
  from fedprox_jax.data import leaf
  users = leaf.read_users(directory)
  sizes = np.array([len(x) + len(users.test.get(u, ([], []))[0])
                    for u, (x, _) in sorted(users.train.items()) if x])
  return len(sizes), int(sizes.sum()), float(sizes.mean()), float(sizes.std())


def mnist_statistics(directory: str | None) -> tuple:
  """(devices, samples, mean, std) of the authors' MNIST partition: configs/mnist.py's
  figure1_paper as a run resolves it, from TFDS or the IDX files of ``directory``."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if root not in sys.path:
    sys.path.insert(0, root)  # configs/ beside the package (as launch.py finds it)
  from configs import mnist as mnist_config
  from fedprox_jax.run import config as config_lib, experiment
  c = mnist_config.get_config("figure1_paper")
  c.mode = "single"
  c.sweep.update(config_lib.SWEEP_DEFAULTS)
  if directory:
    c.update(dict(data_source="idx", data_dir=directory))
  c = config_lib.resolve(c)
  stats = experiment.prepare_data(c, experiment.load_source(c)[0]).stats
  return stats["clients"], stats["examples"], stats["mean"], stats["std"]


def row(name: str, statistics, problem: str = "") -> str:
  devices, samples, mean, std = PAPER[name]
  paper = f"{devices:,} | {samples:,} | {mean:,} ({std:,})"
  if statistics is None:
    return f"| {name} | {problem or 'not given: ' + HOW[name]} | | | {paper} |"
  devices, samples, mean, std = statistics
  return f"| {name} | {devices:,} | {samples:,} | {mean:,.0f} ({std:,.0f}) | {paper} |"


def table(dirs: dict) -> str:
  """The markdown table of the federations in ``dirs`` ({name: folder or None})."""
  lines = ["| data set | devices | samples | samples / device: mean (std) | the paper's devices "
           "| samples | mean (std) |", "|---|---:|---:|---:|---:|---:|---:|"]
  for name in PAPER:
    given, statistics, problem = dirs.get(name), None, ""
    try:
      if name == "MNIST":
        statistics = mnist_statistics(given)
      elif given:
        statistics = leaf_statistics(given)
    except UserError as e:  # its row says what is wrong and what to do
      problem = f"not read: {e}".replace("|", "/")
    lines.append(row(name, statistics, problem))
  return "\n".join(lines) + "\n"


def main(argv) -> int:
  names = {"--mnist_dir": "MNIST", "--femnist_dir": "FEMNIST",
           "--shakespeare_dir": "Shakespeare", "--sent140_dir": "Sent140"}
  dirs, out = {}, None
  for arg in argv:
    flag, _, value = arg.partition("=")
    if flag in names and value:
      dirs[names[flag]] = value
    elif flag == "--out" and value:
      out = value
    else:
      print(f"error: {arg!r} is not a flag of this command: " + __doc__.strip().splitlines()[2]
            .strip(), file=sys.stderr)
      return 2
  text = table(dirs)
  print(text, end="")
  if out:
    files.write_text(out, text)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
