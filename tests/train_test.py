"""The train step and the loop: correctness, replicas, determinism, resume."""

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import jax_utils
from runs import checkpoint_leaves, logged_metrics, small_config

from dcgan_jax import train
from dcgan_jax.core import manifest, rundir
from dcgan_jax.core import state as gan_state
from dcgan_jax.core import step as step_lib
from dcgan_jax.data import input_pipeline
from dcgan_jax.networks import models
from dcgan_jax.util import errors

# conftest.py's forced CPU devices (DCGAN_TEST_DEVICES), or an accelerator's.
NUM_DEVICES = jax.local_device_count()


def p_step(hyper):
  return jax.pmap(
    functools.partial(step_lib.train_step, hyper=hyper),
    axis_name='batch',
    in_axes=(0, 0, None),
  )


def real_batches(config, num_steps):
  images = input_pipeline.load_images(
    dataset='digits',
    image_size=config.image_size,
    num_channels=1,
    data_dir=config.data_dir,
  )
  it = input_pipeline.host_batches(
    images, seed=config.seed, global_batch_size=config.global_batch_size, prefetch=0
  )
  return [next(it) for _ in range(num_steps)]


def run_steps(config, batches, num_devices=NUM_DEVICES):
  hyper = step_lib.make_step_config(config)
  step_fn = p_step(hyper)
  state = jax_utils.replicate(
    gan_state.initial_state(config), devices=jax.local_devices()[:num_devices]
  )
  train_key = gan_state.split_root_key(jax.random.key(config.seed))[1]
  for batch in batches:
    state, step_metrics = step_fn(
      state, batch.reshape(num_devices, -1, *batch.shape[1:]), train_key
    )
  return state, step_metrics


def leaves_equal(a, b) -> bool:
  return all(
    np.array_equal(x, y)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


def test_the_chosen_device_count_is_in_effect():
  if jax.default_backend() != 'cpu':
    pytest.skip(f'runs on the {NUM_DEVICES} local {jax.default_backend()} devices')
  assert NUM_DEVICES == int(os.environ['DCGAN_TEST_DEVICES'])


def test_step_finite_losses_and_metrics(data_dir):
  config = small_config(data_dir)
  state, step_metrics = run_steps(config, real_batches(config, 3))
  summary = step_metrics.unreplicate().compute()
  assert set(summary) == {
    'd_loss',
    'g_loss',
    'd_real',
    'd_fake',
    'd_fake_after',
    'd_grad_norm',
    'g_grad_norm',
    'd_nonfinite',
    'g_nonfinite',
  }
  for name, value in summary.items():
    assert np.isfinite(value), name
  assert summary['d_nonfinite'] == summary['g_nonfinite'] == 0.0
  for name in ('d_real', 'd_fake', 'd_fake_after'):
    assert 0.0 < summary[name] < 1.0
  assert int(state.step[0]) == 3


@pytest.mark.skipif(
  NUM_DEVICES < 2, reason='n/a (1 device): replicas can only diverge on several'
)
@pytest.mark.parametrize('sync_batchnorm', [True, False])
def test_replicas_never_diverge(data_dir, sync_batchnorm):
  config = small_config(data_dir, sync_batchnorm=sync_batchnorm)
  state, _ = run_steps(config, real_batches(config, 4))
  host = jax.device_get(state)
  for leaf in jax.tree.leaves(host):
    for replica in range(1, NUM_DEVICES):
      np.testing.assert_array_equal(leaf[0], leaf[replica])


def test_d_update_leaves_g_unchanged(data_dir):
  config = small_config(data_dir)
  hyper = step_lib.make_step_config(config)
  state = jax_utils.replicate(gan_state.initial_state(config))
  batch = real_batches(config, 1)[0].reshape(NUM_DEVICES, -1, 16, 16, 1)

  def d_only(state, images):
    fake = jnp.tanh(images * 0.5)  # Any fake batch will do.
    keys = jax.random.split(jax.random.key(1), 3)
    noise = step_lib.Noise(z=None, dropout_keys=keys, mix=None)
    return step_lib.d_update(state, images, fake, noise, hyper=hyper)[0]

  new = jax.pmap(d_only, axis_name='batch')(state, batch)
  for name in ('g_params', 'g_batch_stats', 'g_opt_state', 'step'):
    assert leaves_equal(getattr(new, name), getattr(state, name)), name
  assert not leaves_equal(new.d_params, state.d_params)


@pytest.mark.parametrize('nonfinite', ['stop', 'skip'])
def test_a_non_finite_d_update_is_skipped_or_reported(data_dir, nonfinite):
  config = small_config(data_dir, nonfinite=nonfinite)
  batches = [input_pipeline.scale_images(b) for b in real_batches(config, 3)]
  batches[1][0, 0, 0, 0] = np.nan  # Step 2: one pixel, on device 0 only.
  hyper = step_lib.make_step_config(config)
  step_fn = p_step(hyper)
  train_key = gan_state.split_root_key(jax.random.key(config.seed))[1]
  state = jax_utils.replicate(gan_state.initial_state(config))
  states, step_metrics = [state], []
  for batch in batches:
    state, m = step_fn(
      state, batch.reshape(NUM_DEVICES, -1, *batch.shape[1:]), train_key
    )
    states.append(state)
    step_metrics.append(m.unreplicate())
  assert step_metrics[0].compute()['d_nonfinite'] == 0.0
  assert step_metrics[1].compute()['d_nonfinite'] == 1.0  # Every device agrees.
  host = jax.device_get(states[-1])
  for leaf in jax.tree.leaves(host):  # Replicas stay identical either way.
    np.testing.assert_array_equal(leaf[0], leaf[-1])
  if nonfinite == 'skip':
    assert step_metrics[1].compute()['g_nonfinite'] == 0.0
    for name in ('d_params', 'd_batch_stats', 'd_opt_state'):
      assert leaves_equal(getattr(states[2], name), getattr(states[1], name)), name
    assert not leaves_equal(states[2].g_params, states[1].g_params)
    assert not leaves_equal(states[3].d_params, states[2].d_params)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(host))
    assert int(host.step[0]) == 3
    # Logged over steps 2-3: the means of the applied updates, half skipped.
    summary = step_metrics[1].merge(step_metrics[2]).compute()
    assert summary['d_nonfinite'] == 0.5
    assert summary['d_loss'] == step_metrics[2].compute()['d_loss']
    assert all(np.isfinite(v) for v in summary.values())
  else:
    assert not np.isfinite(step_metrics[1].compute()['d_loss'])
    assert not all(np.isfinite(x).all() for x in jax.tree.leaves(host.d_params))


