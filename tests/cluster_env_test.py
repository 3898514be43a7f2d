"""Several processes join from the cluster's environment alone.

On a slice, every worker runs the same `launch.py` command, without
--coordinator_address: launch.py asks JAX's own cluster detection (what
`jax.distributed.initialize()` with no arguments reads) and joins the other
processes. Here SLURM's variables describe a 2-process job on localhost;
that run ends bit for bit where the same run started with explicit
--coordinator_address/--num_processes/--process_id ends, and a SIGTERM to
both processes saves one agreed step. Bad coordinator flags or cluster
variables are one line `Error: ...`.
"""

import errno
import os
import random
import re
import signal
import socket
import subprocess
import time

import numpy as np
import runs

# Variables by which JAX (or a launcher) could find a real cluster around the
# tests; the launched processes see only the ones a test sets.
_CLUSTER_PREFIXES = (
  'SLURM_',
  'OMPI_',
  'PMI_',
  'PMIX_',
  'TPU_',
  'MEGASCALE_',
  'KUBERNETES_',
  'JAX_COORDINATOR_',
  'JAX_LOCAL_DEVICE_IDS',
  'JAX_PARTITION_INDEX',
  'JAX_SLICE_INDEX',
)


def clean_env(**extra):
  """The test's environment without cluster variables, 2 CPU devices."""
  env = {
    key: value
    for key, value in os.environ.items()
    if not key.startswith(_CLUSTER_PREFIXES)
  }
  env.update(
    XLA_FLAGS='--xla_force_host_platform_device_count=2', TF_CPP_MIN_LOG_LEVEL='2'
  )
  return {**env, **extra}


_NO_IPV6 = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL)


def _is_free(port: int) -> bool:
  # The coordinator binds [::]:port; check both address families.
  for family, host in ((socket.AF_INET, ''), (socket.AF_INET6, '::')):
    try:
      with socket.socket(family) as s:
        s.bind((host, port))
    except OSError as e:
      if family == socket.AF_INET6 and e.errno in _NO_IPV6:
        continue
      return False
  return True


def free_port() -> int:
  """A free port in [61440, 65535], outside Linux's ephemeral range."""
  for _ in range(100):
    port = random.randint(61440, 65535)
    if _is_free(port):
      return port
  raise RuntimeError('No free port in [61440, 65535].')


def slurm_job_id() -> int:
  """A job id whose coordinator port is free here.

  JAX's SLURM detection (jax/_src/clusters/slurm_cluster.py) puts the
  coordinator on the first host of SLURM_STEP_NODELIST, port
  61440 + SLURM_JOB_ID % 4096.
  """
  return 4096 * 1000 + free_port() - 61440


def slurm_env(job_id: int, process: int, num_processes: int = 2):
  """What `srun --ntasks=2` on one node sets that JAX reads, for one task."""
  return clean_env(
    SLURM_JOB_ID=str(job_id),
    SLURM_JOBID=str(job_id),
    SLURM_STEP_NODELIST='localhost',
    SLURM_NODELIST='localhost',
    SLURM_STEP_NUM_NODES='1',
    SLURM_NNODES='1',
    SLURM_NTASKS=str(num_processes),
    SLURM_PROCID=str(process),
    SLURM_LOCALID=str(process),
  )


def command(workdir, data_dir, num_steps, *extra):
  cadence = dict.fromkeys(
    ('log_every_steps', 'sample_every_steps', 'checkpoint_every_steps'), 5
  )
  steps = dict(num_train_steps=num_steps, **cadence)
  return [*runs.launch_command(workdir, data_dir, **steps), *extra]


