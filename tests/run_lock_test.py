"""One run per workdir (core/run_lock.py), locally and on gs://.

Real `launch.py` processes: a second launch on a workdir in use is refused
in one line and the first run goes on; a run killed with SIGKILL is
relaunched at once and resumes. Unit-level calls race threads for one lock
(on a local directory and on the Cloud Storage API server of conftest's
`gcs_bucket`): exactly one wins, also when they take over a stale lock.
"""

import datetime
import itertools
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
import runs

from dcgan_jax.core import manifest, run_lock, rundir
from dcgan_jax.util import files
from dcgan_jax.util.errors import ConfigError

# The launches' run: long enough to be alive whenever the test acts on it.
LONG = dict(
  num_train_steps=100_000,
  log_every_steps=50,
  sample_every_steps=100_000,
  checkpoint_every_steps=10,
)


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _stop_what_a_test_started():
  """A launch a failing test leaves running is killed with it."""
  yield
  while _STARTED:
    proc = _STARTED.pop()
    if proc.poll() is None:
      proc.kill()
      proc.wait()


def start(workdir, data_dir, log, **steps):
  """A launch.py process writing its output to the file `log`."""
  with open(log, 'a') as f:
    proc = subprocess.Popen(
      runs.launch_command(workdir, data_dir, **{**LONG, **steps}),
      cwd=runs.REPO,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'),
      stdout=f,
      stderr=subprocess.STDOUT,
    )
  _STARTED.append(proc)
  return proc


def wait_for(predicate, proc, log, timeout=300):
  deadline = time.time() + timeout
  while not predicate():
    assert proc.poll() is None, open(log).read()[-3000:]
    assert time.time() < deadline, 'timed out'
    time.sleep(0.01)


def committed_steps(workdir):
  directory = workdir / rundir.CHECKPOINT_DIR
  names = os.listdir(directory) if directory.exists() else []
  return sorted(int(n) for n in names if n.isdigit())


def lock_record(workdir):
  return files.read_json(files.join(str(workdir), run_lock.LOCK_FILE))