def test_skip_mode_is_bitwise_the_default_when_all_is_finite(data_dir):
  config = small_config(data_dir)
  batches = real_batches(config, 3)
  stop, _ = run_steps(config, batches)
  skip, _ = run_steps(small_config(data_dir, nonfinite='skip'), batches)
  assert leaves_equal(jax.device_get(stop), jax.device_get(skip))


def reference_step(config, state, images, train_key, tx):
  """The textbook DCGAN step on one device: two G forward passes, plain grads."""
  g, d = models.create_models(config.model, image_size=16, num_channels=1)
  step_key = jax.random.fold_in(train_key, state.step)
  z_key, _ = jax.random.split(step_key)
  z = models.sample_z(z_key, images.shape[0], config.model.z_dim, 'uniform')
  bce = optax.sigmoid_binary_cross_entropy

  def run_g(g_params):
    return g.apply(
      {'params': g_params, 'batch_stats': state.g_batch_stats},
      z,
      train=True,
      mutable=['batch_stats'],
    )

  def run_d(d_params, stats, x):
    return d.apply(
      {'params': d_params, 'batch_stats': stats}, x, train=True, mutable=['batch_stats']
    )

  fake, g_vars = run_g(state.g_params)

  def d_loss(d_params):
    real_logits, v = run_d(d_params, state.d_batch_stats, images)
    fake_logits, v = run_d(d_params, v['batch_stats'], fake)
    loss = bce(real_logits, jnp.ones_like(real_logits)).mean()
    return loss + bce(fake_logits, jnp.zeros_like(fake_logits)).mean(), v

  d_grads, d_vars = jax.grad(d_loss, has_aux=True)(state.d_params)
  updates, _ = tx.update(d_grads, tx.init(state.d_params), state.d_params)
  d_params = optax.apply_updates(state.d_params, updates)

  def g_loss(g_params):
    logits, _ = run_d(d_params, d_vars['batch_stats'], run_g(g_params)[0])
    return bce(logits, jnp.ones_like(logits)).mean()

  g_grads = jax.grad(g_loss)(state.g_params)
  updates, _ = tx.update(g_grads, tx.init(state.g_params), state.g_params)
  g_params = optax.apply_updates(state.g_params, updates)
  return g_params, g_vars['batch_stats'], d_params, d_vars['batch_stats']


