"""notebooks/quickstart.ipynb: its embedded copy of the project is current, and it executes top
to bottom in a real Jupyter kernel (nbclient + ipykernel, the inline backend, as on Colab) from
outside any checkout (CI-sized: FEDPROX_QUICKSTART_SMOKE), and its plot cell shows a plot."""

import os
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


def _text(cell) -> str:
  return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


@pytest.mark.skipif(not os.path.isdir(IDX_DIR), reason=f"genuine MNIST not found at {IDX_DIR}")
def test_quickstart_notebook_runs_in_a_jupyter_kernel_and_shows_its_plot(tmp_path, monkeypatch):
  import nbclient
  import nbformat
  notebook = nbformat.read(build_quickstart.NOTEBOOK, as_version=4)
  code = [cell for cell in notebook.cells if cell.cell_type == "code"]
  assert all(not line.lstrip().startswith("!") for cell in code
             for line in cell.source.splitlines())  # plain Python
  for name, value in dict(FEDPROX_QUICKSTART_SMOKE="1", FEDPROX_QUICKSTART_DATA=IDX_DIR,
                          FEDPROX_QUICKSTART_OUTPUTS=str(tmp_path / "outputs"),
                          JAX_PLATFORMS="cpu", PYTHONPATH="").items():
    monkeypatch.setenv(name, value)
  monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's own (inline) backend
  # cwd outside the checkout: the notebook must unpack and use the code it carries.
  nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()
  out = "".join(_text(cell) for cell in code)
  assert f"project in {tmp_path / 'fedprox_jax_project'}" in out
  for variant in ("fedprox", "fedavg"):
    assert f"{variant} round 3/3: test accuracy" in out  # progress lines
    assert f"{variant}: final test accuracy" in out
  plot_cell = code[-1]
  assert "plt.show()" in plot_cell.source
  images = [o for o in plot_cell.outputs
            if o.output_type == "display_data" and "image/png" in o.get("data", {})]
  assert len(images) == 1, plot_cell.outputs  # blank when library code switched the backend
  assert len(images[0]["data"]["image/png"]) > 10_000  # a drawn figure, not an empty canvas
  assert (tmp_path / "fedprox_jax_project" / "fedprox_jax" / "run" / "single.py").exists()