def launch_two(workdir, data_dir, num_steps, *extra, cluster):
  """Starts both processes: `cluster` 'env' (SLURM variables) or 'flags'."""
  if cluster == 'env':
    job_id = slurm_job_id()
    setups = [([], slurm_env(job_id, i)) for i in range(2)]
  else:
    flags = [f'--coordinator_address=localhost:{free_port()}', '--num_processes=2']
    setups = [([*flags, f'--process_id={i}'], clean_env()) for i in range(2)]
  return [
    subprocess.Popen(
      command(workdir, data_dir, num_steps, *extra) + args,
      cwd=runs.REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for args, env in setups
  ]


def finish(procs, timeout=300):
  """Both processes' logs once they end (killed after `timeout` seconds)."""
  deadline = time.time() + timeout
  try:
    logs = [p.communicate(timeout=max(1, deadline - time.time()))[1] for p in procs]
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    logs = [p.communicate()[1] for p in procs]
    raise AssertionError(
      f'Still running after {timeout} s:\n'
      + '\n-----\n'.join(log[-2500:] for log in logs)
    ) from None
  for p in procs:
    assert p.returncode == 0, '\n-----\n'.join(log[-2500:] for log in logs)
  return logs


def test_cluster_from_environment_matches_explicit_flags(data_dir, tmp_path):
  logs = finish(launch_two(tmp_path / 'env', data_dir, 10, cluster='env'))
  assert 'JAX process 1/2, 2 local / 4 global' in logs[1], logs[1][-2500:]
  finish(launch_two(tmp_path / 'flags', data_dir, 10, cluster='flags'))
  env, flags = tmp_path / 'env', tmp_path / 'flags'
  assert int(runs.restored(env).step) == int(runs.restored(flags).step) == 10
  for a, b in zip(
    runs.checkpoint_leaves(flags), runs.checkpoint_leaves(env), strict=True
  ):
    np.testing.assert_array_equal(a, b)
  metrics = runs.logged_metrics(env)
  assert metrics and max(step for step, _ in metrics) == 10
  assert metrics == runs.logged_metrics(flags)


def test_sigterm_to_a_cluster_from_environment_saves_one_agreed_step(
  data_dir, tmp_path
):
  """As multihost_test.py's preemption test, with the cluster from SLURM's
  variables: a SIGTERM to both processes saves one step they agree on."""
  num_steps = 150  # About 8 s of training on 2 cores.
  workdir = tmp_path / 'preempted'
  cadence = ('--config.checkpoint_every_steps=100', '--config.sample_every_steps=100')
  procs = launch_two(workdir, data_dir, num_steps, *cadence, cluster='env')
  first_grid = workdir / 'samples' / 'step_0000000.png'
  deadline = time.time() + 120
  while not first_grid.exists() and time.time() < deadline:
    time.sleep(0.05)
  time.sleep(2)
  for p in procs:  # Every worker of the job gets the signal.
    p.send_signal(signal.SIGTERM)
  logs = finish(procs)
  steps = [
    re.search(r'Preempted: saved a checkpoint at step (\d+)', log) for log in logs
  ]
  assert all(steps), logs[0][-2000:]
  (step,) = {int(m.group(1)) for m in steps}  # Both processes agree.
  assert 0 < step < num_steps
  assert int(runs.restored(workdir).step) == step


def test_bad_coordinator_flags_or_cluster_variables_are_one_line(data_dir, tmp_path):
  job_id = slurm_job_id()
  cases = {  # argv, environment, what the message must name.
    'partial flags': (
      ['--coordinator_address=localhost:1234'],
      clean_env(),
      'Give --num_processes and --process_id too',
    ),
    'process_id': (
      ['--coordinator_address=localhost:1234', '--num_processes=2']
      + ['--process_id=2'],
      clean_env(),
      '--process_id=2 must be in [0, 1]',
    ),
    'slurm variables': (
      [],
      slurm_env(job_id, process=2, num_processes=2),
      'JAX detected a slurm cluster but cannot join it',
    ),
  }
  procs = {
    name: subprocess.Popen(
      command(tmp_path / name, data_dir, 10) + argv,
      cwd=runs.REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for name, (argv, env, _) in cases.items()
  }
  for name, proc in procs.items():
    stderr = proc.communicate(timeout=120)[1]
    last = stderr.strip().splitlines()[-1]
    assert proc.returncode == 1, (name, stderr[-2500:])
    assert 'Traceback' not in stderr, (name, stderr[-2500:])
    assert last.startswith('Error: ') and cases[name][2] in last, (name, last)
    assert not (tmp_path / name).exists()  # Stopped before training began.
