"""Errors a user causes and can fix. ``launch.py`` catches ``UserError`` and ``Interrupted`` and
prints the message (which names what was wrong and what to do) as one line, never a
traceback."""


class UserError(Exception):
  """Base of every user-facing error: bad config, missing or damaged data, unusable
  checkpoints or workdir, divergence."""


class ConfigError(UserError, ValueError):
  """A config value that cannot work; the message names the field, the value and the fix."""


class DataError(UserError):
  """A data problem the user can fix (missing, damaged or malformed data); the message says
  how."""


class WorkdirError(UserError):
  """The workdir cannot be used for this run (in use, holds another run, not writable)."""


class DivergenceError(UserError):
  """Training produced a non-finite loss or parameters."""


class Interrupted(BaseException):
  """SIGTERM or SIGINT stopped the run; its workdir resumes. Like KeyboardInterrupt, not an
  ``Exception``: the signal handler raises it wherever the main thread is, and code that
  catches ``Exception`` (logging's handlers, a damaged-checkpoint fallback) must not swallow
  it."""
