"""The 'tf_tutorial' models and the simultaneous step against TensorFlow's
DCGAN tutorial written in Keras, with the same weights.

The tutorial's models are built layer by layer as it builds them; the flax
weights are copied into them (a transposed convolution's kernel is flipped
and has its channel axes swapped: Keras keeps [k, k, out, in] and computes
the gradient of a convolution, lax's transposed convolution does not flip).
Then G's and D's outputs, the losses, both networks' gradients in one
simultaneous step (the tutorial's `train_step` with two gradient tapes) and
G's BatchNorm moving averages after it must agree. Skipped without
TensorFlow's Keras.
"""

import dataclasses
import functools

import jax
import numpy as np
import optax
import pytest

from configs import mnist_tf_tutorial
from dcgan_jax.core import state as state_lib
from dcgan_jax.core import step as step_lib
from dcgan_jax.networks import models

tf = pytest.importorskip('tensorflow')
keras = pytest.importorskip('keras')  # TensorFlow's Keras (Keras 3).

BATCH = 8


def _config(dropout_rate=0.3):
  config = mnist_tf_tutorial.get_config()
  config.global_batch_size = BATCH
  config.model.dropout_rate = dropout_rate
  return config


def _keras_generator():
  layers = keras.layers
  return keras.Sequential(
    [
      keras.Input((100,)),
      layers.Dense(7 * 7 * 256, use_bias=False),
      layers.BatchNormalization(),
      layers.LeakyReLU(),
      layers.Reshape((7, 7, 256)),
      layers.Conv2DTranspose(128, 5, strides=1, padding='same', use_bias=False),
      layers.BatchNormalization(),
      layers.LeakyReLU(),
      layers.Conv2DTranspose(64, 5, strides=2, padding='same', use_bias=False),
      layers.BatchNormalization(),
      layers.LeakyReLU(),
      layers.Conv2DTranspose(
        1, 5, strides=2, padding='same', use_bias=False, activation='tanh'
      ),
    ]
  )


def _keras_discriminator(dropout_rate):
  layers = keras.layers
  return keras.Sequential(
    [
      keras.Input((28, 28, 1)),
      layers.Conv2D(64, 5, strides=2, padding='same'),
      layers.LeakyReLU(),
      layers.Dropout(dropout_rate),
      layers.Conv2D(128, 5, strides=2, padding='same'),
      layers.LeakyReLU(),
      layers.Dropout(dropout_rate),
      layers.Flatten(),
      layers.Dense(1),
    ]
  )


def _transpose_kernel(w):
  """lax.conv_transpose's kernel [k, k, in, out] -> Keras' Conv2DTranspose's."""
  return np.asarray(w)[::-1, ::-1].transpose(0, 1, 3, 2)


# Keras layer index -> (flax layer, kind), in the order of the Sequentials.
_G_LAYERS = {
  0: ('project', 'dense'),
  1: ('project_bn', 'bn'),
  4: ('up_0', 'transpose'),
  5: ('up_0_bn', 'bn'),
  7: ('up_1', 'transpose'),
  8: ('up_1_bn', 'bn'),
  10: ('out', 'transpose'),
}
_D_LAYERS = {0: 'conv_0', 3: 'conv_1', 7: 'logits'}


def _keras_models(g_vars, d_vars, dropout_rate):
  """The tutorial's G and D holding the flax variables' values."""
  generator, discriminator = _keras_generator(), _keras_discriminator(dropout_rate)
  params, stats = g_vars['params'], g_vars['batch_stats']
  for i, (name, kind) in _G_LAYERS.items():
    if kind == 'bn':
      weights = [params[name]['scale'], params[name]['bias']]
      weights += [stats[name]['mean'], stats[name]['var']]
    elif kind == 'transpose':
      weights = [_transpose_kernel(params[name]['kernel'])]
    else:
      weights = [params[name]['kernel']]
    generator.layers[i].set_weights([np.asarray(w) for w in weights])
  for i, name in _D_LAYERS.items():
    layer = d_vars['params'][name]
    discriminator.layers[i].set_weights(
      [np.asarray(layer['kernel']), np.asarray(layer['bias'])]
    )
  return generator, discriminator


def _as_keras(g_params, d_params):
  """Flax parameters (or gradients) in the order of Keras' trainable
  variables: G's, D's."""
  g = []
  for name, kind in _G_LAYERS.values():
    if kind == 'bn':
      g += [g_params[name]['scale'], g_params[name]['bias']]
    elif kind == 'transpose':
      g.append(_transpose_kernel(g_params[name]['kernel']))
    else:
      g.append(g_params[name]['kernel'])
  d = [d_params[name][k] for name in _D_LAYERS.values() for k in ('kernel', 'bias')]
  return [np.asarray(x) for x in g], [np.asarray(x) for x in d]


def _assert_close(actual, desired, what, rtol=2e-4):
  """Equal up to `rtol` of the largest magnitude (float32 sums in another
  order)."""
  actual, desired = np.asarray(actual), np.asarray(desired)
  assert actual.shape == desired.shape, what
  scale = np.abs(desired).max()
  np.testing.assert_allclose(actual, desired, rtol=0, atol=rtol * scale, err_msg=what)


def _inputs():
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (BATCH, 28, 28, 1)).astype(np.float32)
  return images


