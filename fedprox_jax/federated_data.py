"""The clients' training data as the engine holds it: one array of examples, each client a
contiguous (offset, size) range of it; and what one example is (``InputSpec``). A bottom-layer type (no JAX import): data sets build it
(``data/``), the round reads it (``core/``).
"""

from __future__ import annotations

from typing import NamedTuple


class FederatedData(NamedTuple):
  """All training examples on the device once; client c owns x[offsets[c] : offsets[c] + sizes[c]]."""
  x: object        # [N, ...] model inputs: float32 features or int32 token ids
  y: object        # [N] int32 labels
  offsets: object  # [num_clients] int32
  sizes: object    # [num_clients] int32, every size >= 1


class InputSpec(NamedTuple):
  """One example of a data set, without its batch axis: what a model is built and initialised
  for. ``dtype``: 'float32' (features, images included) or 'int32' (token ids, below
  ``vocab_size``)."""
  shape: tuple
  dtype: str = "float32"
  vocab_size: int = 0

  @property
  def tokens(self) -> bool:
    return self.vocab_size > 0
