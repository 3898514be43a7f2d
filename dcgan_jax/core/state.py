"""The GAN state: what changes during training, how it starts, its keys.

Keys are pure functions of the seed: the root key `key(config.seed)` is
split once into (init, train, sample) keys (`split_root_key`); everything
random in a run derives from one of them.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import linen as nn
from flax import struct

from dcgan_jax.networks import models

PyTree = Any


class GANState(struct.PyTreeNode):
  """Everything that changes during training, explicitly.

  `g_ema` is None unless `config.ema_decay > 0`; then it holds the moving
  averages of G's variables, {'params': ..., 'batch_stats': ...}.
  """

  step: jax.Array
  g_params: PyTree
  g_batch_stats: PyTree
  g_opt_state: optax.OptState
  d_params: PyTree
  d_batch_stats: PyTree
  d_opt_state: optax.OptState
  g_ema: PyTree = None

  @property
  def g_variables(self) -> dict[str, PyTree]:
    """G's trained variables, as `generator.apply` takes them."""
    return {'params': self.g_params, 'batch_stats': self.g_batch_stats}


def split_root_key(root_key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(init_key, train_key, sample_key): the only split of the root key."""
  init_key, train_key, sample_key = jax.random.split(root_key, 3)
  return init_key, train_key, sample_key


def learning_rate(
  config: ml_collections.ConfigDict, peak: float
) -> optax.ScalarOrSchedule:
  """`peak`, constant (the paper) or decayed linearly to 0 at the last step."""
  if config.get('lr_schedule', 'constant') == 'linear':
    return optax.linear_schedule(peak, 0.0, config.num_train_steps)
  return peak


def create_optimizers(config: ml_collections.ConfigDict):
  """(g_tx, d_tx): Adam (paper: lr 2e-4, beta1 0.5) or SGD with momentum.

  With `weight_decay = w > 0`, w * parameter is added to every parameter's
  gradient before the optimizer (L2 regularisation, as the authors' Theano
  code: 1e-5 there), BatchNorm scales and biases included.
  """

  def make(peak):
    rate = learning_rate(config, peak)
    if config.optimizer == 'sgd':
      tx = optax.sgd(rate, momentum=config.sgd_momentum or None)
    else:
      eps = config.get('adam_eps', 1e-8)
      tx = optax.adam(rate, b1=config.b1, b2=config.b2, eps=eps)
    if config.get('weight_decay', 0.0):
      tx = optax.chain(optax.add_decayed_weights(config.weight_decay), tx)
    return tx

  return make(config.g_learning_rate), make(config.d_learning_rate)


def build(config: ml_collections.ConfigDict, *, bn_axis_name: str | None = None):
  """(generator, discriminator, g_tx, d_tx) for a config."""
  generator, discriminator = models.create_models(
    config.model,
    image_size=config.image_size,
    num_channels=config.num_channels,
    bn_axis_name=bn_axis_name,
  )
  return generator, discriminator, *create_optimizers(config)


def create_state(
  generator: nn.Module,
  discriminator: nn.Module,
  g_tx: optax.GradientTransformation,
  d_tx: optax.GradientTransformation,
  init_key: jax.Array,
  *,
  z_dim: int,
  image_shape: tuple[int, int, int],
  ema: bool = False,
) -> GANState:
  """Fresh parameters, BatchNorm statistics and optimizer states at step 0;
  with `ema`, G's moving averages start as copies of G's variables."""
  g_key, d_key, dropout_key = jax.random.split(init_key, 3)
  g_vars = generator.init(g_key, jnp.zeros((1, z_dim)), train=False)
  d_vars = discriminator.init(
    {'params': d_key, 'dropout': dropout_key},
    jnp.zeros((1, *image_shape)),
    train=False,
    **_label_args(discriminator),
  )
  return GANState(
    step=jnp.zeros((), jnp.int32),
    g_params=g_vars['params'],
    g_batch_stats=g_vars.get('batch_stats', {}),
    g_opt_state=g_tx.init(g_vars['params']),
    d_params=d_vars['params'],
    d_batch_stats=d_vars.get('batch_stats', {}),
    d_opt_state=d_tx.init(d_vars['params']),
    g_ema=_copy(
      {'params': g_vars['params'], 'batch_stats': g_vars.get('batch_stats', {})}
    )
    if ema
    else None,
  )


def _label_args(discriminator: nn.Module) -> dict[str, jax.Array]:
  """The labels a conditional D's `init` takes (class 0: any will do)."""
  if getattr(discriminator, 'num_classes', 0):
    return {'labels': jnp.zeros((1,), jnp.int32)}
  return {}


def _copy(tree: PyTree) -> PyTree:
  """Fresh buffers: state leaves are donated, so no two may share one."""
  return jax.tree.map(jnp.copy, tree)


def initial_state(config: ml_collections.ConfigDict) -> GANState:
  generator, discriminator, g_tx, d_tx = build(config)
  init_key = split_root_key(jax.random.key(config.seed))[0]
  return create_state(
    generator,
    discriminator,
    g_tx,
    d_tx,
    init_key,
    # A conditional G's input is [z, one-hot label].
    z_dim=config.model.z_dim + config.model.get('num_classes', 0),
    image_shape=(config.image_size, config.image_size, config.num_channels),
    ema=config.get('ema_decay', 0.0) > 0,
  )


def initial_d_variables(config: ml_collections.ConfigDict) -> dict[str, PyTree]:
  """D's variables at step 0 of a run with this config (and its seed): those
  of `initial_state` (the same split of the init key), without initialising
  G and the optimizers."""
  _, discriminator = models.create_models(
    config.model, image_size=config.image_size, num_channels=config.num_channels
  )
  init_key = split_root_key(jax.random.key(config.seed))[0]
  _, d_key, dropout_key = jax.random.split(init_key, 3)
  shape = (1, config.image_size, config.image_size, config.num_channels)
  variables = discriminator.init(
    {'params': d_key, 'dropout': dropout_key},
    jnp.zeros(shape),
    train=False,
    **_label_args(discriminator),
  )
  return {
    'params': variables['params'],
    'batch_stats': variables.get('batch_stats', {}),
  }


def unreplicate(tree: PyTree) -> PyTree:
  """This host's first replica of a pmap-ed pytree, as single-device arrays.

  Reads only addressable data, so it also works on several hosts (where
  `x[0]` of a global array would not); flax's version mishandles pmaps over
  a subset of the devices.
  """

  def first(x):
    if isinstance(x, jax.Array):
      return x.addressable_data(0).reshape(x.shape[1:])
    return x[0]

  return jax.tree.map(first, tree)
