"""Writing files so that nothing is half-written and nothing outside the directory is touched.

numpy and the standard library only: the TFDS worker uses it too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile


def _umask() -> int:
  """The process's umask (read without changing it where /proc says it)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  mask = os.umask(0o022)  # elsewhere: the two-call dance (not thread-safe, so done once)
  os.umask(mask)
  return mask


# A new output file is as readable as one ``open`` would create (0o666 less the umask): mkstemp
# alone makes it 0o600, unlike the files appended to with ``open``.
FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w"):
  """A file object whose content replaces ``path`` once the block ends without error: never a
  half-written file. The temporary file gets an unpredictable name and is created exclusively
  (``mkstemp``), and the rename replaces a symbolic link at ``path`` rather than writing
  through it: nothing outside the directory is ever written."""
  directory, name = os.path.split(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
  try:
    os.fchmod(fd, FILE_MODE)
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


def read_regular(path: str, max_bytes: int, what: str = "file") -> bytes:
  """The bytes of ``path`` if it is a regular file of at most ``max_bytes``: a FIFO is never
  waited on (opened non-blocking, then refused) and a link to a device such as /dev/zero is
  never read without end. Raises OSError (FileNotFoundError when absent) or ValueError."""
  fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
  try:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
      raise ValueError(f"it is not a regular file (a FIFO, a device or a directory): "
                       f"replace it with the {what}")
    if st.st_size > max_bytes:
      raise ValueError(f"it holds {st.st_size} bytes, more than a {what} can "
                       f"({max_bytes}): replace it")
    with os.fdopen(fd, "rb", closefd=False) as f:
      data = f.read(max_bytes + 1)
  finally:
    os.close(fd)
  if len(data) > max_bytes:
    raise ValueError(f"it grew past {max_bytes} bytes while it was read")
  return data


def ordered_digest(*arrays) -> str:
  """sha256 of ``arrays`` (numpy) in their order: equal only for the same examples in the same
  order (a resumed run checks it trains on exactly the data it started with)."""
  import numpy as np
  digest = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(a)
    digest.update(str((a.dtype, a.shape)).encode() + a.tobytes())
  return digest.hexdigest()
