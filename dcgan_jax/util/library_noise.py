"""Keeps the libraries' own accounts of an error the caller reports off the output.

A command (launch.py, `python -m dcgan_jax.<command>`) ends a failure with
one line, `Error: ...`. Orbax and tensorstore print their own tracebacks of
such a failure, some of them after that line. `install()`, which the
commands call (library code never does), keeps exactly those off stderr:

- Orbax logs the error of a failed background save, with its traceback, in
  each thread it passes through, and then raises that same error to the
  caller of `wait_until_finished` (logging it once more). The records of the
  background threads are held back; once the error reaches the caller they
  are dropped with the caller's one, for the caller to report the error (in
  one line, or as an uncaught exception with its traceback). Held records of
  an error that never reached a caller are printed at exit.
- tensorstore hands each result of a read or write to the asyncio loop
  awaiting it, with `loop.call_soon_threadsafe`. When one of several
  concurrent reads or writes fails, Orbax raises that error at once and
  closes its loop; the others finish later, cannot reach the closed loop,
  and tensorstore reports that through `sys.unraisablehook` as
  'RuntimeError: Event loop is closed'. Nothing awaits those results any
  more: these reports are dropped, and every other goes to the previous hook.

This module imports neither Orbax nor tensorstore; it recognises their
records and reports by where they come from.
"""

import atexit
import logging
import os
import sys
import threading
import types
from typing import Any

from absl import logging as absl_logging

# Where Orbax logs a background save's error with its traceback: (file,
# function). Those of _BACKGROUND_SITES run in background threads; the
# _RAISED_SITE in the caller's thread, just before it raises the error to
# the caller.
_BACKGROUND_SITES = (
  ('future.py', 'run'),  # A save step's thread (_SignalingThread).
  ('async_checkpointer.py', '_thread_func'),  # The commit thread.
  ('checkpoint_manager.py', '_finalize_checkpoint'),  # The finalize thread.
)
_RAISED_SITE = ('checkpoint_manager.py', 'wait_until_finished')
_BASE_EVENTS = ('/asyncio/base_events.py', '\\asyncio\\base_events.py')


def _site(record: logging.LogRecord) -> tuple[str, str] | None:
  """(file, function) of an Orbax record with a traceback, else None."""
  if not record.exc_info or record.levelno < logging.ERROR:
    return None
  path = record.pathname.replace(os.sep, '/')
  if '/orbax/checkpoint/' not in path:
    return None
  return os.path.basename(path), record.funcName


def _chain(error: BaseException | None) -> list[BaseException]:
  """`error` and the errors it was raised from or while handling."""
  chain = []
  while error is not None and not any(error is e for e in chain):
    chain.append(error)
    error = error.__cause__ or error.__context__
  return chain


class OrbaxSaveErrors(logging.Filter):
  """Holds Orbax's background records of a failed save (see the module
  docstring) until the error reaches the caller; `release` prints those of
  errors that never did."""

  def __init__(self):
    super().__init__()
    self._held: list[logging.LogRecord] = []
    self._lock = threading.Lock()

  def filter(self, record: logging.LogRecord) -> bool:
    site = _site(record)
    if site in _BACKGROUND_SITES:
      with self._lock:
        self._held.append(record)
      return False
    if site == _RAISED_SITE:  # The caller gets the error: the caller reports it.
      raised = _chain(record.exc_info[1])
      with self._lock:
        self._held = [
          r for r in self._held if not any(r.exc_info[1] is e for e in raised)
        ]
      return False
    return True

  def release(self, logger: logging.Logger) -> None:
    """Passes the records still held to `logger`'s handlers."""
    with self._lock:
      held, self._held = self._held, []
    for record in held:
      logger.callHandlers(record)


def is_closed_loop_report(unraisable: Any) -> bool:
  """Whether a `sys.unraisablehook` report is a result that native code
  (tensorstore) could not hand to an asyncio loop because it was closed:
  'RuntimeError: Event loop is closed' from `call_soon_threadsafe` called
  directly by native code, for no object."""
  if unraisable.object is not None or unraisable.exc_type is not RuntimeError:
    return False
  if str(unraisable.exc_value) != 'Event loop is closed':
    return False
  tb: types.TracebackType | None = unraisable.exc_traceback
  if tb is None:
    return False
  code = tb.tb_frame.f_code  # The outermost frame: no Python caller above it.
  return code.co_name == 'call_soon_threadsafe' and code.co_filename.endswith(
    _BASE_EVENTS
  )


_installed: OrbaxSaveErrors | None = None


def install() -> None:
  """Keeps the reports above off this process's output (once per process)."""
  global _installed
  if _installed is not None:
    return
  _installed = OrbaxSaveErrors()
  logger = absl_logging.get_absl_logger()  # Orbax logs through absl.
  logger.addFilter(_installed)
  # After the other threads have ended (Python joins them before it runs
  # atexit functions), and before logging's own atexit function.
  atexit.register(_installed.release, logger)

  # Bound now: tensorstore may report while the interpreter shuts down.
  def hook(unraisable, noise=is_closed_loop_report, previous=sys.unraisablehook):
    if not noise(unraisable):
      previous(unraisable)

  sys.unraisablehook = hook