@pytest.mark.parametrize('num_devices', sorted({1, NUM_DEVICES}))
def test_step_matches_textbook_reference(data_dir, num_devices):
  """The pmap-ed step (one G pass, VJP reuse, pmean) == the plain recipe.

  With SGD, so differences are those of the gradients: Adam's first step is
  lr * sign(grad), which turns round-off in near-zero gradients into
  lr-sized differences.
  """
  config = small_config(data_dir)
  sgd = optax.sgd(0.1)
  hyper = dataclasses.replace(step_lib.make_step_config(config), g_tx=sgd, d_tx=sgd)
  generator, discriminator = hyper.generator, hyper.discriminator
  state = gan_state.create_state(
    generator,
    discriminator,
    sgd,
    sgd,
    gan_state.split_root_key(jax.random.key(config.seed))[0],
    z_dim=config.model.z_dim,
    image_shape=(16, 16, 1),
  )
  images = real_batches(config, 1)[0]
  train_key = gan_state.split_root_key(jax.random.key(config.seed))[1]
  devices = jax.local_devices()[:num_devices]
  new, _ = p_step(hyper)(
    jax_utils.replicate(state, devices=devices),
    images.reshape(num_devices, -1, 16, 16, 1),
    train_key,
  )
  new = jax.device_get(gan_state.unreplicate(new))
  want = reference_step(config, state, images, train_key, sgd)
  got = (new.g_params, new.g_batch_stats, new.d_params, new.d_batch_stats)
  got_leaves = jax.tree_util.tree_leaves_with_path(got)
  want_leaves = jax.tree_util.tree_leaves_with_path(want)
  for (path, x), (_, y) in zip(got_leaves, want_leaves, strict=True):
    np.testing.assert_allclose(
      x, y, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path)
    )


def test_same_seed_same_state_and_resume_matches(data_dir, tmp_path):
  config = small_config(data_dir)
  train.train_and_evaluate(config, str(tmp_path / 'a'))
  train.train_and_evaluate(config, str(tmp_path / 'b'))
  a, b = checkpoint_leaves(tmp_path / 'a'), checkpoint_leaves(tmp_path / 'b')
  assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
  metrics_a, metrics_b = logged_metrics(tmp_path / 'a'), logged_metrics(tmp_path / 'b')
  # Logged at steps 2, 4, 6 and at the checkpoint at 3: 4 x 9 metrics.
  assert len(metrics_a) == 4 * 9
  assert metrics_a == metrics_b

  # Stop after 3 steps, then relaunch the same config on the same workdir.
  stopped = config.copy_and_resolve_references()
  stopped.num_train_steps = 3
  train.train_and_evaluate(stopped, str(tmp_path / 'c'))
  train.train_and_evaluate(config, str(tmp_path / 'c'))
  c = checkpoint_leaves(tmp_path / 'c')
  assert all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))

  other = config.copy_and_resolve_references()
  other.seed = 1
  train.train_and_evaluate(other, str(tmp_path / 'd'))
  d = checkpoint_leaves(tmp_path / 'd')
  assert not all(np.array_equal(x, y) for x, y in zip(a, d, strict=True))


def test_loop_writes_checkpoints_events_and_samples(data_dir, tmp_path):
  config = small_config(data_dir, keep_checkpoints=1)
  workdir = tmp_path / 'run'
  train.train_and_evaluate(config, str(workdir))
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['6']
  assert sorted(os.listdir(workdir / 'samples')) == [
    'step_0000000.png',
    'step_0000003.png',
    'step_0000006.png',
  ]
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(workdir))
  assert rundir.load_config(workdir).to_dict() == config.to_dict()
  record = manifest.load(str(workdir))
  assert record['seed'] == config.seed
  assert record['data']['num_examples'] == 1797
  assert record['data']['shape'] == [16, 16, 1]
  assert len(record['data']['fingerprint']) == 64
  (launch,) = record['launches']
  assert launch['device_count'] == NUM_DEVICES and launch['process_count'] == 1
  assert launch['backend'] == 'cpu' and launch['start_step'] == 0
  for package in ('python', 'jax', 'jaxlib', 'flax', 'optax', 'numpy'):
    assert launch['versions'][package], package
  assert set(launch['code']) == {'commit', 'dirty'}