@pytest.fixture(scope='module')
def initial_state():
  """The preset's state at step 0 (drawn with the 'rbg' PRNG, several times
  faster to compile here than threefry; the draws only need to be random)."""
  create = functools.partial(
    state_lib.create_state,
    *state_lib.build(_config()),
    z_dim=100,
    image_shape=(28, 28, 1),
  )
  return jax.jit(create)(jax.random.key(0, impl='rbg'))


@pytest.mark.parametrize('conv_impl', ['phases', 'xla'])
def test_forward_passes_equal_keras(conv_impl, initial_state):
  config = _config()
  config.model.conv_impl = conv_impl
  generator, discriminator = models.create_models(
    config.model, image_size=28, num_channels=1
  )
  g_vars, d_vars = initial_state.g_variables, {'params': initial_state.d_params}
  # Moving averages away from their initial 0 and 1, so that eval mode
  # shows whether they are used as Keras uses them.
  rng = np.random.default_rng(3)
  g_vars = jax.tree.map(lambda x: x + 0.1 * rng.uniform(size=x.shape), g_vars)
  k_generator, k_discriminator = _keras_models(g_vars, d_vars, 0.3)
  z = np.asarray(models.sample_z(jax.random.key(1), BATCH, 100, 'normal'))
  images = _inputs()

  @jax.jit
  def outputs(g_vars, d_vars, z, images):
    train = generator.apply(g_vars, z, train=True, mutable=['batch_stats'])[0]
    test = generator.apply(g_vars, z, train=False)
    return train, test, discriminator.apply(d_vars, images, train=False)

  train_images, eval_images, logits = outputs(g_vars, d_vars, z, images)

  _assert_close(eval_images, k_generator(z, training=False), 'G, moving averages')
  _assert_close(train_images, k_generator(z, training=True), 'G, batch statistics')
  _assert_close(logits, k_discriminator(images, training=False)[:, 0], 'D')


def test_simultaneous_step_equals_the_tutorials_train_step(initial_state):
  """One step of the preset with plain SGD at rate 1 moves every parameter
  by minus its gradient: those must be the tutorial's two tapes' gradients.
  Dropout 0: the masks cannot be shared between the frameworks. conv_impl
  'xla' compiles in half the time of 'phases', whose passes
  tests/strided_test.py checks against it."""
  config = _config(dropout_rate=0.0)
  config.model.conv_impl = 'xla'
  hyper = step_lib.make_step_config(config)
  hyper = dataclasses.replace(hyper, g_tx=optax.sgd(1.0), d_tx=optax.sgd(1.0))
  state = initial_state
  k_generator, k_discriminator = _keras_models(
    state.g_variables, {'params': state.d_params}, 0.0
  )
  images = _inputs()
  train_key = jax.random.key(7)
  device = jax.local_devices()[:1]

  def replicate(tree):
    return jax.tree.map(lambda x: x[None], tree)

  noise = jax.pmap(
    lambda s: step_lib._noise(s, BATCH, train_key, hyper, 'batch').z,
    axis_name='batch',
    devices=device,
  )(replicate(state))
  z = np.asarray(noise[0])
  new, metrics = jax.pmap(
    functools.partial(step_lib.train_step, hyper=hyper),
    axis_name='batch',
    devices=device,
  )(replicate(state), images[None], train_key[None])
  new = state_lib.unreplicate(new)
  metrics = state_lib.unreplicate(metrics).compute()

  # The tutorial's train_step.
  bce = keras.losses.BinaryCrossentropy(from_logits=True)
  with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
    fake = k_generator(z, training=True)
    real_out = k_discriminator(images, training=True)
    fake_out = k_discriminator(fake, training=True)
    g_loss = bce(tf.ones_like(fake_out), fake_out)
    d_loss = bce(tf.ones_like(real_out), real_out) + bce(
      tf.zeros_like(fake_out), fake_out
    )
  g_grads = g_tape.gradient(g_loss, k_generator.trainable_variables)
  d_grads = d_tape.gradient(d_loss, k_discriminator.trainable_variables)

  np.testing.assert_allclose(metrics['g_loss'], float(g_loss), rtol=1e-5)
  np.testing.assert_allclose(metrics['d_loss'], float(d_loss), rtol=1e-5)
  old_g, old_d = _as_keras(state.g_params, state.d_params)
  new_g, new_d = _as_keras(new.g_params, new.d_params)
  for net, old, new_params, grads, variables in (
    ('G', old_g, new_g, g_grads, k_generator.trainable_variables),
    ('D', old_d, new_d, d_grads, k_discriminator.trainable_variables),
  ):
    assert len(grads) == len(old)
    for before, after, grad, variable in zip(
      old, new_params, grads, variables, strict=True
    ):
      _assert_close(before - after, grad.numpy(), f'{net} gradient of {variable.path}')
  # G's BatchNorm moving averages after the step, momentum 0.99 in both.
  for i, (name, kind) in _G_LAYERS.items():
    if kind == 'bn':
      layer = k_generator.layers[i]
      _assert_close(new.g_batch_stats[name]['mean'], layer.moving_mean.numpy(), name)
      _assert_close(new.g_batch_stats[name]['var'], layer.moving_variance.numpy(), name)
