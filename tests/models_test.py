"""Tests for dcgan_jax.networks.models: shapes, pinned sizes, BatchNorm, init, errors."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from dcgan_jax.networks import models

Z_DIM = 100


def _model_config(**overrides):
  """The default model config with `overrides` applied."""
  model_config = default.get_config().model
  model_config.update(overrides)
  return model_config


def _create(image_size, num_channels, bn_axis_name=None, **overrides):
  return models.create_models(
    _model_config(**overrides),
    image_size=image_size,
    num_channels=num_channels,
    bn_axis_name=bn_axis_name,
  )


def _inputs(image_size, num_channels, batch=2):
  z = models.sample_z(jax.random.key(0), batch, Z_DIM, 'uniform')
  x = jax.random.uniform(
    jax.random.key(1), (batch, image_size, image_size, num_channels), minval=-1
  )
  return z, x


def _init_fn(g, d, z, x):
  """Initialises both networks the way the trainer does."""
  gv = g.init(jax.random.key(2), z, train=False)
  dv = d.init(
    {'params': jax.random.key(3), 'dropout': jax.random.key(4)}, x, train=False
  )
  return gv, dv


def _init(g, d, z, x):
  """Real variables (one jit: compiling the RNG op by op is slow on CPU)."""
  return jax.jit(functools.partial(_init_fn, g, d))(z, x)


def _abstract_init(g, d, z, x):
  """Variable shapes only: traces init without running or compiling it."""
  return jax.eval_shape(functools.partial(_init_fn, g, d), z, x)


def _fake_init(g, d, z, x, std=0.05):
  """Random variables of the right shapes, drawn with numpy.

  For tests that need some parameters but not init's: compiling init's RNG is
  the slowest part of these tests on CPU.
  """
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    if path[-1].key in ('scale', 'var'):
      return np.ones(leaf.shape, leaf.dtype)
    return (std * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

  abstract = _abstract_init(g, d, z, x)
  return jax.tree_util.tree_map_with_path(fill, abstract)


def _apply(g, d, gv, dv, z, x, train):
  """Applies G and D with the trainer's calling convention."""
  mutable = ['batch_stats'] if train else False
  rngs = {'dropout': jax.random.key(5)}
  images = g.apply(gv, z, train=train, mutable=mutable)
  logits = d.apply(dv, x, train=train, rngs=rngs, mutable=mutable)
  if train:
    (images, _), (logits, _) = images, logits
  return images, logits


def _apply_both(g, d, gv, dv, z, x):
  """(eval outputs, train outputs), traced as one function."""
  return tuple(_apply(g, d, gv, dv, z, x, train) for train in (False, True))


# ---------------------------------------------------------------- shapes ---

DCGAN_GRID = list(
  itertools.product((16, 32, 64, 128), (1, 3), ('transpose', 'resize_conv'), (4, 5))
)


@pytest.mark.parametrize('size,channels,upsample,kernel', DCGAN_GRID)
def test_dcgan_shapes(size, channels, upsample, kernel):
  g, d = _create(
    size, channels, g_width=32, d_width=4, upsample=upsample, kernel_size=kernel
  )
  z, x = _inputs(size, channels)
  gv, dv = _abstract_init(g, d, z, x)
  outputs = jax.eval_shape(functools.partial(_apply_both, g, d), gv, dv, z, x)
  for images, logits in outputs:
    assert images.shape == (2, size, size, channels)
    assert images.dtype == jnp.float32
    assert logits.shape == (2,)
    assert logits.dtype == jnp.float32


