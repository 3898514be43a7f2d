"""The libraries' tracebacks of an error the caller reports are dropped; no other."""

import asyncio
import importlib.util
import logging
import os
import subprocess
import sys

import pytest
import tensorstore as ts
from absl import logging as absl_logging
from runs import REPO

from dcgan_jax.util import library_noise

# Stand-ins for the Orbax modules whose functions log a save's error with
# its traceback: same file and function names, under an orbax/checkpoint/
# directory.
_FAKE_ORBAX = {
  'future.py': 'run',
  'async_checkpointer.py': '_thread_func',
  'checkpoint_manager.py': 'wait_until_finished',
  'other.py': 'restore',
}


@pytest.fixture
def fake_orbax(tmp_path):
  """{function name: a function that logs its argument, an exception, as
  that Orbax function logs a save's error}."""
  directory = tmp_path / 'orbax' / 'checkpoint'
  directory.mkdir(parents=True)
  functions = {}
  for file, name in _FAKE_ORBAX.items():
    (directory / file).write_text(
      'from absl import logging\n'
      f'def {name}(error):\n'
      '  try:\n'
      '    raise error\n'
      '  except BaseException:\n'
      "    logging.exception('failed: %s', error)\n"
    )
    spec = importlib.util.spec_from_file_location(f'fake_{name}', directory / file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    functions[name] = getattr(module, name)
  return functions


class _Records(logging.Handler):
  def __init__(self):
    super().__init__()
    self.records = []

  def emit(self, record):
    self.records.append(record)


def test_save_errors_are_held_until_the_caller_gets_them(fake_orbax):
  logger = absl_logging.get_absl_logger()
  held, seen = library_noise.OrbaxSaveErrors(), _Records()
  logger.addFilter(held)
  logger.addHandler(seen)
  try:
    full, other = OSError(28, 'No space left on device'), ValueError('lost')
    fake_orbax['run'](full)  # A save step's thread.
    fake_orbax['_thread_func'](full)  # The commit thread.
    fake_orbax['run'](other)  # An error no caller gets.
    fake_orbax['restore'](full)  # Elsewhere in Orbax: shown.
    assert [r.funcName for r in seen.records] == ['restore']
    # Raised to the caller, wrapped as the trainer does: the caller reports it.
    fake_orbax['wait_until_finished'](RuntimeError('save failed'))
    wrapped = RuntimeError('Saving checkpoint 6 failed')
    wrapped.__cause__ = full
    fake_orbax['wait_until_finished'](wrapped)
    assert [r.funcName for r in seen.records] == ['restore']
    held.release(logger)
    assert [(r.funcName, r.exc_info[1]) for r in seen.records[1:]] == [('run', other)]
  finally:
    logger.removeFilter(held)
    logger.removeHandler(seen)


def _unraisable(make) -> object:
  """What `make()` reports through sys.unraisablehook (exactly one report)."""
  reports = []
  previous, sys.unraisablehook = sys.unraisablehook, reports.append
  try:
    make()
  finally:
    sys.unraisablehook = previous
  assert len(reports) == 1
  return reports[0]


def _tensorstore_result_for_a_closed_loop():
  """A tensorstore result that arrives after the loop awaiting it closed,
  as when Orbax's loop stops at the first of several failed reads."""
  promise, future = ts.Promise.new()

  async def wait():
    return await future

  async def start_waiting():
    asyncio.ensure_future(wait())
    await asyncio.sleep(0)

  loop = asyncio.new_event_loop()
  loop.run_until_complete(start_waiting())
  loop.close()
  promise.set_result(1)


class _CallsAClosedLoop:
  def __del__(self):
    loop = asyncio.new_event_loop()
    loop.close()
    loop.call_soon_threadsafe(print)


def test_only_a_native_result_for_a_closed_loop_is_dropped():
  report = _unraisable(_tensorstore_result_for_a_closed_loop)
  assert str(report.exc_value) == 'Event loop is closed'
  assert library_noise.is_closed_loop_report(report)
  # The same error from Python code (here a finalizer) is its own bug: shown.
  report = _unraisable(lambda: _CallsAClosedLoop().__del__ and None)
  assert str(report.exc_value) == 'Event loop is closed'
  assert not library_noise.is_closed_loop_report(report)


_PROCESS = """
import importlib.util, sys
from dcgan_jax import cli
cli.main_argv()
spec = importlib.util.spec_from_file_location('fake', sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module.run(ValueError('no caller got this'))
raise RuntimeError('an unexpected error')
"""


def test_a_command_still_shows_what_nobody_reported(fake_orbax, tmp_path):
  path = tmp_path / 'orbax' / 'checkpoint' / 'future.py'
  proc = subprocess.run(
    [sys.executable, '-c', _PROCESS, str(path)],
    cwd=REPO,
    env=dict(os.environ, PYTHONUNBUFFERED='1'),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 1
  # The unexpected error, as always; then, at exit, Orbax's record of an
  # error that never reached a caller.
  first, _, rest = proc.stderr.partition('RuntimeError: an unexpected error')
  assert 'Traceback' in first and 'no caller got this' not in first, proc.stderr
  assert 'failed: no caller got this' in rest, proc.stderr
  assert 'ValueError: no caller got this' in rest, proc.stderr
