"""Checkpoints are never lost to a resume, a failed launch or a failed save.

Each failure is one line (launch.py prints it as `Error: ...`) and leaves
every committed checkpoint file byte for byte as it was.
"""

import errno
import hashlib
import os
import shutil
import threading
import time

import numpy as np
import pytest
from orbax.checkpoint._src.checkpointers import async_checkpointer
from runs import checkpoint_leaves, small_config

from dcgan_jax import train
from dcgan_jax.core import rundir
from dcgan_jax.util import errors, figures

TMP = '.orbax-checkpoint-tmp'  # In the names of the directories of unfinished saves.


def checkpoint_files(workdir) -> dict[str, str]:
  """sha256 of every file under any checkpoints/ directory of `workdir`."""
  found = {}
  for root, _, names in os.walk(workdir):
    rel = os.path.relpath(root, workdir)
    if rundir.CHECKPOINT_DIR in rel.split(os.sep):
      for name in names:
        with open(os.path.join(root, name), 'rb') as f:
          found[os.path.join(rel, name)] = hashlib.sha256(f.read()).hexdigest()
  return found


def committed(files: dict[str, str]) -> dict[str, str]:
  return {path: h for path, h in files.items() if TMP not in path}


def ensemble_config(data_dir, steps):
  return small_config(
    data_dir,
    seed=3,
    num_seeds=2,
    num_train_steps=steps,
    checkpoint_every_steps=3,
    keep_checkpoints=1,
  )


@pytest.fixture(scope='module')
def ensemble_runs(data_dir, tmp_path_factory):
  """A 2-seed ensemble trained to step 6 with keep_checkpoints=1, and a copy
  of seed 4's checkpoints at step 3 (what a kill between the two GANs'
  saves of step 6 leaves of it)."""
  root = tmp_path_factory.mktemp('ensemble')
  train.train_and_evaluate(ensemble_config(data_dir, 3), str(root / 'run'))
  shutil.copytree(root / 'run/seed_4/checkpoints', root / 'seed_4_at_3')
  train.train_and_evaluate(ensemble_config(data_dir, 6), str(root / 'run'))
  return root