# name: (image_size, num_channels, config overrides); small widths.
SMALL = {
  'dcgan_transpose': (32, 3, dict(g_width=16, d_width=4, kernel_size=4)),
  'dcgan_nearest': (16, 1, dict(g_width=8, d_width=4, upsample='resize_conv')),
  'dcgan_bilinear': (
    16,
    3,
    dict(g_width=8, d_width=4, upsample='resize_conv', resize_method='bilinear'),
  ),
  'dcgan_no_bn': (
    16,
    1,
    dict(g_width=8, d_width=4, g_batchnorm=False, d_batchnorm=False),
  ),
  'tf_tutorial': (28, 3, dict(arch='tf_tutorial')),
  'conv28': (28, 1, dict(arch='conv28')),
  'mlp': (28, 1, dict(arch='mlp', mlp_hidden=16)),
  'mlp_odd_size': (10, 3, dict(arch='mlp', mlp_hidden=16)),
}


@pytest.mark.parametrize('name', sorted(SMALL))
def test_real_outputs(name):
  """Runs every arch for real, in eval and train mode: shapes, range, dtype."""
  size, channels, overrides = SMALL[name]
  g, d = _create(size, channels, **overrides)
  z, x = _inputs(size, channels)
  gv, dv = _fake_init(g, d, z, x)
  for images, logits in jax.jit(functools.partial(_apply_both, g, d))(gv, dv, z, x):
    assert images.shape == (2, size, size, channels)
    assert logits.shape == (2,) and logits.dtype == jnp.float32
    assert np.all(np.abs(images) <= 1.0)
    assert np.all(np.isfinite(logits))


# ------------------------------------------------------------ param counts ---

# Trainable parameters (Flax 'params': kernels, biases, BN scale and shift;
# BN running statistics live in 'batch_stats' and are not counted). z_dim=100.
PINNED = {
  # Paper, 64x64x3, g_width 1024, d_width 128, 5x5 kernels. By hand:
  # G: project 100*4*4*1024 = 1,638,400 (no bias, BN follows); transposed
  #    convs 25*1024*512 = 13,107,200, 25*512*256 = 3,276,800,
  #    25*256*128 = 819,200; output 25*128*3 + 3 = 9,603; BN scale+shift on
  #    project (1024), up_0 (512), up_1 (256), up_2 (128): 2*1920 = 3,840.
  #    Total 18,855,043.
  # D: 25*3*128 + 128 = 9,728; 25*128*256 = 819,200; 25*256*512 = 3,276,800;
  #    25*512*1024 = 13,107,200; BN 2*(256+512+1024) = 3,584; logits
  #    4*4*1024 + 1 = 16,385. Total 17,232,897.
  'dcgan_paper': (64, 3, dict(), 18_855_043, 17_232_897),
  # Same kernel shapes with resize + stride-1 conv, so the same counts.
  'dcgan_paper_resize_conv': (
    64,
    3,
    dict(upsample='resize_conv'),
    18_855_043,
    17_232_897,
  ),
  # G: 100*16*256 = 409,600; 16*256*128 = 524,288; 16*128*64 = 131,072;
  #    16*64*1 + 1 = 1,025; BN 2*(256+128+64) = 896. Total 1,066,881.
  # D: 16*1*64 + 64 = 1,088; 16*64*128 = 131,072; 16*128*256 = 524,288;
  #    BN 2*(128+256) = 768; 4*4*256 + 1 = 4,097. Total 661,313.
  'dcgan_32x32x1': (
    32,
    1,
    dict(g_width=256, d_width=64, kernel_size=4),
    1_066_881,
    661_313,
  ),
  # TF tutorial. Keras reports G = 2,330,944 params, which includes each BN
  # layer's moving mean and variance (non-trainable: 2*(12544+128+64) =
  # 25,472). Trainable: Dense 100*12544 = 1,254,400; BN 2*12544 = 25,088;
  # 25*256*128 = 819,200; BN 256; 25*128*64 = 204,800; BN 128; 25*64*1 =
  # 1,600. Total 2,305,472 = 2,330,944 - 25,472.
  # D (Keras: 212,865): 25*64 + 64 = 1,664; 25*64*128 + 128 = 204,928;
  # 7*7*128 + 1 = 6,273.
  'tf_tutorial': (28, 1, dict(arch='tf_tutorial'), 2_305_472, 212_865),
  # G: 49*100*256 = 1,254,400; BN 512; 25*256*128 = 819,200; BN 256;
  #    25*128 + 1 = 3,201. D: 25*128 + 128 = 3,328; 25*128*256 = 819,200;
  #    BN 512; 49*256 + 1 = 12,545.
  'conv28': (28, 1, dict(arch='conv28'), 2_077_569, 835_585),
  # G: 100*128 + 128 = 12,928; 128*784 + 784 = 101,136.
  # D: 784*128 + 128 = 100,480; 128 + 1 = 129.
  'mlp': (28, 1, dict(arch='mlp'), 114_064, 100_609),
}


