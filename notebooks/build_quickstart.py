"""Writes notebooks/quickstart.ipynb: its cells, plus the project's code as an embedded archive.

The notebook must run top to bottom on a fresh Colab runtime with no edit, so it carries the
code it runs (fedprox_jax/, configs/, launch.py, the requirement files; ~40 KB). Re-run this
after changing any of them; a test fails while the notebook's copy is stale:

  python notebooks/build_quickstart.py
"""

from __future__ import annotations

import base64
import io
import json
import os
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "quickstart.ipynb")
EMBEDDED_MARK = "PROJECT_ZIP = "


def project_files(root: str = ROOT) -> list:
  """The files the notebook carries, relative to the project root, sorted."""
  files = ["launch.py", "requirements.txt", "requirements-gpu.txt"]
  for package in ("fedprox_jax", "configs"):
    for folder, dirs, names in os.walk(os.path.join(root, package)):
      dirs[:] = [d for d in dirs if d != "__pycache__"]
      relative = os.path.relpath(folder, root)
      files += [f"{relative}/{name}" for name in names if name.endswith(".py")]
  return sorted(files)


def project_zip(root: str = ROOT) -> str:
  """The project files as a deterministic zip, base64-encoded."""
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
    for name in project_files(root):
      info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
      info.compress_type = zipfile.ZIP_DEFLATED
      with open(os.path.join(root, name), "rb") as f:
        z.writestr(info, f.read())
  return base64.b64encode(buffer.getvalue()).decode()


INTRO = """\
# fedprox_jax quickstart: FedProx vs FedAvg on MNIST

Runs the FedProx paper's MNIST setting (1000 non-IID clients, 90 % stragglers) with FedProx
(mu = 1, stragglers' partial work kept) and FedAvg (stragglers dropped), on a Colab GPU if
you have one (Runtime → Change runtime type → GPU), and plots both.

**Runs as it is, top to bottom.** The first code cell installs the project: inside a checkout
of the repository it uses that checkout; anywhere else (a fresh Colab runtime) it unpacks the
copy of the project's code that this notebook carries (the folded cell below), then installs the missing
packages without replacing the runtime's own JAX or TensorFlow (`requirements-gpu.txt`, with
the installed JAX pinned). MNIST is downloaded through tensorflow-datasets on the first run.

**Offline**, or to use your own copy: set `DATA_DIR` in the third code cell to a directory
holding the four MNIST IDX files (gzipped or not; the same examples in the same order as
TFDS's, so the same results), or set the fields of `make_config`'s config `c` yourself
(`c.data_dir = ...` is what `--config.data_dir=...` does on the command line).

Environment variables (optional): `FEDPROX_QUICKSTART_DATA` sets `DATA_DIR`;
`FEDPROX_QUICKSTART_OUTPUTS` where the runs are written (default `outputs/quickstart`);
`FEDPROX_QUICKSTART_SMOKE=1` a tiny CPU-sized version (3 rounds, 2000 examples, logistic
regression: what the project's tests execute).
"""

INSTALL = """\
import os, subprocess, sys

def find_checkout():
    for d in (os.getcwd(), os.path.dirname(os.getcwd())):
        if os.path.exists(os.path.join(d, "launch.py")) and os.path.isdir(os.path.join(d, "fedprox_jax")):
            return d
    return None

PROJECT = find_checkout()
if PROJECT is None:  # a fresh runtime: unpack the code this notebook carries (cell above)
    import base64, io, zipfile
    PROJECT = os.path.abspath("fedprox_jax_project")
    zipfile.ZipFile(io.BytesIO(base64.b64decode(PROJECT_ZIP))).extractall(PROJECT)
os.chdir(PROJECT)
sys.path.insert(0, PROJECT)
try:  # keep the runtime's JAX (and its CUDA plugin) and TensorFlow: install only the rest
    import jax
    pip_args = ["-r", "requirements-gpu.txt", f"jax=={jax.__version__}"]
except ImportError:  # no JAX yet (a plain Jupyter): the CPU requirements
    pip_args = ["-r", "requirements.txt"]
if not os.environ.get("FEDPROX_QUICKSTART_SMOKE"):  # the tests run it with the packages present
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *pip_args], check=True)
print("project in", PROJECT)
"""