def test_members_without_a_common_step_are_refused_and_kept(
  data_dir, ensemble_runs, tmp_path
):
  workdir = tmp_path / 'run'
  shutil.copytree(ensemble_runs / 'run', workdir)
  ahead, behind = workdir / 'seed_3/checkpoints', workdir / 'seed_4/checkpoints'
  shutil.rmtree(behind)
  shutil.copytree(ensemble_runs / 'seed_4_at_3', behind)
  assert sorted(os.listdir(ahead)) == ['6'] and sorted(os.listdir(behind)) == ['3']
  before = checkpoint_files(workdir)
  with pytest.raises(errors.CheckpointError) as e:
    train.train_and_evaluate(ensemble_config(data_dir, 9), str(workdir))
  assert str(e.value) == (
    f'The 2 GANs share no checkpointed step, so they cannot resume together '
    f'({ahead} holds [6]; {behind} holds [3]); nothing was deleted. To keep the '
    f'training done, bring seed 4 to step 6 alone (this command '
    f'with --workdir={workdir}/seed_4 --config.seed=4 --config.num_seeds=1 '
    f'--config.num_train_steps=6), then relaunch; to start over, move {ahead} '
    f'{behind} aside.'
  )
  assert checkpoint_files(workdir) == before
  # The advice works: seed 4 alone to step 6, then the ensemble resumes there
  # and ends where the uninterrupted one did.
  train.train_and_evaluate(
    small_config(
      data_dir, seed=4, num_train_steps=6, checkpoint_every_steps=3, keep_checkpoints=1
    ),
    str(workdir / 'seed_4'),
  )
  train.train_and_evaluate(ensemble_config(data_dir, 6), str(workdir))
  for seed in (3, 4):
    a = checkpoint_leaves(workdir / f'seed_{seed}')
    b = checkpoint_leaves(ensemble_runs / f'run/seed_{seed}')
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_a_member_without_checkpoints_is_named(data_dir, ensemble_runs, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(ensemble_runs / 'run', workdir)
  shutil.rmtree(workdir / 'seed_4/checkpoints')
  before = checkpoint_files(workdir)
  with pytest.raises(errors.CheckpointError) as e:
    train.train_and_evaluate(ensemble_config(data_dir, 9), str(workdir))
  ahead, missing = workdir / 'seed_3/checkpoints', workdir / 'seed_4/checkpoints'
  assert str(e.value) == (
    f'The 2 GANs share no checkpointed step, so they cannot resume together '
    f'({ahead} holds [6]; {missing} holds none); nothing was deleted. To keep '
    f'the training done, bring seed 4 to step 6 alone (this '
    f'command with --workdir={workdir}/seed_4 --config.seed=4 --config.num_seeds=1 '
    f'--config.num_train_steps=6), then relaunch; to start over, move {ahead} aside.'
  )
  assert checkpoint_files(workdir) == before
  assert not os.path.exists(missing)


def test_relaunch_after_a_failure_before_the_first_checkpoint(data_dir, tmp_path):
  workdir = tmp_path / 'run'
  diverging = small_config(
    data_dir, g_learning_rate=1e30, d_learning_rate=1e30, log_every_steps=1
  )
  with pytest.raises(FloatingPointError) as e:
    train.train_and_evaluate(diverging, str(workdir))
  assert str(e.value) == (
    'Non-finite g_loss, d_fake_after, g_grad_norm between steps 1 and 1; no '
    'checkpoint was written yet; relaunching starts over (nothing later was '
    'saved). Lower the learning rates or check the data scaling, or set '
    '--config.nonfinite=skip to leave such updates out.'
  )
  assert os.path.exists(workdir / rundir.CONFIG_FILE)
  assert not os.path.exists(workdir / rundir.CHECKPOINT_DIR)
  # As an older version left it: an empty checkpoints/ and an unfinished save.
  os.makedirs(workdir / rundir.CHECKPOINT_DIR / f'3{TMP}-1')
  state = train.train_and_evaluate(small_config(data_dir), str(workdir))
  assert int(state.step) == 6
  assert sorted(os.listdir(workdir / rundir.CHECKPOINT_DIR)) == ['3', '6']
  assert rundir.load_config(str(workdir)).g_learning_rate == 2e-4


def test_a_failed_save_stops_the_run_at_once(data_dir, tmp_path, monkeypatch):
  workdir = tmp_path / 'run'
  train.train_and_evaluate(small_config(data_dir, num_train_steps=3), str(workdir))
  before = checkpoint_files(workdir)

  commit = async_checkpointer._on_commit_callback

  def full_disk_at_step_6(tmpdir, *args, **kwargs):
    if tmpdir.get_final().name == '6':
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return commit(tmpdir, *args, **kwargs)

  save_png = figures.save_png

  def after_the_saves(grid, path):
    # From step 7 on, each step waits until the background saves are done,
    # so that the loop cannot outrun them, however slow they are.
    if int(os.path.basename(path)[5:12]) >= 7:
      deadline = time.time() + 120
      while any(t.name == 'save_finalize' for t in threading.enumerate()):
        assert time.time() < deadline
        time.sleep(0.01)
    save_png(grid, path)

  monkeypatch.setattr(async_checkpointer, '_on_commit_callback', full_disk_at_step_6)
  monkeypatch.setattr(figures, 'save_png', after_the_saves)
  config = small_config(data_dir, num_train_steps=9, sample_every_steps=1)
  with pytest.raises(errors.CheckpointError) as e:
    train.train_and_evaluate(config, str(workdir))
  assert str(e.value) == (
    f'Saving checkpoint 6 to {workdir / "checkpoints"} failed (OSError: [Errno 28] '
    'No space left on device); the last good checkpoint is step 3, where a '
    'relaunch resumes.'
  )
  # Stopped at step 7, before the next save's step 9 (which used to report it).
  samples = sorted(os.listdir(workdir / rundir.SAMPLES_DIR))
  assert samples[-1] == 'step_0000007.png'
  after = checkpoint_files(workdir)
  assert committed(after) == before
  assert any(TMP in path for path in after)  # The failed save's files.

  monkeypatch.undo()
  state = train.train_and_evaluate(config, str(workdir))
  assert int(state.step) == 9
  # The relaunch removed the failed save's temporary directory.
  assert sorted(os.listdir(workdir / rundir.CHECKPOINT_DIR)) == ['3', '6', '9']
