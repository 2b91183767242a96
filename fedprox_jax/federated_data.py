"""The clients' training data as the engine holds it: one array of examples, each client a
contiguous (offset, size) range of it. A bottom-layer type (no JAX import): data sets build it
(``data/``), the round reads it (``core/``).
"""

from __future__ import annotations

from typing import NamedTuple


class FederatedData(NamedTuple):
  """All training examples on the device once; client c owns x[offsets[c] : offsets[c] + sizes[c]]."""
  x: object        # [N, ...] float32 model inputs
  y: object        # [N] int32 labels
  offsets: object  # [num_clients] int32
  sizes: object    # [num_clients] int32, every size >= 1