def test_a_second_launch_is_refused_and_the_first_run_goes_on(data_dir, tmp_path):
  workdir, log = tmp_path / 'run', tmp_path / 'first.log'
  first = start(workdir, data_dir, log)
  wait_for((workdir / run_lock.LOCK_FILE).exists, first, log)
  began = time.time()
  second = subprocess.run(  # Another config: what it wrote would show.
    runs.launch_command(workdir, data_dir, **{**LONG, 'num_train_steps': 7}),
    cwd=runs.REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  took = time.time() - began
  assert second.returncode == 1, second.stderr[-3000:]
  last = second.stderr.strip().splitlines()[-1]
  assert last.startswith(f'Error: --workdir={workdir} is in use by another run: ')
  holder = lock_record(workdir)
  assert holder['pid'] == first.pid
  assert f'pid {first.pid} on host {holder["host"]}, started ' in last
  assert 'Wait for it to finish, stop it' in last and 'another --workdir' in last
  assert 'Traceback' not in second.stderr
  assert took < run_lock.LEASE_S, took  # Refused at once, not after a lease.
  wait_for(lambda: committed_steps(workdir), first, log)  # It goes on.
  first.send_signal(signal.SIGTERM)  # Saves and exits, as on a preemption.
  assert first.wait(timeout=120) == 0, open(log).read()[-3000:]
  assert 'Preempted: saved a checkpoint at step' in open(log).read()
  assert len(manifest.load(str(workdir))['launches']) == 1
  assert rundir.load_config(str(workdir)).num_train_steps == LONG['num_train_steps']
  assert int(runs.restored(workdir).step) == max(committed_steps(workdir))
  assert not (workdir / run_lock.LOCK_FILE).exists()  # Released at the end.


def test_a_launch_on_a_gs_workdir_in_use_is_refused(data_dir, gcs_bucket):
  """launch.py on a bucket workdir whose lock a live process holds (this
  test's process): refused in one line naming it, nothing else written."""
  workdir = f'{gcs_bucket}/in-use-{uuid.uuid4().hex[:8]}'
  lock = run_lock.acquire(workdir)
  try:
    refused = subprocess.run(
      runs.launch_command(workdir, data_dir, **LONG),
      cwd=runs.REPO,
      capture_output=True,
      text=True,
      timeout=120,
    )
    assert refused.returncode == 1, refused.stderr[-3000:]
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith(f'Error: --workdir={workdir} is in use by another run: ')
    assert f'pid {os.getpid()} on host ' in last
    assert 'Traceback' not in refused.stderr
    assert files.listdir(workdir) == [run_lock.LOCK_FILE]
  finally:
    lock.release()
  assert not files.exists(files.join(workdir, run_lock.LOCK_FILE))


def test_a_killed_run_is_relaunched_at_once_and_resumes(data_dir, tmp_path):
  workdir, log = tmp_path / 'run', tmp_path / 'killed.log'
  killed = start(workdir, data_dir, log)
  wait_for(lambda: committed_steps(workdir), killed, log)
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  assert lock_record(workdir)['pid'] == killed.pid  # Left behind.
  step = int(runs.restored(workdir).step)
  began = time.time()
  proc = start(workdir, data_dir, tmp_path / 'relaunch.log', num_train_steps=step + 10)
  assert proc.wait(timeout=120) == 0, open(tmp_path / 'relaunch.log').read()[-3000:]
  assert time.time() - began < run_lock.LEASE_S
  relaunch = open(tmp_path / 'relaunch.log').read()
  assert f'its process {killed.pid} is gone' in relaunch
  assert f'Resuming at step {step}' in relaunch
  assert int(runs.restored(workdir).step) == step + 10
  assert not (workdir / run_lock.LOCK_FILE).exists()


def test_every_process_of_a_refused_launch_stops(data_dir, tmp_path):
  """Two processes (jax.distributed on localhost): process 0 finds the
  workdir taken, and both stop with its one-line error."""
  workdir = tmp_path / 'run'
  write_foreign_lock(str(workdir), age_s=0)
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  procs = [
    subprocess.Popen(
      runs.launch_command(workdir, data_dir, num_train_steps=10)
      + [f'--coordinator_address=localhost:{port}', '--num_processes=2']
      + [f'--process_id={i}'],
      cwd=runs.REPO,
      env=dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2'),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  errors = [p.communicate(timeout=120)[1] for p in procs]
  for proc, stderr in zip(procs, errors, strict=True):
    assert proc.returncode == 1, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert 'is in use by another run: pid 4242 on host another-host' in last
  assert errors[1].strip().splitlines()[-1].startswith('Error: Process 0: --workdir=')
  assert os.listdir(workdir) == [run_lock.LOCK_FILE]  # Nothing else written.


# --------------------------------------------------------------------------
# Unit level: a local directory and a gs:// one.


@pytest.fixture(params=['local', 'gs'])
def workdir(request, tmp_path):
  if request.param == 'gs':
    return f'{request.getfixturevalue("gcs_bucket")}/lock-{uuid.uuid4().hex[:8]}'
  return str(tmp_path / 'run')


def lock_path(workdir):
  return files.join(workdir, run_lock.LOCK_FILE)


def write_foreign_lock(workdir, age_s, **fields):
  """A lock of a run on another host whose last heartbeat is `age_s` old."""
  then = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=age_s)
  record = {
    'host': 'another-host',
    'boot_id': 'another-boot',
    'pid_ns': 'pid:[1]',
    'pid': 4242,
    'pid_start': 77,
    'started': then.isoformat(timespec='seconds'),
    'heartbeat': then.isoformat(timespec='seconds'),
    'run_id': 'theirs',
    **fields,
  }
  files.write_atomic(lock_path(workdir), json.dumps(record))
  return record


def race(workdir, num_takers=4):
  """`acquire` from `num_takers` threads at once: (locks got, errors)."""
  barrier = threading.Barrier(num_takers)
  locks, refusals = [], []

  def take():
    barrier.wait()
    try:
      locks.append(run_lock.acquire(workdir))
    except run_lock.WorkdirInUseError as e:
      refusals.append(str(e))

  threads = [threading.Thread(target=take) for _ in range(num_takers)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  return locks, refusals


def test_of_concurrent_launches_exactly_one_gets_the_workdir(workdir):
  for _ in range(5):
    locks, refusals = race(workdir)
    assert len(locks) == 1 and len(refusals) == 3, refusals
    assert lock_record(workdir)['run_id'] == locks[0].record['run_id']
    assert all(f'pid {os.getpid()} on host' in r for r in refusals)
    locks[0].release()
    assert not files.exists(lock_path(workdir))


def test_a_stale_lock_is_taken_over_by_exactly_one(workdir, caplog):
  for _ in range(3):
    write_foreign_lock(workdir, age_s=run_lock.LEASE_S + 60)
    with caplog.at_level(logging.WARNING):
      locks, refusals = race(workdir)
    assert len(locks) == 1 and len(refusals) == 3, refusals
    assert lock_record(workdir)['run_id'] == locks[0].record['run_id']
    warnings = [r.getMessage() for r in caplog.records if 'Taking over' in r.msg]
    assert warnings, 'no warning'  # From each taker that saw the stale lock.
    assert 'from the run of pid 4242 on host another-host' in warnings[0]
    assert re.search(r'its heartbeat is 18\d s old \(lease: 120 s\)', warnings[0])
    locks[0].release()
    caplog.clear()


def test_conditional_writes_let_exactly_one_racer_win(workdir):
  """files.create_new and files.take_over, raced by 8 threads: one wins,
  and the file holds what it wrote. (A local version is the file's bytes:
  no writer writes bytes written before, as a lock's run id sees to.)"""
  path = lock_path(workdir)

  def race_for(write):
    barrier, won, tag = threading.Barrier(8), {}, uuid.uuid4().hex.encode()

    def attempt(k):
      barrier.wait()
      won[k] = write(b'racer %d of %s' % (k, tag))  # Bytes never written before.

    threads = [threading.Thread(target=attempt, args=(k,)) for k in range(8)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    winners = [k for k, version in won.items() if version is not None]
    assert len(winners) == 1, won
    assert files.read_bytes(path) == b'racer %d of %s' % (winners[0], tag)
    return won[winners[0]]

  def create(data):
    try:
      return files.create_new(path, data)
    except FileExistsError:
      return None

  for _ in range(3 if files.is_url(path) else 10):
    version = race_for(create)
    version = race_for(lambda data, v=version: files.take_over(path, data, v))
    assert files.remove_if(path, version)
    assert not files.exists(path)


def test_a_live_lock_of_another_host_is_refused(workdir):
  record = write_foreign_lock(workdir, age_s=10)
  before = files.read_bytes(lock_path(workdir))
  with pytest.raises(run_lock.WorkdirInUseError) as refused:
    run_lock.acquire(workdir)
  message = str(refused.value)
  assert '\n' not in message
  assert f'pid 4242 on host another-host, started {record["started"]}' in message
  # Times in whole seconds: 10 s old when written, a few more by now.
  ago = int(re.search(r'heartbeat (\d+) s ago', message).group(1))
  assert 10 <= ago < 40, message
  left = int(re.search(r'once its heartbeat is 120 s old, in (\d+) s\.$', message)[1])
  assert ago + left in (119, 120), message
  assert files.read_bytes(lock_path(workdir)) == before


def test_release_deletes_only_its_own_lock(workdir):
  lock = run_lock.acquire(workdir)
  write_foreign_lock(workdir, age_s=0)  # As if another launch took it over.
  lock.release()
  assert lock_record(workdir)['run_id'] == 'theirs'


def test_the_heartbeat_refreshes_the_lock(workdir, monkeypatch):
  monkeypatch.setattr(run_lock, 'HEARTBEAT_S', 0.05)
  lock = run_lock.acquire(workdir)
  first = lock_record(workdir)['heartbeat']
  deadline = time.time() + 10
  while lock_record(workdir)['heartbeat'] == first:  # ISO time, in seconds.
    assert time.time() < deadline, 'no heartbeat'
    time.sleep(0.1)
  assert lock_record(workdir)['run_id'] == lock.record['run_id']
  lock.release()
  assert not files.exists(lock_path(workdir))


def test_a_lock_taken_over_stays_with_its_new_holder(workdir, monkeypatch):
  monkeypatch.setattr(run_lock, 'HEARTBEAT_S', 0.05)
  lock = run_lock.acquire(workdir)
  write_foreign_lock(workdir, age_s=0)
  deadline = time.time() + 10
  while not lock._lost:  # The next heartbeat notices.
    assert time.time() < deadline, 'the heartbeat did not notice'
    time.sleep(0.05)
  lock.release()
  assert lock_record(workdir)['run_id'] == 'theirs'


def test_an_unreadable_lock_is_refused(workdir):
  files.write_atomic(lock_path(workdir), 'not json')
  with pytest.raises(run_lock.WorkdirInUseError, match='is not a run lock'):
    run_lock.acquire(workdir)


# --------------------------------------------------------------------------
# This host: the holder's process decides, at once.


def here(pid, **fields):
  """A lock of process `pid` on this host, with an old heartbeat: only the
  process decides whether it is stale."""
  record = run_lock._here() | {'pid': pid, 'pid_start': run_lock._stat(pid)[1]}
  return record | fields


def test_a_lock_of_a_process_gone_is_taken_over(tmp_path, caplog):
  workdir = str(tmp_path / 'run')
  child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(0.5)'])
  record = here(child.pid)
  assert record['pid_start'] is not None
  deadline = time.time() + 30
  while run_lock._stat(child.pid)[0] != 'Z':  # Exited, not reaped: a zombie.
    assert time.time() < deadline
    time.sleep(0.05)
  for _ in ('zombie', 'reaped'):
    write_foreign_lock(workdir, age_s=1, **record)
    with caplog.at_level(logging.WARNING):
      run_lock.acquire(workdir).release()
    assert f'its process {child.pid} is gone' in caplog.text
    caplog.clear()
    child.wait()


def test_a_lock_of_a_live_process_here_is_refused_even_without_heartbeat(tmp_path):
  workdir = str(tmp_path / 'run')
  with subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']) as p:
    try:
      write_foreign_lock(workdir, age_s=3600, **here(p.pid))
      with pytest.raises(run_lock.WorkdirInUseError, match=f'pid {p.pid} on host'):
        run_lock.acquire(workdir)
      # The same pid, started at another time: a reused pid, so a lock of
      # a process that is gone.
      write_foreign_lock(workdir, age_s=3600, **here(p.pid, pid_start=1))
      run_lock.acquire(workdir).release()
    finally:
      p.kill()


def test_an_unwritable_workdir_is_a_config_error(tmp_path):
  (tmp_path / 'file').write_text('not a directory')
  with pytest.raises(ConfigError, match='Cannot write to --workdir'):
    run_lock.acquire(str(tmp_path / 'file' / 'run'))


# --------------------------------------------------------------------------
# Several processes: process 0 decides for all.


class FakeKeyValueStore:
  """jax.distributed's key-value store, for one process playing each role."""

  def __init__(self):
    self.values = {}

  def key_value_set(self, key, value):
    self.values[key] = value

  def blocking_key_value_get(self, key, timeout_ms):
    del timeout_ms
    return self.values[key]


def test_the_other_processes_stop_with_process_0(tmp_path, monkeypatch):
  from jax._src import distributed as jax_distributed

  store = FakeKeyValueStore()
  monkeypatch.setattr(jax_distributed.global_state, 'client', store)
  monkeypatch.setattr(run_lock.jax, 'process_count', lambda: 2)
  workdir = str(tmp_path / 'run')
  write_foreign_lock(workdir, age_s=0)
  for index in (0, 1):  # Refused: each process raises process 0's error.
    monkeypatch.setattr(run_lock.jax, 'process_index', lambda i=index: i)
    monkeypatch.setattr(run_lock, '_CALLS', itertools.count(0))  # Its 1st call.
    with pytest.raises(run_lock.WorkdirInUseError, match='pid 4242 on host another'):
      with run_lock.hold(workdir):
        pytest.fail('entered')
  files.remove(lock_path(workdir))
  entered = []
  for index in (0, 1):  # Taken: both go on; process 0 holds the lock.
    monkeypatch.setattr(run_lock.jax, 'process_index', lambda i=index: i)
    monkeypatch.setattr(run_lock, '_CALLS', itertools.count(1))  # Its 2nd call.
    with run_lock.hold(workdir) as lock:
      entered.append(lock)
      if index == 0:
        assert lock_record(workdir)['run_id'] == lock.record['run_id']
  assert entered[0] is not None and entered[1] is None
  assert not files.exists(lock_path(workdir))
