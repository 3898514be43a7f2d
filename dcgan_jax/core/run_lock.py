"""One run per workdir: the lock WORKDIR/.run.lock.

Two launches on one workdir would both train, each overwriting the other's
checkpoints, config and manifest, and both exit 0. So a launch takes the
workdir before it writes anything there, with a small JSON file:

  WORKDIR/.run.lock  {"host", "boot_id", "pid_ns", "pid", "pid_start",
                      "started", "heartbeat", "run_id"}

(`boot_id` and `pid_ns`, the pid namespace, from /proc/sys/kernel/random
and /proc/self/ns; `pid_start`, in clock ticks after boot, from
/proc/<pid>/stat; null without /proc; times ISO 8601, UTC). It is created
only where no lock is (`files.create_new`: a hard link locally, a
generation precondition in Cloud Storage): of two launches exactly one
gets it, and the other is refused with a `WorkdirInUseError` naming the
holder. A thread refreshes "heartbeat" every HEARTBEAT_S; the lock is
deleted when the run ends, normally or with an error, if still this run's.

A lock whose run is over is taken over, with a warning, so that a run
killed with SIGKILL or on a preempted VM does not block its relaunch. From
the same host (and boot and pid namespace): once its process is gone (no
process has its pid, or one started at another time has it). From anywhere
else: once its heartbeat is over LEASE_S old. The takeover is atomic too
(`files.take_over`): of launches that race for one stale lock, one wins.

In a multi-process run, process 0 takes the lock, and tells the others
through jax.distributed's key-value store whether it got it: all of them
go on, or all stop with the same error. An ensemble (num_seeds > 1) has one
lock, at the top of its workdir. Nothing but the lock code reads the file.
"""

import contextlib
import datetime
import itertools
import json
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import jax
from absl import logging
from jax._src import distributed as jax_distributed  # Private, as Orbax uses it.

from dcgan_jax.util import files
from dcgan_jax.util.errors import ConfigError

LOCK_FILE = '.run.lock'
HEARTBEAT_S = 30.0  # How often the holder refreshes its heartbeat.
LEASE_S = 120.0  # A heartbeat older than this, from another host: run over.
_ATTEMPTS = 5  # Tries when other launches create or take the lock meanwhile.
_WAIT_MS = 10 * 60 * 1000  # How long the other processes wait for process 0.
_CALLS = itertools.count()  # Numbers the messages of this process's calls.


class WorkdirInUseError(ConfigError):
  """Another run, still alive, holds the workdir."""


