"""Losses, update order, spectral norm, weight decay, learning-rate schedule
and initialisation against hand computations on tiny cases."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import jax_utils
from runs import small_config

from configs import default as default_config
from dcgan_jax.core import losses, manifest
from dcgan_jax.core import state as gan_state
from dcgan_jax.core import step as step_lib
from dcgan_jax.data import input_pipeline
from dcgan_jax.networks import models

NUM_DEVICES = jax.local_device_count()  # conftest.py's (or the chips').
REAL = [2.0, -1.0, 0.5]  # D's outputs for three real images ...
FAKE = [0.5, -3.0, 1.5]  # ... and for three generated ones.


def _softplus(x: float) -> float:
  return math.log1p(math.exp(x))


def _bce(logit: float, target: float) -> float:
  """-t log s(x) - (1 - t) log(1 - s(x)) = softplus(x) - t x."""
  return _softplus(logit) - target * logit


def _mean(values) -> float:
  return sum(values) / len(values)


HAND = {  # loss: (D's loss with real_label 0.9 for bce, G's loss).
  'bce': (
    _mean([_bce(r, 0.9) for r in REAL]) + _mean([_bce(f, 0.0) for f in FAKE]),
    _mean([_bce(f, 1.0) for f in FAKE]),
  ),
  'hinge': (
    _mean([max(0.0, 1 - r) for r in REAL]) + _mean([max(0.0, 1 + f) for f in FAKE]),
    -_mean(FAKE),
  ),
  'least_squares': (
    0.5 * (_mean([(r - 1) ** 2 for r in REAL]) + _mean([f**2 for f in FAKE])),
    0.5 * _mean([(f - 1) ** 2 for f in FAKE]),
  ),
  'wgan_gp': (_mean(FAKE) - _mean(REAL), -_mean(FAKE)),
}


@pytest.mark.parametrize('loss', losses.LOSSES)
def test_losses_match_their_formulas(loss):
  real, fake = jnp.array(REAL), jnp.array(FAKE)
  label = 0.9 if loss == 'bce' else 1.0
  d_want, g_want = HAND[loss]
  assert float(losses.d_loss(loss, real, fake, real_label=label)) == pytest.approx(
    d_want, rel=1e-6
  )
  assert float(losses.g_loss(loss, fake)) == pytest.approx(g_want, rel=1e-6)


def test_gradient_penalty_matches_its_formula():
  """critic(x) = sum c x^2 per example: its gradient at x_hat is 2 c x_hat."""
  rng = np.random.default_rng(0)
  real = rng.uniform(-1, 1, (3, 2, 2, 1)).astype(np.float32)
  fake = rng.uniform(-1, 1, (3, 2, 2, 1)).astype(np.float32)
  mix = np.array([0.0, 0.25, 1.0], np.float32)
  c = 0.7

  def critic(x):
    return c * jnp.sum(x**2, axis=(1, 2, 3))

  want = 0.0
  for i in range(3):
    x_hat = mix[i] * real[i] + (1 - mix[i]) * fake[i]
    norm = math.sqrt(sum(float(v) ** 2 for v in (2 * c * x_hat).ravel()))
    want += (norm - 1) ** 2 / 3
  got = losses.gradient_penalty(critic, jnp.array(real), jnp.array(fake), mix)
  assert float(got) == pytest.approx(want, rel=1e-5)
  # A linear critic of unit gradient norm is not penalised.
  unit = np.full((2, 2, 1), 0.5, np.float32)  # Norm sqrt(4 * 0.25) = 1.

  def linear(x):
    return jnp.sum(x * unit, axis=(1, 2, 3))

  assert float(losses.gradient_penalty(linear, real, fake, mix)) == pytest.approx(
    0.0, abs=1e-6
  )


def _batch(config):
  images = input_pipeline.load_images(
    dataset='digits', image_size=16, num_channels=1, data_dir=config.data_dir
  )
  it = input_pipeline.host_batches(
    images, seed=0, global_batch_size=config.global_batch_size, prefetch=0
  )
  return input_pipeline.scale_images(next(it))


def _reference_step(config, state, images, train_key, lr):
  """One step of `config.loss` / `config.update_order` written out on one
  device with the formulas of HAND, plain SGD and two passes of G."""
  g, d = models.create_models(config.model, image_size=16, num_channels=1)
  step_key = jax.random.fold_in(train_key, 0)
  z = models.sample_z(
    jax.random.split(step_key)[0], len(images), config.model.z_dim, 'uniform'
  )
  mix = jax.random.uniform(jax.random.fold_in(step_key, 1), (len(images),))
  loss = config.loss

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

  def d_objective(r, f):
    if loss == 'bce':
      return jnp.mean(jax.nn.softplus(r) - r) + jnp.mean(jax.nn.softplus(f))
    if loss == 'hinge':
      return jnp.mean(jnp.maximum(0, 1 - r)) + jnp.mean(jnp.maximum(0, 1 + f))
    if loss == 'least_squares':
      return 0.5 * (jnp.mean((r - 1) ** 2) + jnp.mean(f**2))
    return jnp.mean(f) - jnp.mean(r)

  def g_objective(f):
    if loss == 'bce':
      return jnp.mean(jax.nn.softplus(f) - f)
    if loss == 'least_squares':
      return 0.5 * jnp.mean((f - 1) ** 2)
    return -jnp.mean(f)

  fake, g_vars = run_g(state.g_params)

  def d_total(d_params):
    r, v = run_d(d_params, state.d_batch_stats, images)
    f, v = run_d(d_params, v['batch_stats'], fake)
    total = d_objective(r, f)
    if loss == 'wgan_gp':
      x_hat = mix[:, None, None, None] * images + (1 - mix[:, None, None, None]) * fake
      grads = jax.grad(lambda x: run_d(d_params, v['batch_stats'], x)[0].sum())(x_hat)
      norms = jnp.sqrt(jnp.sum(grads**2, axis=(1, 2, 3)))
      total += config.gp_weight * jnp.mean((norms - 1) ** 2)
    return total, v

  d_grads, d_vars = jax.grad(d_total, has_aux=True)(state.d_params)
  d_params = jax.tree.map(lambda p, g: p - lr * g, state.d_params, d_grads)
  # The tutorial's G update sees the D of before the update.
  d_for_g = state.d_params if config.update_order == 'simultaneous' else d_params

  def g_total(g_params):
    f, _ = run_d(d_for_g, d_vars['batch_stats'], run_g(g_params)[0])
    return g_objective(f)

  g_grads = jax.grad(g_total)(state.g_params)
  g_params = jax.tree.map(lambda p, g: p - lr * g, state.g_params, g_grads)
  return g_params, g_vars['batch_stats'], d_params, d_vars['batch_stats']


@pytest.mark.parametrize(
  ('loss', 'order'),
  [
    ('bce', 'simultaneous'),
    ('hinge', 'sequential'),
    ('least_squares', 'sequential'),
    ('wgan_gp', 'sequential'),
    ('wgan_gp', 'simultaneous'),
  ],
)
def test_pmap_step_matches_the_formulas(data_dir, loss, order):
  """The step on every local device (one G pass, VJPs, pmean) == the loss
  written out on one."""
  config = small_config(
    data_dir,
    loss=loss,
    update_order=order,
    **{'model.d_batchnorm': loss != 'wgan_gp'},
  )
  sgd = optax.sgd(0.1)
  hyper = dataclasses.replace(step_lib.make_step_config(config), g_tx=sgd, d_tx=sgd)
  state = gan_state.initial_state(config)
  images = _batch(config)
  train_key = gan_state.split_root_key(jax.random.key(config.seed))[1]
  p_step = jax.pmap(
    functools.partial(step_lib.train_step, hyper=hyper),
    axis_name='batch',
    in_axes=(0, 0, None),
  )
  new, _ = p_step(
    jax_utils.replicate(state),
    images.reshape(NUM_DEVICES, -1, *images.shape[1:]),
    train_key,
  )
  new = jax.device_get(gan_state.unreplicate(new))
  want = _reference_step(config, state, images, train_key, 0.1)
  got = (new.g_params, new.g_batch_stats, new.d_params, new.d_batch_stats)
  for (path, x), y in zip(
    jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True
  ):
    np.testing.assert_allclose(
      x, y, rtol=1e-4, atol=2e-6, err_msg=jax.tree_util.keystr(path)
    )
  for before, after in ((state.g_params, new.g_params), (state.d_params, new.d_params)):
    assert not all(
      np.array_equal(a, b)
      for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
    )


def test_spectral_norm_divides_d_kernels_by_their_top_singular_value():
  config = small_config(
    '', **{'model.d_spectral_norm': True, 'model.d_batchnorm': False}
  )
  plain_config = small_config('', **{'model.d_batchnorm': False})
  _, d = models.create_models(config.model, image_size=16, num_channels=1)
  _, plain = models.create_models(plain_config.model, image_size=16, num_channels=1)
  x = jax.random.uniform(jax.random.key(1), (4, 16, 16, 1), minval=-1, maxval=1)
  variables = d.init(jax.random.key(0), x[:1])
  assert jax.tree.structure(variables['params']) == jax.tree.structure(
    plain.init(jax.random.key(0), x[:1])['params']
  )  # The same parameters, by the same names.
  stats = variables['batch_stats']
  for _ in range(100):  # Power iteration to convergence.
    _, updated = d.apply(
      {'params': variables['params'], 'batch_stats': stats},
      x,
      train=True,
      mutable=['batch_stats'],
    )
    stats = updated['batch_stats']
  normalised = {}
  for name, layer in variables['params'].items():
    kernel = np.asarray(layer['kernel'])
    top = np.linalg.svd(kernel.reshape(-1, kernel.shape[-1]), compute_uv=False)[0]
    sigma = float(stats[f'{name}_sn'][f'{name}/kernel/sigma'])
    assert sigma == pytest.approx(top, rel=1e-3), name
    normalised[name] = {**layer, 'kernel': kernel / top}
  got = d.apply({'params': variables['params'], 'batch_stats': stats}, x)
  want = plain.apply({'params': normalised}, x)
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)


def _tx(**overrides):
  config = default_config.get_config()
  config.update(overrides)
  return gan_state.create_optimizers(config)[0]


def test_weight_decay_is_l2_added_to_the_gradient():
  p, g = np.array([1.0, -2.0, 0.0]), np.array([0.5, 0.5, -0.25])
  wd = 0.01
  sgd = _tx(optimizer='sgd', g_learning_rate=0.1, weight_decay=wd)
  updates, _ = sgd.update(g, sgd.init(p), p)
  np.testing.assert_allclose(p + updates, p - 0.1 * (g + wd * p), rtol=1e-7)
  # Adam's first step, -lr m_hat / (sqrt(v_hat) + eps) with m_hat = grad and
  # v_hat = grad^2 of the decayed gradient: for p = -10 the decay flips the
  # sign of the step.
  p, g = np.array([1.0, -10.0]), np.array([0.5, 0.05])
  adam = _tx(g_learning_rate=2e-4, weight_decay=wd, adam_eps=1e-7)
  updates, _ = adam.update(g, adam.init(p), p)
  decayed = g + wd * p
  np.testing.assert_allclose(
    updates, -2e-4 * decayed / (np.abs(decayed) + 1e-7), rtol=1e-5
  )
  assert updates[1] > 0


def test_linear_schedule_decays_to_zero_at_the_last_step():
  sgd = _tx(
    optimizer='sgd', g_learning_rate=0.1, lr_schedule='linear', num_train_steps=4
  )
  p, opt_state = np.zeros(1), sgd.init(np.zeros(1))
  steps = []
  for _ in range(5):
    updates, opt_state = sgd.update(np.ones(1), opt_state, p)
    p = p + updates
    steps.append(-float(updates[0]))
  np.testing.assert_allclose(steps, [0.1, 0.075, 0.05, 0.025, 0.0], rtol=1e-6)


def test_a_linear_schedule_makes_num_train_steps_shape_the_trajectory():
  old = default_config.get_config()
  new = default_config.get_config()
  new.num_train_steps = 2 * old.num_train_steps
  assert manifest.trajectory_changes(old, new) == []
  old.lr_schedule = new.lr_schedule = 'linear'
  assert manifest.trajectory_changes(old, new) == [
    f'num_train_steps: {old.num_train_steps} -> {new.num_train_steps}'
  ]


def test_a_config_from_before_the_new_keys_resumes_as_the_default():
  old = default_config.get_config()
  for key in manifest.INTRODUCED_KEYS:
    *parents, leaf = key.split('.')
    node = old
    for name in parents:
      node = node[name]
    del node[leaf]
  assert manifest.trajectory_changes(old, default_config.get_config()) == []


def test_glorot_uniform_init_as_keras():
  config = default_config.get_config()
  config.model.update(arch='tf_tutorial', init='glorot_uniform')
  g, _ = models.create_models(config.model, image_size=28, num_channels=1)
  variables = g.init(jax.random.key(0), jnp.zeros((1, 100)))
  kernel = np.asarray(variables['params']['project']['kernel'])  # 100 x 12544.
  limit = math.sqrt(6 / (100 + 7 * 7 * 256))
  assert np.abs(kernel).max() <= limit
  assert kernel.std() == pytest.approx(limit / math.sqrt(3), rel=0.01)
  assert np.all(np.asarray(variables['params']['project_bn']['scale']) == 1.0)
  normal = models.create_models(
    default_config.get_config().model, image_size=64, num_channels=3
  )[0].init(jax.random.key(0), jnp.zeros((1, 100)))
  assert np.asarray(normal['params']['project']['kernel']).std() == pytest.approx(
    0.02, rel=0.01
  )


def test_every_option_together_is_bit_reproducible(data_dir):
  config = small_config(
    data_dir,
    loss='hinge',
    weight_decay=1e-5,
    lr_schedule='linear',
    ema_decay=0.9,
    update_order='simultaneous',
    **{'model.d_spectral_norm': True, 'model.init': 'glorot_uniform'},
  )
  images = _batch(config).reshape(NUM_DEVICES, -1, 16, 16, 1)
  train_key = gan_state.split_root_key(jax.random.key(config.seed))[1]
  p_step = jax.pmap(
    functools.partial(step_lib.train_step, hyper=step_lib.make_step_config(config)),
    axis_name='batch',
    in_axes=(0, 0, None),
  )
  finals = []
  for _ in range(2):
    state = jax_utils.replicate(gan_state.initial_state(config))
    for _ in range(3):
      state, _ = p_step(state, images, train_key)
    finals.append(jax.device_get(state))
  for x, y in zip(*(jax.tree.leaves(f) for f in finals), strict=True):
    np.testing.assert_array_equal(x, y)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(finals[0]))
