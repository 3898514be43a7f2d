"""config.reduction_shards: the same bits on any device count.

The digits preset with 8 shards, 20 Adam steps, trained by `launch.py` on 1,
2, 4 and 8 CPU devices must checkpoint identical states (the sha256 digests
manifest.json records), and so must a run trained on 4 devices to step 10
and resumed on 2. In the default mode the same resume is allowed with a
warning, recorded in the manifest.

4 and 8 devices run as 2 and 4 processes (jax.distributed on localhost) of
2 devices each, as hosts hold them: XLA:CPU gives a process a thread pool
of max(cores, devices) threads and some kernels split their sums by it, so
one process forced to 8 devices on a 2-core machine computes the same
program differently (`test_xla_cpu_splits_sums_by_its_thread_pool`).
"""

import json
import os
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest
import runs

from dcgan_jax.data import loader

INVARIANT = {
  'reduction_shards': 8,
  'sync_batchnorm': False,
  'num_train_steps': 20,
  'checkpoint_every_steps': 10,
  'log_every_steps': 10,
  'sample_every_steps': 20,
  'eval_every_steps': 0,
}
DEVICES_PER_PROCESS = 2


def _command(workdir, data_dir, **overrides):
  settings = {'data_dir': data_dir, **overrides}
  return [
    sys.executable,
    'launch.py',
    '--config=configs/digits.py',
    f'--workdir={workdir}',
    *(f'--config.{key}={value}' for key, value in settings.items()),
  ]


