"""SIGTERM and SIGINT (Ctrl-C, a scheduler's preemption) as a clean, resumable stop.

``install()`` (launch.py calls it) makes both signals raise ``Interrupted``. Inside
``deferred()`` (a run's round loop) the signal is only noted: the loop reads ``received()``
after each round, saves that round's rows and checkpoint, and stops. A second signal stops at
once (the workdir still resumes from its last checkpoint). Without ``install()`` (a notebook)
nothing changes: Ctrl-C is Python's KeyboardInterrupt.
"""

from __future__ import annotations

import contextlib
import signal
import threading

from fedprox_jax.errors import Interrupted

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}
_state = {"received": None, "deferring": 0}
_lock = threading.Lock()  # a sweep's programs enter deferred() from several threads


def _handler(signum, frame):
  name = signal.Signals(signum).name
  first = _state["received"] is None
  _state["received"] = name
  if not _state["deferring"] or not first:
    raise Interrupted(f"stopped by {name}")


def install() -> None:
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, _handler)


@contextlib.contextmanager
def deferred():
  """Inside this block a first signal is only noted (see ``received()``)."""
  with _lock:
    _state["deferring"] += 1
  try:
    yield
  finally:
    with _lock:
      _state["deferring"] -= 1


def received() -> str | None:
  """The name of the signal that asked to stop, or None."""
  return _state["received"]
