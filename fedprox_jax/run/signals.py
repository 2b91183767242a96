"""SIGTERM and SIGINT (Ctrl-C, a scheduler's preemption) as a clean, resumable stop.

``install()`` (launch.py calls it) makes both signals raise ``Interrupted``. Inside
``deferred()`` (a round loop) the first signal is only noted: the loop reads ``received()``
and stops after the round that was running when it came, with that round's rows and
checkpoint saved. A second signal stops at once (the workdir still resumes from its last
checkpoint). Without ``install()`` (a notebook) nothing changes: Ctrl-C is Python's
KeyboardInterrupt.

Python runs a signal handler only between bytecodes of the main thread, so a main thread
blocked in one long C call (waiting on the device) would handle a signal late and merge two
signals into one: ``wait_ready`` waits in short sleeps instead, during which each signal is
handled when it comes.

A raise from the handler can be lost where Python swallows exceptions (a garbage-collection
callback prints "Exception ignored in ..."); the signal is noted all the same, and ``check()``
at the points where a run commits its outputs raises it there. No JAX import here: launch.py
installs the handler before it imports JAX (a Ctrl-C inside that import could abort).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time

from fedprox_jax.errors import Interrupted

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}
_state = {"received": None, "deferring": 0}
_lock = threading.Lock()  # a sweep's programs enter deferred() from several threads


def _handler(signum, frame):
  name = signal.Signals(signum).name
  first = _state["received"] is None
  _state["received"] = name
  if not _state["deferring"] or not first:
    raise Interrupted(f"stopped by {name}" + ("" if first else " (a second signal: at once)"))


def install() -> None:
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, _handler)
  if not getattr(sys.unraisablehook, "noted_stop", False):
    sys.unraisablehook = _noted_stop(sys.unraisablehook)


def _noted_stop(previous):
  """A stop raised where Python cannot raise it (a garbage-collection callback) is printed as
  "Exception ignored in ...": it is noted already, and ``check()`` raises it where the run
  commits its outputs, so it is not printed."""
  def hook(unraisable):
    if not isinstance(unraisable.exc_value, Interrupted):
      previous(unraisable)
  hook.noted_stop = True
  return hook


def defer() -> None:
  """From here until ``undefer()`` a first signal is only noted (see ``received()``)."""
  with _lock:
    _state["deferring"] += 1


def undefer() -> None:
  with _lock:
    _state["deferring"] -= 1


@contextlib.contextmanager
def deferred():
  """Inside this block a first signal is only noted (see ``received()``)."""
  defer()
  try:
    yield
  finally:
    undefer()


def received() -> str | None:
  """The name of the signal that asked to stop, or None."""
  return _state["received"]


def check() -> None:
  """Raises ``Interrupted`` if a signal came (outside ``deferred()``): its raise may have been
  swallowed where it landed."""
  if _state["received"] and not _state["deferring"]:
    raise Interrupted(f"stopped by {_state['received']}")


def wait_ready(tree, stop_early: bool = True, stop_asked=received) -> bool:
  """Waits until every array of ``tree`` is computed: True. With ``stop_early``, False as soon
  as ``stop_asked()`` holds (a signal came) before they are. Signals are handled during the
  wait."""
  import jax
  leaves = [x for x in jax.tree_util.tree_leaves(tree) if isinstance(x, jax.Array)]
  if stop_early and stop_asked():
    return False
  if jax.process_count() > 1:  # global arrays: one collective wait
    jax.block_until_ready(leaves)
    return True
  pause = 1e-4
  for x in leaves:
    while not x.is_ready():
      if stop_early and stop_asked():
        return False
      time.sleep(pause)
      pause = min(2 * pause, 2e-3)  # ~1 ms late at most on a 16 ms round
  return True


def restore_default() -> None:
  """After the stop: a further signal ends the process at once (the default action)."""
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, signal.SIG_DFL)
