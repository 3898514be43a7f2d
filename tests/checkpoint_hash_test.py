"""manifest.json records each checkpoint's array digest; resuming checks it."""

import json
import shutil

import numpy as np
import pytest
from runs import restored, small_config

from dcgan_jax import train
from dcgan_jax.core import manifest, rundir
from dcgan_jax.util import errors


def _recorded(workdir) -> dict[str, dict]:
  with open(workdir / 'manifest.json') as f:
    return json.load(f)['checkpoints']


def test_digest_is_of_the_numbers_only():
  tree = {'b': np.arange(6, dtype=np.float32).reshape(2, 3), 'a': np.int32(7)}
  same = {'a': np.int32(7), 'b': np.asfortranarray(tree['b'])}
  assert manifest.state_digest(tree) == manifest.state_digest(same)
  changed = {'a': np.int32(7), 'b': tree['b'].copy()}
  changed['b'][1, 2] = np.nextafter(changed['b'][1, 2], np.float32(10))  # One ulp.
  assert manifest.state_digest(tree) != manifest.state_digest(changed)
  other_dtype = {'a': np.int32(7), 'b': tree['b'].astype(np.float64)}
  assert manifest.state_digest(tree) != manifest.state_digest(other_dtype)
  reshaped = {'a': np.int32(7), 'b': tree['b'].reshape(3, 2)}
  assert manifest.state_digest(tree) != manifest.state_digest(reshaped)


def test_every_committed_checkpoint_is_recorded_and_checked(data_dir, tmp_path):
  config = small_config(data_dir, keep_checkpoints=1)
  train.train_and_evaluate(config, str(tmp_path / 'a'))
  recorded = _recorded(tmp_path / 'a')
  assert sorted(recorded, key=int) == ['3', '6']  # Kept or not: the history.
  state = restored(tmp_path / 'a')
  want = manifest.state_digest(rundir.checkpoint_tree(state))
  assert recorded['6']['sha256'] == want

  # The same run again records the same digests: they are of the numbers.
  train.train_and_evaluate(config, str(tmp_path / 'b'))
  assert _recorded(tmp_path / 'b') == recorded

  # A checkpoint of another run put in place of step 3 is found on resume.
  stopped = config.copy_and_resolve_references()
  stopped.num_train_steps = 3
  train.train_and_evaluate(stopped, str(tmp_path / 'c'))
  other = stopped.copy_and_resolve_references()
  other.seed = 1
  train.train_and_evaluate(other, str(tmp_path / 'd'))
  shutil.rmtree(tmp_path / 'c' / 'checkpoints' / '3')
  shutil.copytree(
    tmp_path / 'd' / 'checkpoints' / '3', tmp_path / 'c' / 'checkpoints' / '3'
  )
  with pytest.raises(errors.CheckpointError, match='does not hold the arrays') as e:
    train.train_and_evaluate(config, str(tmp_path / 'c'))
  assert '\n' not in str(e.value) and 'checkpoints/3.changed' in str(e.value)


def test_a_digest_missing_from_the_manifest_is_recorded_on_resume(data_dir, tmp_path):
  config = small_config(data_dir)
  stopped = config.copy_and_resolve_references()
  stopped.num_train_steps = 3
  train.train_and_evaluate(stopped, str(tmp_path))
  record = json.loads((tmp_path / 'manifest.json').read_text())
  digest = record.pop('checkpoints')['3']['sha256']
  (tmp_path / 'manifest.json').write_text(json.dumps(record))  # As if killed.
  train.train_and_evaluate(config, str(tmp_path))
  recorded = _recorded(tmp_path)
  assert recorded['3']['sha256'] == digest and '6' in recorded