def test_resume_refuses_other_data(data_dir, tmp_path):
  config = small_config(data_dir, num_train_steps=3)
  train.train_and_evaluate(config, str(tmp_path))
  record = manifest.load(str(tmp_path))
  record['data']['fingerprint'] = '0' * 64  # As if the data set had changed.
  manifest.write(str(tmp_path), record)
  longer = small_config(data_dir, num_train_steps=6)
  with pytest.raises(errors.ConfigChangeError, match='data set differs'):
    train.train_and_evaluate(longer, str(tmp_path))
  state = train.train_and_evaluate(longer, str(tmp_path), allow_config_change=True)
  assert int(state.step) == 6


@pytest.mark.parametrize(
  ('overrides', 'message'),
  [
    pytest.param(
      {'global_batch_size': NUM_DEVICES + 1},
      f'multiple of the {NUM_DEVICES} devices',
      marks=pytest.mark.skipif(
        NUM_DEVICES < 2, reason='n/a (1 device): every batch size divides over 1'
      ),
      id='indivisible_batch',
    ),
    ({'sample_batchnorm': 'ema'}, "'running' or 'batch'"),
    ({'log_every_steps': 0}, 'log_every_steps must be positive'),
    ({'real_label': 1.5}, 'real_label'),
    ({'num_train_steps': 0}, 'num_train_steps must be positive'),
    ({'model.arch': 'stylegan'}, 'dcgan'),
    ({'image_size': 48}, 'power of two'),
    ({'num_channels': 2}, 'num_channels'),
    ({'optimizer': 'rmsprop'}, "'adam' or 'sgd'"),
    ({'dataset': 'no_such_dataset', 'download': False}, 'Cannot load'),
    ({'dataset': 'folder:/no/such/dir'}, 'Cannot load'),
  ],
)
def test_bad_config_is_a_clear_error(data_dir, tmp_path, overrides, message):
  config = small_config(data_dir, **overrides)
  with pytest.raises(errors.ConfigError, match=message):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')


def test_unwritable_workdir_is_a_clear_error(data_dir, tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  with pytest.raises(errors.ConfigError, match='Cannot write to --workdir'):
    train.train_and_evaluate(small_config(data_dir), str(blocker / 'run'))


@pytest.mark.parametrize(
  'nonfinite, message',
  [
    ('stop', 'Non-finite .* between steps 4 and 4'),
    ('skip', 'Every G update between steps 4 and 4 was non-finite and skipped'),
  ],
)
def test_divergence_stops_before_saving_a_non_finite_state(
  data_dir, tmp_path, nonfinite, message
):
  train.train_and_evaluate(small_config(data_dir, num_train_steps=3), str(tmp_path))
  config = small_config(
    data_dir,
    g_learning_rate=1e30,
    d_learning_rate=1e30,
    checkpoint_every_steps=1,
    log_every_steps=100,
    nonfinite=nonfinite,
  )
  with pytest.raises(FloatingPointError, match=message) as error:
    train.train_and_evaluate(config, str(tmp_path), allow_config_change=True)
  assert 'the last good checkpoint is step 3' in str(error.value)
  saved = rundir.restore_latest(str(tmp_path), config)
  assert int(saved.step) == 3
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(saved))


def test_corrupt_latest_checkpoint_names_it_and_the_way_back(data_dir, tmp_path):
  config = small_config(data_dir)
  train.train_and_evaluate(config, str(tmp_path / 'ok'))
  workdir = tmp_path / 'corrupt'
  train.train_and_evaluate(config, str(workdir))
  latest = workdir / 'checkpoints' / '6'
  for root, _, files in os.walk(latest / 'default'):
    for name in files:
      if name not in ('_METADATA', 'commit_success.txt'):
        with open(os.path.join(root, name), 'wb') as f:
          f.write(b'\x00garbage')
  with pytest.raises(errors.CheckpointError) as error:
    train.train_and_evaluate(config, str(workdir))
  message = str(error.value)
  print(message)
  assert str(latest) in message and 'resume from step 3' in message
  os.rename(latest, f'{latest}.unreadable')  # The advice, followed.
  train.train_and_evaluate(config, str(workdir))
  a, b = checkpoint_leaves(tmp_path / 'ok'), checkpoint_leaves(workdir)
  assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
