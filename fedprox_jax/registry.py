"""Values found by name (an algorithm, a data set, a model): the registries of
``core/algorithms.py``, ``core/models.py`` and ``data/datasets.py``. A bottom-layer module (no
imports): every layer may keep one.
"""

from __future__ import annotations


class Registry(dict):
  """{name: value} in registration order; ``add`` refuses a name twice, ``lookup`` names the
  registered ones when a name is unknown."""

  def __init__(self, kind: str):
    super().__init__()
    self.kind = kind  # "an algorithm", "a data set", "a model": for messages

  def add(self, value):
    """Registers ``value`` under ``value.name``; returns it."""
    if value.name in self:
      raise ValueError(f"{self.kind} named {value.name!r} is registered already")
    self[value.name] = value
    return value

  def lookup(self, name: str, shown: str | None = None, hint: str = ""):
    """The value registered as ``name``, else a ValueError: ``{shown} is not one of ...``
    (``shown`` defaults to ``name!r``), then ``hint``."""
    if name not in self:
      raise ValueError(f"{shown or repr(name)} is not one of {', '.join(self)}{hint}")
    return self[name]
