"""The package's layers: a module imports only modules of its own layer or of lower ones, and
no two modules import each other (directly or around a cycle), lazy imports included."""

from __future__ import annotations

import ast
import os

from helpers import ROOT

PACKAGE = os.path.join(ROOT, "fedprox_jax")
# Bottom to top. The top-level modules (errors, files, cache, outputs, schema) are layer 0.
LAYERS = ("", "core", "data", "report", "run")


def _modules() -> dict:
  """{dotted module name: its fedprox_jax imports (dotted, lazy ones included)}."""
  graph = {}
  for folder, _, names in os.walk(PACKAGE):
    for name in names:
      if not name.endswith(".py"):
        continue
      path = os.path.join(folder, name)
      parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
      module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
      imports = set()
      for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
            "fedprox_jax"):
          for alias in node.names:  # "from fedprox_jax.core import client": the module
            full = f"{node.module}.{alias.name}"
            imports.add(full if os.path.exists(os.path.join(ROOT, *full.split(".")) + ".py")
                        else node.module)
        elif isinstance(node, ast.Import):
          imports |= {a.name for a in node.names if a.name.startswith("fedprox_jax")}
      graph[module] = imports - {module}
  return graph


def _layer(module: str) -> int:
  parts = module.split(".")
  return LAYERS.index(parts[1]) if len(parts) > 2 or (
      len(parts) == 2 and parts[1] in LAYERS) else 0


def _upward(graph: dict) -> list:
  return sorted(f"{m} (layer {LAYERS[_layer(m)] or 'top'}) imports {i}"
                for m, imports in graph.items() for i in imports
                if i in graph and _layer(i) > _layer(m))


def _cycles(graph: dict) -> list:
  cycles, done = [], set()

  def visit(module, path):
    for i in sorted(graph.get(module, ())):
      if i in path:
        cycles.append(" -> ".join(path[path.index(i):] + [i]))
      elif i in graph and i not in done:
        visit(i, path + [i])
    done.add(module)

  for m in sorted(graph):
    if m not in done:
      visit(m, [m])
  return cycles


def test_no_module_imports_a_higher_layer():
  graph = _modules()
  assert len(graph) > 20 and "fedprox_jax.core.client" in graph["fedprox_jax.core.lanes"]
  assert not _upward(graph), _upward(graph)


def test_no_import_cycles():
  graph = _modules()
  assert not _cycles(graph), _cycles(graph)


def test_the_checks_see_an_upward_import_and_a_cycle():
  graph = {"fedprox_jax.core.client": {"fedprox_jax.run.sweep"},
           "fedprox_jax.run.sweep": {"fedprox_jax.data.mnist"},
           "fedprox_jax.data.mnist": {"fedprox_jax.run.sweep", "fedprox_jax.errors"},
           "fedprox_jax.errors": set()}
  assert _upward(graph) == ["fedprox_jax.core.client (layer core) imports fedprox_jax.run.sweep",
                            "fedprox_jax.data.mnist (layer data) imports fedprox_jax.run.sweep"]
  assert _cycles(graph) == ["fedprox_jax.run.sweep -> fedprox_jax.data.mnist -> "
                            "fedprox_jax.run.sweep"]