SETUP = """\
import json, time
import jax
from configs import mnist as mnist_config
from fedprox_jax.run import single
print("JAX backend:", jax.default_backend(), jax.devices())

# Offline: a directory holding the four MNIST IDX files ("" = download through TFDS).
DATA_DIR = os.environ.get("FEDPROX_QUICKSTART_DATA", "")
# SMOKE: a tiny CPU-sized version of this notebook that the project's tests execute.
SMOKE = bool(os.environ.get("FEDPROX_QUICKSTART_SMOKE"))
NUM_ROUNDS = 3 if SMOKE else 50
OUTPUTS = os.environ.get("FEDPROX_QUICKSTART_OUTPUTS", os.path.join(PROJECT, "outputs", "quickstart"))
"""

RUN = """\
def make_config(variant):
    c = mnist_config.get_config(variant)
    c.num_rounds = NUM_ROUNDS
    if DATA_DIR:  # MNIST from local IDX files, not from the network
        c.update(dict(data_source="idx", data_dir=DATA_DIR))
    if SMOKE:  # a subset, few clients and rounds
        c.update(dict(train_subset=2000, num_clients=20, clients_per_round=5, local_epochs=2,
                      model="mlr", tensorboard=False))
    return c

def show_progress(variant):
    start = time.perf_counter()
    def on_round(t, row):
        if t == 1 or t % 5 == 0 or t == NUM_ROUNDS:
            print(f"  {variant} round {t}/{NUM_ROUNDS}: test accuracy {row['test_accuracy']:.4f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    return on_round

results = {}
for variant in ("fedprox", "fedavg"):
    workdir = os.path.join(OUTPUTS, f"{variant}-{time.strftime('%Y%m%d-%H%M%S')}")
    summary = single.run(make_config(variant), workdir, on_round=show_progress(variant),
                         progress=False)  # show_progress prints every 5th round instead
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        results[variant] = [json.loads(line) for line in f]
    print(f"{variant}: final test accuracy {summary['final_test_accuracy']:.4f} "
          f"({summary['seconds_per_round']:.2f} s/round)")
"""

PLOT = """\
import matplotlib.pyplot as plt
fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
for variant, rows in results.items():
    rounds = [r["round"] for r in rows]
    ax_acc.plot(rounds, [r["test_accuracy"] for r in rows], label=variant)
    # None: every client was dropped that round, so there is no local loss
    ax_loss.plot(rounds, [float("nan") if r["local_train_loss"] is None else r["local_train_loss"]
                          for r in rows], label=variant)
ax_acc.set(xlabel="round", ylabel="test accuracy")
ax_loss.set(xlabel="round", ylabel="local train loss (sampled clients)")
ax_acc.legend(); ax_loss.legend()
plt.show()
"""

CODE_TITLE = ("#@title The project's code, carried by this notebook (a zip written by "
              "notebooks/build_quickstart.py)")


def _cell(kind: str, text: str, **extra) -> dict:
  cell = {"cell_type": kind, "metadata": extra.pop("metadata", {}),
          "source": text.splitlines(keepends=True)}
  if kind == "code":
    cell.update(execution_count=None, outputs=[])
  return cell


def build(root: str = ROOT) -> dict:
  """The notebook as a dict. The embedded code is the first code cell (folded in Colab and
  Jupyter), so running top to bottom defines it before the install cell uses it."""
  code_cell = _cell("code", f"{CODE_TITLE}\n{EMBEDDED_MARK}{project_zip(root)!r}\n",
                    metadata={"cellView": "form", "jupyter": {"source_hidden": True}})
  cells = [_cell("markdown", INTRO), code_cell, _cell("code", INSTALL), _cell("code", SETUP),
           _cell("code", RUN), _cell("code", PLOT)]
  return {"cells": cells,
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                      "name": "python3"},
                       "accelerator": "GPU", "colab": {"provenance": []}},
          "nbformat": 4, "nbformat_minor": 5}


def render(root: str = ROOT) -> str:
  return json.dumps(build(root), indent=1, ensure_ascii=False) + "\n"


def main() -> None:
  with open(NOTEBOOK, "w") as f:
    f.write(render())
  print(f"wrote {NOTEBOOK}")


if __name__ == "__main__":
  main()