def _env(devices: int) -> dict[str, str]:
  return dict(
    os.environ,
    TF_CPP_MIN_LOG_LEVEL='2',
    XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
  )


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start(command, devices: int) -> list[subprocess.Popen]:
  """`command` on `devices` CPU devices: one process, or processes of
  DEVICES_PER_PROCESS devices joined by jax.distributed."""
  if devices <= DEVICES_PER_PROCESS:
    commands, per_process = [command], devices
  else:
    n, port = devices // DEVICES_PER_PROCESS, _free_port()
    cluster = [f'--coordinator_address=localhost:{port}', f'--num_processes={n}']
    commands = [[*command, *cluster, f'--process_id={i}'] for i in range(n)]
    per_process = DEVICES_PER_PROCESS
  return [
    subprocess.Popen(
      c,
      cwd=runs.REPO,
      env=_env(per_process),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    for c in commands
  ]


def _finish(processes: list[subprocess.Popen]) -> str:
  """Process 0's log, once all ended well."""
  logs = [p.communicate(timeout=900)[1] for p in processes]
  for p, log in zip(processes, logs, strict=True):
    assert p.returncode == 0, log[-3000:]
  return logs[0]


def _run_all(jobs) -> list[str]:
  """(command, devices) jobs, all at once; process 0's log of each."""
  started = [_start(*job) for job in jobs]
  return [_finish(processes) for processes in started]


def _manifest(workdir) -> dict:
  return json.loads((workdir / 'manifest.json').read_text())


def _digests(workdir) -> dict[str, str]:
  return {
    step: entry['sha256'] for step, entry in _manifest(workdir)['checkpoints'].items()
  }


@pytest.fixture(scope='module')
def invariant_runs(data_dir, tmp_path_factory):
  """Workdirs of the 8-shard digits run on 1, 2, 4 and 8 devices (the one on
  4 stopped at step 10 and resumed), and a copy of the 4-device run at step
  10 resumed on 2 devices."""
  root = tmp_path_factory.mktemp('invariant')
  # The digits' TFDS build, once, before processes share the data_dir.
  loader.load_data(runs.small_config(data_dir), str(root / 'prepare'))
  workdirs = {n: root / f'devices_{n}' for n in (1, 2, 4, 8)}
  resumed = root / 'resumed'
  half = dict(INVARIANT, num_train_steps=10)
  _run_all(
    [(_command(workdirs[4], data_dir, **half), 4)]
    + [(_command(workdirs[n], data_dir, **INVARIANT), n) for n in (1, 2)]
  )
  subprocess.run(['cp', '-a', str(workdirs[4]), str(resumed)], check=True)
  logs = _run_all(
    [
      (_command(workdirs[4], data_dir, **INVARIANT), 4),
      (_command(resumed, data_dir, **INVARIANT), 2),
    ]
  )
  _run_all([(_command(workdirs[8], data_dir, **INVARIANT), 8)])
  return workdirs, resumed, logs[1]


def test_every_device_count_gives_the_same_checkpoints(invariant_runs):
  workdirs, _, _ = invariant_runs
  digests = {n: _digests(w) for n, w in workdirs.items()}
  assert set(digests[1]) == {'10', '20'}
  for n in (2, 4, 8):
    assert digests[n] == digests[1], f'{n} devices'
  device_counts = {
    n: [launch['device_count'] for launch in _manifest(w)['launches']]
    for n, w in workdirs.items()
  }
  assert device_counts == {1: [1], 2: [2], 4: [4, 4], 8: [8]}  # Really ran so.


def test_a_resume_on_another_device_count_is_bit_exact(invariant_runs):
  workdirs, resumed, log = invariant_runs
  assert _digests(resumed) == _digests(workdirs[4])
  launches = _manifest(resumed)['launches']
  assert [launch['device_count'] for launch in launches] == [4, 2]
  assert launches[1]['device_count_change'] == {'from': 4, 'to': 2, 'bit_exact': True}
  assert 'statistically' not in log


def test_the_default_mode_resumes_on_another_count_with_a_warning(data_dir, tmp_path):
  workdir = tmp_path / 'run'
  steps = {'num_train_steps': 3, 'checkpoint_every_steps': 3}
  _run_all([(runs.launch_command(workdir, data_dir, **steps), 2)])
  steps['num_train_steps'] = 6
  (log,) = _run_all([(runs.launch_command(workdir, data_dir, **steps), 1)])
  assert 'Resuming at step 3 on 1 devices; the run was trained on 2.' in log
  assert 'continues statistically, not bitwise' in log
  launches = _manifest(workdir)['launches']
  assert launches[1]['device_count_change'] == {'from': 2, 'to': 1, 'bit_exact': False}
  assert 'device_count_change' not in launches[0]


_PROBE = """
import os, pickle, sys
import jax, jax.numpy as jnp, numpy as np
rng = np.random.default_rng(0)
x = rng.normal(size=(8, 32, 32, 1)).astype(np.float32)
w = rng.normal(size=(4, 4, 1, 32)).astype(np.float32)
def conv(w):
  return jax.lax.conv_general_dilated(
    x, w, (2, 2), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
grad = jax.jit(jax.grad(lambda w: jnp.sum(jnp.sin(conv(w)))))(w)
sys.stdout.buffer.write(pickle.dumps(np.asarray(grad)))
"""


def _probe(devices: int):
  from dcgan_jax.util import xla_cpu

  env = _env(devices)
  xla_cpu.use_project_kernels(env)  # The kernels launch.py trains with.
  out = subprocess.run(
    [sys.executable, '-c', _PROBE], env=env, capture_output=True, timeout=300
  )
  assert out.returncode == 0, out.stderr[-2000:]
  return pickle.loads(out.stdout)


def _pool_size(devices: int) -> int:
  """XLA:CPU's thread pool: max(its default size, the device count)."""
  cores = len(os.sched_getaffinity(0))
  if os.environ.get('NPROC'):
    cores = max(1, min(cores, int(os.environ['NPROC'])))
  return max(cores, devices)


def test_xla_cpu_splits_sums_by_its_thread_pool():
  """Why the test above runs 4 and 8 devices as processes of 2: the same
  program (the weight gradient of a stride-2 conv with one input channel)
  gives other bits in a process forced to more devices than the machine
  has cores, because XLA:CPU's thread pool grows to the device count and
  this kernel splits its sum by the pool's size."""
  single = _probe(1)
  for devices in (2, 8):
    same = np.array_equal(single, _probe(devices))
    if _pool_size(devices) == _pool_size(1):
      assert same, devices
    else:  # If this fails, XLA changed: revisit docs/reproducibility.md's statement.
      assert not same, devices
