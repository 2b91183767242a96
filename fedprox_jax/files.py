"""Writing files so that nothing is half-written and nothing outside the directory is touched.

numpy and the standard library only: the TFDS worker uses it too.
"""

from __future__ import annotations

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w"):
  """A file object whose content replaces ``path`` once the block ends without error: never a
  half-written file. The temporary file gets an unpredictable name and is created exclusively
  (``mkstemp``), and the rename replaces a symbolic link at ``path`` rather than writing
  through it: nothing outside the directory is ever written."""
  directory, name = os.path.split(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise


def write_text(path: str, text: str) -> None:
  with atomic_write(path) as f:
    f.write(text)
