"""notebooks/quickstart.ipynb: its embedded copy of the project is current, and it executes top
to bottom from outside any checkout (CI-sized: FEDPROX_QUICKSTART_SMOKE), as on a fresh Colab
runtime."""

import json
import os
import subprocess
import sys

import pytest

from helpers import SHARED_DATA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDX_DIR = os.path.join(SHARED_DATA, "mnist")
sys.path.insert(0, os.path.join(ROOT, "notebooks"))
import build_quickstart  # noqa: E402


def test_notebook_carries_the_current_code():
  with open(build_quickstart.NOTEBOOK) as f:
    current = f.read()
  assert current == build_quickstart.render(), (
      "notebooks/quickstart.ipynb is stale: run python notebooks/build_quickstart.py")
  assert "YOUR_ORG" not in current and "<-" not in current  # no placeholder to edit


@pytest.mark.skipif(not os.path.isdir(IDX_DIR), reason=f"genuine MNIST not found at {IDX_DIR}")
def test_quickstart_notebook_runs_from_a_fresh_directory(tmp_path):
  with open(build_quickstart.NOTEBOOK) as f:
    notebook = json.load(f)
  code = "\n\n".join("".join(cell["source"]) for cell in notebook["cells"]
                     if cell["cell_type"] == "code")
  assert "!" not in "".join(line.lstrip()[:1] for line in code.splitlines())  # plain Python
  code = code.replace("plt.show()", f"plt.savefig({str(tmp_path / 'quickstart.png')!r})")
  script = tmp_path / "quickstart.py"
  script.write_text(code)
  env = dict(os.environ, FEDPROX_QUICKSTART_SMOKE="1", FEDPROX_QUICKSTART_DATA=IDX_DIR,
             FEDPROX_QUICKSTART_OUTPUTS=str(tmp_path / "outputs"), JAX_PLATFORMS="cpu",
             MPLBACKEND="Agg", PYTHONPATH="")
  # cwd outside the checkout: the notebook must unpack and use the code it carries.
  result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"project in {tmp_path / 'fedprox_jax_project'}" in result.stdout
  for variant in ("fedprox", "fedavg"):
    assert f"{variant} round 3/3: test accuracy" in result.stdout  # progress lines
    assert f"{variant}: final test accuracy" in result.stdout
  assert (tmp_path / "quickstart.png").exists()
  assert (tmp_path / "fedprox_jax_project" / "fedprox_jax" / "simulate.py").exists()
