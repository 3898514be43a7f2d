"""num_seeds=K: K GANs in one program, each its own single-seed run."""

import os
import shutil

import jax
import numpy as np
import pytest
from runs import checkpoint_leaves, logged_metrics, small_config

from dcgan_jax import sample, train
from dcgan_jax.core import rundir
from dcgan_jax.util import errors


@pytest.fixture(scope='module')
def single_runs(data_dir, tmp_path_factory):
  """Uninterrupted single-seed runs with seeds 3 and 4."""
  root = tmp_path_factory.mktemp('single')
  for seed in (3, 4):
    train.train_and_evaluate(small_config(data_dir, seed=seed), str(root / str(seed)))
  return root


def assert_same_run(member_dir, single_dir):
  a, b = checkpoint_leaves(member_dir), checkpoint_leaves(single_dir)
  assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
  assert logged_metrics(member_dir) == logged_metrics(single_dir)
  assert sorted(os.listdir(member_dir / 'samples')) == sorted(
    os.listdir(single_dir / 'samples')
  )


def test_members_are_bitwise_their_single_seed_runs(data_dir, single_runs, tmp_path):
  config = small_config(data_dir, seed=3, num_seeds=2)
  states = train.train_and_evaluate(config, str(tmp_path))
  assert len(states) == 2 and all(int(s.step) == 6 for s in states)
  for seed in (3, 4):
    member = tmp_path / f'seed_{seed}'
    assert_same_run(member, single_runs / str(seed))
    assert rundir.load_config(str(member)).seed == seed
    # Each member is a workdir the sampling tool reads like any other.
    assert sample.sample_from_workdir(str(member), 4).shape == (4, 16, 16, 1)
  with pytest.raises(FileNotFoundError, match='seed_3'):
    sample.sample_from_workdir(str(tmp_path), 4)


def test_resume_and_a_save_interrupted_between_members(data_dir, single_runs, tmp_path):
  config = small_config(data_dir, seed=3, num_seeds=2, num_train_steps=3)
  train.train_and_evaluate(config, str(tmp_path))
  config.num_train_steps = 6  # Resume from 3 ...
  train.train_and_evaluate(config, str(tmp_path))
  # ... then as if killed after seed 3 saved step 6 and before seed 4 did.
  shutil.rmtree(tmp_path / 'seed_4' / 'checkpoints' / '6')
  ahead = tmp_path / 'seed_3' / 'checkpoints' / '6'
  aside = tmp_path / 'seed_3' / 'set_aside_step_6'
  with pytest.raises(errors.CheckpointError) as e:
    train.train_and_evaluate(config, str(tmp_path))
  assert str(e.value) == (
    f'The 2 GANs last saved together at step 3, but {ahead} went further (a '
    'kill between their saves); nothing was deleted. To resume all of them '
    'from step 3, which writes those checkpoints again bit for bit, move them '
    f'aside ({ahead} to {aside}) and relaunch.'
  )
  assert ahead.is_dir()  # Refused, not deleted.
  ahead.rename(aside)
  train.train_and_evaluate(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path / 'seed_3' / 'checkpoints')) == ['3', '6']
  for seed in (3, 4):
    a = checkpoint_leaves(tmp_path / f'seed_{seed}')
    b = checkpoint_leaves(single_runs / str(seed))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_vmap_ensemble_matches_within_round_off(data_dir, tmp_path):
  unrolled = train.train_and_evaluate(
    small_config(data_dir, num_seeds=2, num_train_steps=2), str(tmp_path / 'u')
  )
  vmapped = train.train_and_evaluate(
    small_config(data_dir, num_seeds=2, num_train_steps=2, ensemble='vmap'),
    str(tmp_path / 'v'),
  )
  for a, b in zip(unrolled, vmapped, strict=True):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
      np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-4)


def test_bad_ensemble_configs(data_dir, tmp_path):
  for overrides, message in (
    ({'num_seeds': 0}, 'num_seeds must be >= 1'),
    ({'ensemble': 'pmap'}, "ensemble must be 'unroll' or 'vmap'"),
  ):
    with pytest.raises(errors.ConfigError, match=message):
      train.train_and_evaluate(small_config(data_dir, **overrides), str(tmp_path))
