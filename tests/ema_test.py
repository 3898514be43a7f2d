"""G's exponential moving average: its arithmetic, resume, and the tools."""

import ast
import functools
import json
import os

import jax
import numpy as np
import pytest
from flax import jax_utils
from runs import checkpoint_leaves, restored, small_config

from dcgan_jax import export, sample, train
from dcgan_jax.core import rundir
from dcgan_jax.core import state as gan_state
from dcgan_jax.core import step as step_lib
from dcgan_jax.data import input_pipeline
from dcgan_jax.evaluation import evaluator

NUM_DEVICES = jax.local_device_count()  # conftest.py's (or the chips').


def test_ema_copies_g_then_averages(data_dir):
  """ema_start_step=2: a copy of G after steps 1 and 2, then
  ema_3 = d ema_2 + (1 - d) G_3 (parameters and BatchNorm statistics)."""
  decay = 0.75
  config = small_config(data_dir, ema_decay=decay, ema_start_step=2)
  images = input_pipeline.load_images(
    dataset='digits', image_size=16, num_channels=1, data_dir=data_dir
  )
  batches = input_pipeline.host_batches(
    images, seed=0, global_batch_size=config.global_batch_size, prefetch=0
  )
  p_step = jax.pmap(
    functools.partial(step_lib.train_step, hyper=step_lib.make_step_config(config)),
    axis_name='batch',
    in_axes=(0, 0, None),
  )
  train_key = gan_state.split_root_key(jax.random.key(config.seed))[1]
  state = jax_utils.replicate(gan_state.initial_state(config))
  host = [jax.device_get(gan_state.unreplicate(state))]
  for _ in range(3):
    batch = input_pipeline.scale_images(next(batches))
    state, _ = p_step(state, batch.reshape(NUM_DEVICES, -1, 16, 16, 1), train_key)
    host.append(jax.device_get(gan_state.unreplicate(state)))
  for s in host[:3]:  # Steps 0, 1, 2: a copy of G.
    for e, g in zip(
      jax.tree.leaves(s.g_ema), jax.tree.leaves(s.g_variables), strict=True
    ):
      np.testing.assert_array_equal(e, g)
  moved = False
  for e, e_before, g in zip(
    jax.tree.leaves(host[3].g_ema),
    jax.tree.leaves(host[2].g_ema),
    jax.tree.leaves(host[3].g_variables),
    strict=True,
  ):
    np.testing.assert_allclose(e, decay * e_before + (1 - decay) * g, rtol=1e-6)
    moved |= not np.array_equal(e, g)
  assert moved


def test_ema_run_resumes_bit_exact_and_old_layout_is_kept(data_dir, tmp_path):
  config = small_config(data_dir, ema_decay=0.9)
  train.train_and_evaluate(config, str(tmp_path / 'whole'))
  stopped = config.copy_and_resolve_references()
  stopped.num_train_steps = 3
  train.train_and_evaluate(stopped, str(tmp_path / 'resumed'))
  train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  whole = restored(tmp_path / 'whole')
  assert whole.g_ema is not None and int(whole.step) == 6
  for x, y in zip(
    checkpoint_leaves(tmp_path / 'whole'),
    checkpoint_leaves(tmp_path / 'resumed'),
    strict=True,
  ):
    np.testing.assert_array_equal(x, y)
  # A run without EMA saves exactly the fields it saved before EMA existed.
  plain = small_config(data_dir, num_train_steps=3)
  train.train_and_evaluate(plain, str(tmp_path / 'plain'))
  assert _saved_fields(tmp_path / 'whole', 6) == {*_FIELDS, 'g_ema'}
  assert _saved_fields(tmp_path / 'plain', 3) == _FIELDS


_FIELDS = {
  'step',
  *(f'{net}_{part}' for net in 'gd' for part in ('params', 'batch_stats', 'opt_state')),
}


def _saved_fields(workdir, step) -> set[str]:
  """The top-level names of the tree in Orbax's metadata of a checkpoint."""
  with open(workdir / 'checkpoints' / str(step) / 'default' / '_METADATA') as f:
    keys = json.load(f)['tree_metadata']
  return {ast.literal_eval(key)[0] for key in keys}


@pytest.fixture(scope='module')
def ema_workdir(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('ema') / 'run'
  config = small_config(data_dir, ema_decay=0.5, num_train_steps=4)
  train.train_and_evaluate(config, str(workdir))
  return str(workdir)


def test_tools_use_the_ema_unless_told_raw(ema_workdir, tiny_digits_workdir, tmp_path):
  auto = sample.sample_from_workdir(ema_workdir, 8)
  ema = sample.sample_from_workdir(ema_workdir, 8, generator='ema')
  raw = sample.sample_from_workdir(ema_workdir, 8, generator='raw')
  np.testing.assert_array_equal(auto, ema)
  assert not np.array_equal(ema, raw)
  assert os.path.exists(os.path.join(ema_workdir, 'samples', 'ema_step_0000004.png'))
  # A run without a moving average: auto is G; asking for the EMA is an error.
  np.testing.assert_array_equal(
    sample.sample_from_workdir(tiny_digits_workdir, 8),
    sample.sample_from_workdir(tiny_digits_workdir, 8, generator='raw'),
  )
  with pytest.raises(ValueError, match='keeps no moving average') as e:
    sample.sample_from_workdir(tiny_digits_workdir, 8, generator='ema')
  assert '\n' not in str(e.value) and '--generator=raw' in str(e.value)

  output = export.export_workdir(
    ema_workdir, str(tmp_path / 'export'), platforms=['cpu'], conv_impl='phases'
  )
  with open(os.path.join(output, export.SIGNATURE_FILE)) as f:
    assert json.load(f)['generator'] == 'ema'


def test_raw_reports_of_an_ema_run_have_their_own_name(ema_workdir):
  state = rundir.load_run(ema_workdir).state
  report = {'step': 4, 'generator': 'raw', 'run_has_ema': state.g_ema is not None}
  assert evaluator.report_path(ema_workdir, report).endswith('report_step_4_raw.json')
  report['generator'] = 'ema'
  assert evaluator.report_path(ema_workdir, report).endswith('report_step_4.json')
