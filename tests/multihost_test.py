"""2 processes x 2 CPU devices (jax.distributed on localhost) == 1 x 4.

Each process runs `launch.py` with --coordinator_address; collectives go
through gloo. With SGD (Adam amplifies round-off, see device_count_test.py)
the parameters match the single-process run to round-off; with the default
Adam, a two-process run stopped and resumed across processes matches an
uninterrupted two-process run bit for bit.
"""

import os
import re
import signal
import socket
import subprocess
import time

import jax
import numpy as np
import runs

from dcgan_jax.core import manifest


def command(workdir, data_dir, num_steps, *extra):
  cadence = dict.fromkeys(
    ('log_every_steps', 'sample_every_steps', 'checkpoint_every_steps'), 5
  )
  steps = dict(num_train_steps=num_steps, **cadence)
  return [*runs.launch_command(workdir, data_dir, **steps), *extra]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def env_with_devices(n):
  return dict(
    os.environ,
    XLA_FLAGS=f'--xla_force_host_platform_device_count={n}',
    TF_CPP_MIN_LOG_LEVEL='2',
  )


def run_two_processes(workdir, data_dir, num_steps, *extra, sigterm_after=None):
  """Runs both processes to the end (or SIGTERMs both once training began)."""
  port = free_port()
  procs = [
    subprocess.Popen(
      command(workdir, data_dir, num_steps, *extra)
      + [f'--coordinator_address=localhost:{port}', '--num_processes=2']
      + [f'--process_id={i}'],
      cwd=runs.REPO,
      env=env_with_devices(2),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  if sigterm_after is not None:
    first_grid = os.path.join(workdir, 'samples', 'step_0000000.png')
    deadline = time.time() + 120
    while not os.path.exists(first_grid) and time.time() < deadline:
      time.sleep(0.05)
    time.sleep(sigterm_after)
    for p in procs:  # Cloud TPU signals every host.
      p.send_signal(signal.SIGTERM)
  logs = [p.communicate(timeout=300)[1] for p in procs]
  for p in procs:
    assert p.returncode == 0, '\n-----\n'.join(log[-2500:] for log in logs)
  return logs


def run_one_process(workdir, data_dir, num_steps, *extra):
  proc = subprocess.run(
    command(workdir, data_dir, num_steps, *extra),
    cwd=runs.REPO,
    env=env_with_devices(4),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]


# The preemption test's run: long enough that a SIGTERM 2 s after the first
# sample grid lands mid-run (300 steps took about 16 s on 2 cores).
NUM_STEPS = 150
SGD = ('--config.optimizer=sgd', '--config.g_learning_rate=0.01')
SGD += ('--config.d_learning_rate=0.01',)


def test_two_processes_match_one_process(data_dir, tmp_path):
  logs = run_two_processes(tmp_path / 'two', data_dir, 10, *SGD)
  run_one_process(tmp_path / 'one', data_dir, 10, *SGD)
  two, one = runs.restored(tmp_path / 'two'), runs.restored(tmp_path / 'one')
  assert int(two.step) == int(one.step) == 10
  worst = max(
    float(np.abs(a - b).max() / np.abs(a).max())
    for a, b in zip(
      jax.tree.leaves((one.g_params, one.d_params)),
      jax.tree.leaves((two.g_params, two.d_params)),
      strict=True,
    )
  )
  print(f'2x2 vs 1x4 devices, SGD, 10 steps: max relative difference {worst:.2e}')
  assert worst < 1e-4  # A sharding or BatchNorm-sync bug gives > 1e-2.
  # Only process 0 writes: one TensorBoard file, samples, config, manifest.
  events = [f for f in os.listdir(tmp_path / 'two') if f.startswith('events.out')]
  assert len(events) == 1
  assert len(os.listdir(tmp_path / 'two' / 'samples')) == 3
  manifest_launch = manifest.load(str(tmp_path / 'two'))['launches'][0]
  assert manifest_launch['process_count'] == 2
  assert manifest_launch['device_count'] == 4
  assert 'JAX process 1/2, 2 local / 4 global' in logs[1]


def test_sigterm_on_both_hosts_saves_at_one_agreed_step_then_resumes_exactly(
  data_dir, tmp_path
):
  """SIGTERM on both hosts, as Cloud TPU sends before preempting: they save at
  one step; relaunched, both resume there and end bit for bit where an
  uninterrupted two-process run ends."""
  cadence = ('--config.checkpoint_every_steps=100', '--config.sample_every_steps=100')
  run_two_processes(tmp_path / 'full', data_dir, NUM_STEPS, *cadence)
  logs = run_two_processes(
    tmp_path / 'preempted', data_dir, NUM_STEPS, *cadence, sigterm_after=2
  )
  steps = [
    re.search(r'Preempted: saved a checkpoint at step (\d+)', log) for log in logs
  ]
  assert all(steps), logs[0][-2000:]
  (step,) = {int(m.group(1)) for m in steps}  # Both hosts agree.
  assert 0 < step < NUM_STEPS
  assert int(runs.restored(tmp_path / 'preempted').step) == step
  logs = run_two_processes(tmp_path / 'preempted', data_dir, NUM_STEPS, *cadence)
  assert all(f'Resuming at step {step}' in log for log in logs)
  full, resumed = (
    runs.restored(tmp_path / 'full'),
    runs.restored(tmp_path / 'preempted'),
  )
  assert int(full.step) == int(resumed.step) == NUM_STEPS
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed), strict=True):
    np.testing.assert_array_equal(a, b)