@pytest.mark.parametrize('name', sorted(PINNED))
def test_pinned_param_counts(name):
  size, channels, overrides, g_count, d_count = PINNED[name]
  g, d = _create(size, channels, **overrides)
  gv, dv = _abstract_init(g, d, *_inputs(size, channels))
  assert models.count_params(gv['params']) == g_count
  assert models.count_params(dv['params']) == d_count


def test_count_params_on_arrays():
  params = {'a': jnp.zeros((3, 4)), 'b': {'c': jnp.zeros(5)}}
  assert models.count_params(params) == 17
  assert models.count_params(jax.eval_shape(lambda: params)) == 17


# --------------------------------------------------------------- BatchNorm ---


def _variables(size, channels, **overrides):
  g, d = _create(size, channels, **overrides)
  return _abstract_init(g, d, *_inputs(size, channels))


def test_dcgan_batchnorm_placement():
  gv, dv = _variables(64, 3, g_width=16, d_width=4)
  # G: BN after the projection and every hidden upsampling, not on 'out'.
  assert set(gv['batch_stats']) == {'project_bn', 'up_0_bn', 'up_1_bn', 'up_2_bn'}
  assert set(gv['params']) == {
    'project', 'project_bn', 'up_0', 'up_0_bn', 'up_1', 'up_1_bn', 'up_2',
    'up_2_bn', 'out',
  }  # fmt: skip
  assert 'bias' in gv['params']['out']
  for name in ('project', 'up_0', 'up_1', 'up_2'):
    assert 'bias' not in gv['params'][name]
  # D: no BN on the input conv (which keeps its bias); BN on all others.
  assert set(dv['batch_stats']) == {'conv_1_bn', 'conv_2_bn', 'conv_3_bn'}
  assert 'bias' in dv['params']['conv_0']
  for i in (1, 2, 3):
    assert 'bias' not in dv['params'][f'conv_{i}']


@pytest.mark.parametrize('which', ('g', 'd', 'both'))
def test_dcgan_batchnorm_off(which):
  g_bn, d_bn = which == 'd', which == 'g'
  gv, dv = _variables(32, 1, g_width=16, d_width=4, g_batchnorm=g_bn, d_batchnorm=d_bn)
  for variables, bn in ((gv, g_bn), (dv, d_bn)):
    assert ('batch_stats' in variables) == bn
    if not bn:
      assert all('bias' in layer for layer in variables['params'].values())


@pytest.mark.parametrize(
  'arch,g_stats,d_stats',
  (
    ('tf_tutorial', {'project_bn', 'up_0_bn', 'up_1_bn'}, None),
    ('conv28', {'up_0_bn', 'up_1_bn'}, {'conv_1_bn'}),
    ('mlp', None, None),
  ),
)
def test_other_archs_batchnorm_placement(arch, g_stats, d_stats):
  gv, dv = _variables(28, 1, arch=arch)
  assert (set(gv['batch_stats']) if g_stats else None) == g_stats
  assert (set(dv['batch_stats']) if d_stats else None) == d_stats
  assert 'out_bn' not in gv['params'] and 'conv_0_bn' not in dv['params']


# -------------------------------------------------------------------- init ---


