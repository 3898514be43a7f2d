"""Interrupted runs end where uninterrupted ones do: SIGKILL, SIGTERM, config.

Each run is a real `launch.py` subprocess on the 4 forced CPU devices. The
killed run is relaunched on its workdir until it finishes; its final
checkpoint must equal the uninterrupted run's bit for bit.
"""

import os
import random
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
import runs

from dcgan_jax.core import rundir

NUM_STEPS = 300


def launch_command(workdir, data_dir, *extra):
  steps = dict(
    num_train_steps=NUM_STEPS,
    log_every_steps=20,
    sample_every_steps=100,
    checkpoint_every_steps=10,
  )
  return [*runs.launch_command(workdir, data_dir, **steps), *extra]


def start(workdir, data_dir, *extra, compilation_cache=True):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  if not compilation_cache:  # See conftest.py.
    env.pop('JAX_COMPILATION_CACHE_DIR', None)
  return subprocess.Popen(
    launch_command(workdir, data_dir, *extra),
    cwd=runs.REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def run(workdir, data_dir, *extra, timeout=300, compilation_cache=True):
  proc = start(workdir, data_dir, *extra, compilation_cache=compilation_cache)
  out, err = proc.communicate(timeout=timeout)
  return proc.returncode, out + err


def final_leaves(workdir):
  state = runs.restored(workdir)
  assert int(state.step) == NUM_STEPS
  return jax.tree.leaves(state)


def assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x, y)


def wait_for(predicate, proc, timeout=120):
  deadline = time.time() + timeout
  while not predicate():
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert time.time() < deadline, 'timed out'
    time.sleep(0.005)


@pytest.fixture(scope='module')
def reference(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('reference')
  # Compiled afresh: the runs compared with it load the session's cached
  # programs, so each comparison also spans two independent compilations,
  # as a relaunch in a new environment would.
  code, log = run(workdir, data_dir, compilation_cache=False)
  assert code == 0, log[-3000:]
  return final_leaves(workdir)


def training_started(workdir):
  return lambda: os.path.exists(workdir / 'samples' / 'step_0000000.png')


def saving(workdir):
  def now():
    ckpt = workdir / 'checkpoints'
    return ckpt.exists() and any('tmp' in name for name in os.listdir(ckpt))

  return now


@pytest.mark.parametrize('moment', ['mid_step', 'mid_save'])
def test_sigkill_then_relaunch_matches_uninterrupted(
  reference, data_dir, tmp_path, moment
):
  workdir = tmp_path / 'killed'
  rng = random.Random(moment)
  kills = 0
  for _ in range(2):  # Two kills, at different moments of the run.
    proc = start(workdir, data_dir)
    wait_for(training_started(workdir), proc)
    if moment == 'mid_save':
      wait_for(saving(workdir), proc)
    else:
      time.sleep(rng.uniform(0.2, 1.5))
    if proc.poll() is None:
      proc.send_signal(signal.SIGKILL)
      kills += 1
    proc.communicate()
  assert kills, 'the run finished before it could be killed'
  code, log = run(workdir, data_dir)
  assert code == 0, log[-3000:]
  assert_same(final_leaves(workdir), reference)


def test_sigterm_saves_at_the_step_reached_and_resumes_exactly(
  reference, data_dir, tmp_path
):
  workdir = tmp_path / 'preempted'
  proc = start(workdir, data_dir)
  wait_for(training_started(workdir), proc)
  time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-3000:]
  assert 'Preempted: saved a checkpoint at step' in err
  saved = rundir.restore_latest(str(workdir), rundir.load_config(str(workdir)))
  step = int(saved.step)
  assert 0 < step < NUM_STEPS
  assert f'at step {step} of {NUM_STEPS}' in err
  code, log = run(workdir, data_dir)
  assert code == 0, log[-3000:]
  assert_same(final_leaves(workdir), reference)


def test_resume_refuses_a_changed_trajectory(reference, data_dir, tmp_path):
  workdir = tmp_path / 'changed'
  code, log = run(workdir, data_dir, '--config.num_train_steps=20')
  assert code == 0, log[-3000:]
  code, log = run(workdir, data_dir, '--config.g_learning_rate=1e-3')
  assert code != 0
  assert 'g_learning_rate: 0.0002 -> 0.001' in log
  assert '--allow_config_change' in log
  # A longer step budget is not a change of trajectory.
  code, log = run(workdir, data_dir)
  assert code == 0, log[-3000:]
  assert_same(final_leaves(workdir), reference)
