"""`python -m dcgan_jax.reproduce`: a fresh run verifies; changes are named."""

import json
import os
import shutil
import subprocess
import sys

import jax
import runs
from runs import small_config

from dcgan_jax import reproduce, train

STEPS = {'num_train_steps': 6, 'checkpoint_every_steps': 3}


def _reproduce(workdir, *extra, devices=None):
  """The command in a process of its own; on this session's device count
  (conftest.py's DCGAN_TEST_DEVICES) unless `devices` says otherwise."""
  devices = devices or jax.local_device_count()
  env = dict(
    os.environ,
    TF_CPP_MIN_LOG_LEVEL='2',
    XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
  )
  return subprocess.run(
    [sys.executable, '-m', 'dcgan_jax.reproduce', f'--workdir={workdir}', *extra],
    cwd=runs.REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


def test_a_fresh_run_is_bit_exact(data_dir, tmp_path):
  workdir = tmp_path / 'run'
  train.train_and_evaluate(small_config(data_dir, **STEPS), str(workdir))
  assert reproduce.reproduce(str(workdir)) == 6
  out = _reproduce(workdir, '--steps=3', f'--output={tmp_path / "again"}')
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().splitlines()[-1] == 'bit-exact up to step 3'
  assert os.path.isdir(tmp_path / 'again' / 'checkpoints' / '3')  # Kept.


def test_a_changed_checkpoint_is_reported(data_dir, tmp_path):
  workdir, other = tmp_path / 'run', tmp_path / 'other'
  train.train_and_evaluate(small_config(data_dir, **STEPS), str(workdir))
  train.train_and_evaluate(small_config(data_dir, seed=1, **STEPS), str(other))
  shutil.rmtree(workdir / 'checkpoints' / '6')
  shutil.copytree(other / 'checkpoints' / '6', workdir / 'checkpoints' / '6')
  out = _reproduce(workdir)
  assert out.returncode == 1 and 'Traceback' not in out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith('Error: not reproduced: checkpoints differ from the digests')
  assert 'step 6: holds sha256' in last


def test_another_environment_is_named_with_the_first_differing_step(data_dir, tmp_path):
  """Trained on 1 device, reproduced on 4: in the default mode the sums of
  the gradients are taken in another order, so Adam's steps differ."""
  workdir = tmp_path / 'run'
  command = runs.launch_command(workdir, data_dir, **STEPS)
  env = dict(
    os.environ,
    TF_CPP_MIN_LOG_LEVEL='2',
    XLA_FLAGS='--xla_force_host_platform_device_count=1',
  )
  trained = subprocess.run(
    command, cwd=runs.REPO, env=env, capture_output=True, text=True, timeout=600
  )
  assert trained.returncode == 0, trained.stderr[-3000:]
  record = json.loads((workdir / 'manifest.json').read_text())
  record['launches'][0]['versions']['jax'] = '0.4.0'  # As if another JAX.
  (workdir / 'manifest.json').write_text(json.dumps(record))
  out = _reproduce(workdir, devices=4)
  assert out.returncode == 1 and 'Traceback' not in out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith('Error: not reproduced: first difference at step 3: ')
  assert 'max |difference|' in last
  assert 'device_count: 1 -> 4' in last
  assert "version of jax: '0.4.0' -> " in last
  assert 'xla_flags' in last


def test_an_invariant_run_reproduces_on_another_device_count(data_dir, tmp_path):
  """config.reduction_shards: trained on 1 device, reproduced on 2, bit-exact."""
  workdir = tmp_path / 'run'
  shards = {'reduction_shards': 2, 'sync_batchnorm': False}
  command = runs.launch_command(workdir, data_dir, **STEPS, **shards)
  env = dict(
    os.environ,
    TF_CPP_MIN_LOG_LEVEL='2',
    XLA_FLAGS='--xla_force_host_platform_device_count=1',
  )
  trained = subprocess.run(
    command, cwd=runs.REPO, env=env, capture_output=True, text=True, timeout=600
  )
  assert trained.returncode == 0, trained.stderr[-3000:]
  out = _reproduce(workdir, devices=2)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().splitlines()[-1] == 'bit-exact up to step 6'