def test_real_init_and_eval():
  """Real init: N(0, 0.02) kernels, zero biases, N(1, 0.02) BN scales.

  Uses bn_axis_name as the trainer does: init and eval must work outside pmap.
  """
  g, d = _create(32, 1, bn_axis_name='batch', g_width=256, d_width=64, kernel_size=4)
  z, x = _inputs(32, 1)
  gv, dv = _init(g, d, z, x)
  kernel = np.asarray(gv['params']['up_0']['kernel'])  # 4*4*256*128 weights.
  assert kernel.size == 524_288
  np.testing.assert_allclose(kernel.std(), 0.02, rtol=0.01)
  assert abs(kernel.mean()) < 1e-4
  d_kernel = np.asarray(dv['params']['conv_2']['kernel'])  # 4*4*128*256.
  np.testing.assert_allclose(d_kernel.std(), 0.02, rtol=0.01)
  scale = np.asarray(gv['params']['project_bn']['scale'])  # 256 of them.
  np.testing.assert_allclose(scale.mean(), 1.0, atol=0.01)
  np.testing.assert_allclose(scale.std(), 0.02, rtol=0.3)
  for variables in (gv, dv):
    flat = jax.tree_util.tree_flatten_with_path(variables['params'])[0]
    biases = [leaf for path, leaf in flat if path[-1].key == 'bias']
    assert biases and all(not np.any(b) for b in biases)
  evaluate = jax.jit(functools.partial(_apply, g, d, train=False))
  images, logits = evaluate(gv, dv, z, x)
  assert images.shape == (2, 32, 32, 1) and logits.shape == (2,)


def test_init_std_is_configurable():
  g, d = _create(28, 1, arch='mlp', mlp_hidden=256, init_std=0.1)
  _, dv = _init(g, d, *_inputs(28, 1))
  np.testing.assert_allclose(dv['params']['hidden']['kernel'].std(), 0.1, rtol=0.02)


# ------------------------------------------------------------------ errors ---


@pytest.mark.parametrize(
  'size,overrides,match',
  (
    (48, dict(), r'image_size=48 .* power of two'),
    (256, dict(), r'image_size=256 .* power of two'),
    (64, dict(kernel_size=3), r'model.kernel_size=3 .* \(4, 5\)'),
    (64, dict(arch='foo'), r"model.arch='foo' .*'dcgan', 'tf_tutorial'"),
    (32, dict(arch='tf_tutorial'), r'only makes 28x28 .* image_size=28'),
    (32, dict(arch='conv28'), r'only makes 28x28'),
    (28, dict(), r"image_size=28 .*arch='dcgan'"),
    (64, dict(upsample='pixel_shuffle'), r'model.upsample'),
    (64, dict(upsample='resize_conv', resize_method='cubic'), r'resize_method'),
    (128, dict(g_width=8), r'g_width >= 16'),
    (4, dict(arch='mlp'), r'image_size >= 8'),
  ),
)
def test_bad_config_raises(size, overrides, match):
  with pytest.raises(ValueError, match=match):
    _create(size, 3, **overrides)


def test_bad_num_channels_raises():
  with pytest.raises(ValueError, match=r'num_channels=2 .* \(1, 3\)'):
    _create(64, 2)


def test_discriminator_rejects_wrong_image_shape():
  g, d = _create(32, 3, g_width=16, d_width=4)
  with pytest.raises(ValueError, match='expects images'):
    d.init(jax.random.key(0), jnp.zeros((2, 64, 64, 3)))


# ---------------------------------------------------------------- sample_z ---


def test_sample_z_uniform():
  z = models.sample_z(jax.random.key(0), 1000, 100, 'uniform')
  assert z.shape == (1000, 100) and z.dtype == jnp.float32
  assert z.min() >= -1.0 and z.max() <= 1.0
  assert z.min() < -0.99 and z.max() > 0.99  # Covers the whole range.
  np.testing.assert_allclose(z.std(), 1 / np.sqrt(3), rtol=0.02)