class Lock:
  """This run's lock on a workdir: refreshed by a daemon thread until
  `release`."""

  def __init__(self, path: str, record: dict[str, Any], version: files.Version):
    self.path, self.record, self._version = path, record, version  # Ours.
    self._stop, self._lost = threading.Event(), False
    self._thread = threading.Thread(target=self._beat, name='run-lock', daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      record = {**self.record, 'heartbeat': _stamp()}
      try:
        version = files.replace_if(self.path, _encode(record), self._version)
      except OSError as e:
        logging.warning('Cannot refresh the heartbeat of %s: %s', self.path, e)
        continue
      if version is None:
        self._lost = True
        logging.error(
          "%s is no longer this run's lock: another launch took the workdir "
          'over (this run looked dead to it). Both now write there.',
          self.path,
        )
        return
      self.record, self._version = record, version

  def release(self) -> None:
    """Stops the heartbeat and deletes the lock if it still is this run's."""
    self._stop.set()
    self._thread.join()
    if self._lost:
      return
    try:
      if not files.remove_if(self.path, self._version):
        logging.warning("Left %s alone: it is no longer this run's lock.", self.path)
    except OSError as e:
      logging.warning('Cannot delete %s (%s): a relaunch takes it over.', self.path, e)


def acquire(workdir: str) -> Lock:
  """Takes `workdir` for this process's run: WorkdirInUseError if a live
  run holds it, ConfigError if the lock cannot be written."""
  path = files.join(workdir, LOCK_FILE)
  now = _stamp()
  record = {
    **_here(),
    'pid': os.getpid(),
    'pid_start': _stat(os.getpid())[1],
    'started': now,
    'heartbeat': now,
    'run_id': uuid.uuid4().hex,
  }
  try:
    return Lock(path, record, _take(workdir, path, record))
  except OSError as e:
    reason = e.strerror or str(e).strip()[:200] or type(e).__name__
    raise ConfigError(
      f'Cannot write to --workdir={workdir} ({reason}): its lock {LOCK_FILE} '
      'cannot be created; choose a writable directory (for gs://, a bucket '
      'this machine may write to).'
    ) from e


def _take(workdir: str, path: str, record: dict[str, Any]) -> files.Version:
  """Creates the lock, or takes over a stale one; the version written."""
  data = _encode(record)
  for _ in range(_ATTEMPTS):
    with contextlib.suppress(FileExistsError):
      return files.create_new(path, data)
    found = files.read_versioned(path)
    if found is None:
      continue  # Released meanwhile.
    theirs = _decode(found[0], path)
    if theirs['run_id'] == record['run_id']:  # Ours: a retried request.
      return found[1]
    why = _why_over(theirs)
    if why is None:
      raise WorkdirInUseError(_in_use(workdir, path, theirs))
    logging.warning(
      'Taking over %s from the run of pid %s on host %s, started %s: %s.',
      *(path, theirs['pid'], theirs['host'], theirs['started'], why),
    )
    version = files.take_over(path, data, found[1])
    if version is not None:
      return version
  raise WorkdirInUseError(
    f'--workdir={workdir}: other launches keep taking {path}; launch once.'
  )


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[Lock | None]:
  """Holds `workdir` for the block: process 0 takes the lock (`acquire`)
  and releases it at the end; the others learn whether it got it, and
  raise its error if not."""
  several = jax.process_count() > 1
  if jax.process_index() != 0:
    _hear()
    yield None
    return
  try:
    lock = acquire(workdir)
  except BaseException as e:
    if several:
      _tell(e)
    raise
  if several:
    _tell(None)
  try:
    yield lock
  finally:
    lock.release()


def _why_over(record: dict[str, Any]) -> str | None:
  """Why the holder's run is over, or None where it may still run."""
  if all(record.get(key) == value for key, value in _here().items()):
    return None if _alive_here(record) else f'its process {record["pid"]} is gone'
  if (age := _age(record)) <= LEASE_S:
    return None
  return f'its heartbeat is {age:.0f} s old (lease: {LEASE_S:.0f} s)'


def _alive_here(record: dict[str, Any]) -> bool:
  """Whether the process of a lock from here runs: its pid exists, and
  where /proc tells, is no zombie and started at the same time (a pid is
  reused after its process)."""
  try:
    os.kill(record['pid'], 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Another user's process: it exists.
    pass
  state, start = _stat(record['pid'])
  if state == 'Z':  # Killed, not yet reaped by its parent.
    return False
  return None in (start, record.get('pid_start')) or start == record['pid_start']


def _in_use(workdir: str, path: str, record: dict[str, Any]) -> str:
  """The one-line refusal: who holds the workdir and what to do."""
  age, pid, host = max(0.0, _age(record)), record['pid'], record['host']
  message = (
    f'--workdir={workdir} is in use by another run: pid {pid} on host {host}, '
    f'started {record["started"]} (lock {path}, heartbeat {age:.0f} s ago). '
    f'Wait for it to finish, stop it (kill {pid} on {host}: it saves a '
    'checkpoint and exits), or use another --workdir.'
  )
  if any(record.get(key) != value for key, value in _here().items()):
    message += (
      f' If that run is dead (a preempted VM), the lock is taken over once its '
      f'heartbeat is {LEASE_S:.0f} s old, in {max(0.0, LEASE_S - age):.0f} s.'
    )
  return message


def _encode(record: dict[str, Any]) -> bytes:
  return json.dumps(record, indent=2).encode()


def _decode(data: bytes, path: str) -> dict[str, Any]:
  """A lock's record; a lock that is not one is never taken over."""
  try:
    record = json.loads(data)
    _age(record)
    if isinstance(record['pid'], int) and record['host'] and record['run_id']:
      return record
  except (ValueError, KeyError, TypeError):
    pass
  raise WorkdirInUseError(
    f'{path} is not a run lock (it holds {data[:100]!r}); if no run uses its '
    'workdir, delete it and relaunch.'
  )


def _stamp() -> str:
  return datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')


def _age(record: dict[str, Any]) -> float:
  """Seconds since the lock's heartbeat."""
  then = datetime.datetime.fromisoformat(record['heartbeat'])
  return (datetime.datetime.now(datetime.UTC) - then).total_seconds()


def _stat(pid: int) -> tuple[str | None, int | None]:
  """(state, start time in clock ticks after boot) of process `pid`, from
  /proc/<pid>/stat (fields 3 and 22); Nones where it does not tell."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      fields = f.read().rsplit(')', 1)[1].split()
    return fields[0], int(fields[19])
  except (OSError, IndexError, ValueError):
    return None, None


def _here() -> dict[str, str | None]:
  """Where this process runs: host, boot and pid namespace (see above)."""
  try:
    with open('/proc/sys/kernel/random/boot_id') as f:
      boot_id = f.read().strip()
  except OSError:
    boot_id = None
  try:
    pid_ns = os.readlink('/proc/self/ns/pid')
  except OSError:
    pid_ns = None
  return {'host': socket.gethostname(), 'boot_id': boot_id, 'pid_ns': pid_ns}


def _tell(error: BaseException | None) -> None:
  """Process 0: tells the others whether it got the lock (see `_hear`)."""
  message = [type(error).__name__, str(error)] if error else None
  key = f'dcgan_jax/run_lock/{next(_CALLS)}'
  jax_distributed.global_state.client.key_value_set(key, json.dumps(message))


def _hear() -> None:
  """The others: wait for process 0's `_tell`; raise its error."""
  key = f'dcgan_jax/run_lock/{next(_CALLS)}'
  client = jax_distributed.global_state.client
  message = json.loads(client.blocking_key_value_get(key, _WAIT_MS))
  if message is not None:
    name, text = message
    error = WorkdirInUseError if name == WorkdirInUseError.__name__ else ConfigError
    raise error(f'Process 0: {text or name}')