def test_sample_z_normal():
  z = models.sample_z(jax.random.key(0), 1000, 100, 'normal')
  assert z.shape == (1000, 100) and z.dtype == jnp.float32
  np.testing.assert_allclose(z.std(), 1.0, rtol=0.02)
  assert abs(z.mean()) < 0.02


@pytest.mark.parametrize('dist', models.Z_DISTS)
def test_sample_z_deterministic(dist):
  a = models.sample_z(jax.random.key(7), 4, 8, dist)
  b = models.sample_z(jax.random.key(7), 4, 8, dist)
  c = models.sample_z(jax.random.key(8), 4, 8, dist)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_sample_z_bad_dist():
  with pytest.raises(ValueError, match="'gamma'.*'uniform', 'normal'"):
    models.sample_z(jax.random.key(0), 4, 8, 'gamma')


# ----------------------------------------------------------------- dropout ---


def test_tf_tutorial_dropout_only_in_train():
  g, d = _create(28, 1, arch='tf_tutorial', dropout_rate=0.5)
  z, x = _inputs(28, 1, batch=4)
  _, dv = _fake_init(g, d, z, x)

  def outputs(dv, x):
    keys = [{'dropout': jax.random.key(i)} for i in (1, 2)]
    no_rng = d.apply(dv, x, train=False)  # Eval needs no dropout rng.
    evals = [d.apply(dv, x, train=False, rngs=k) for k in keys]
    trains = [d.apply(dv, x, train=True, rngs=k) for k in keys]
    return no_rng, evals, trains

  no_rng, (eval_a, eval_b), (train_a, train_b) = jax.jit(outputs)(dv, x)
  np.testing.assert_array_equal(eval_a, no_rng)
  np.testing.assert_array_equal(eval_b, no_rng)
  assert not np.allclose(train_a, train_b)
  assert not np.allclose(train_a, no_rng)


# -------------------------------------------------------- synchronised BN ---


def _bn_step(g, d, gv, dv, z, x):
  """One train-mode forward pass of G and D; returns their new batch_stats."""
  _, g_state = g.apply(gv, z, train=True, mutable=['batch_stats'])
  _, d_state = d.apply(
    dv, x, train=True, rngs={'dropout': jax.random.key(0)}, mutable=['batch_stats']
  )
  return g_state['batch_stats'], d_state['batch_stats']


def _shard(tree, n):
  """Splits the leading (batch) axis of every leaf into [n, batch / n]."""
  return jax.tree.map(lambda a: a.reshape(n, -1, *a.shape[1:]), tree)


def _replicate(tree, n):
  return jax.tree.map(lambda a: jnp.stack([a] * n), tree)


@pytest.mark.parametrize('arch,size', (('dcgan', 16), ('conv28', 28)))
def test_sync_batchnorm_under_pmap(arch, size):
  """Train mode under pmap: every device gets the global batch's statistics.

  On every local device (conftest.py's DCGAN_TEST_DEVICES); on one, the
  statistics through the axis name are still those of the whole batch.
  """
  n = jax.local_device_count()
  overrides = dict(arch=arch, g_width=8, d_width=4)
  g, d = _create(size, 1, bn_axis_name='batch', **overrides)
  z, x = _inputs(size, 1, batch=4 * n)
  # Shift each example so that per-device statistics clearly differ.
  x = x + jnp.arange(4 * n, dtype=jnp.float32)[:, None, None, None] / n
  gv, dv = _fake_init(g, d, z, x)
  step = jax.pmap(functools.partial(_bn_step, g, d), axis_name='batch')
  stats = step(_replicate(gv, n), _replicate(dv, n), _shard(z, n), _shard(x, n))
  # Reference: the same networks without an axis name on the whole batch.
  g1, d1 = _create(size, 1, **overrides)
  want = jax.jit(functools.partial(_bn_step, g1, d1))(gv, dv, z, x)
  for got, ref in zip(jax.tree.leaves(stats), jax.tree.leaves(want), strict=True):
    for i in range(n):
      np.testing.assert_allclose(got[i], ref, rtol=1e-4, atol=1e-5)
