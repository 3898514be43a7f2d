"""Generators and discriminators for every `config.model.arch`.

All architectures share one calling convention, which the trainer relies on:

  G.apply(variables, z, train=..., mutable=['batch_stats'] when train)
    z: float32 [B, z_dim] -> images [B, H, W, C] in [-1, 1] (tanh).
  D.apply(variables, x, train=..., rngs={'dropout': key}, mutable=[...])
    x: [B, H, W, C] -> float32 logits [B] (the sigmoid lives in the loss).

A class-conditional pair (`model.num_classes = C > 0`, set by the trainer
for `config.conditional`) takes G's input as [z, one-hot label], float32
[B, z_dim + C] (`split_latent`), and D's labels as `labels=` (class
indices [B] or one-hot [B, C]).

Kernels are drawn from N(0, init_std), biases start at 0, BatchNorm scales at
N(1, init_std) and shifts at 0, as in the reference DCGAN code. A layer that
feeds straight into BatchNorm has no bias (BatchNorm's shift replaces it).
Every BatchNorm gets `bn_axis_name`, so under pmap its statistics can span
the global batch; the name is only used in train mode outside init.
"""

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dcgan_jax.networks import strided

ARCHS = ('dcgan', 'tf_tutorial', 'conv28', 'mlp')
Z_DISTS = ('uniform', 'normal')
UPSAMPLES = ('transpose', 'resize_conv')
RESIZE_METHODS = ('nearest', 'bilinear')
KERNEL_SIZES = (4, 5)
CONV_IMPLS = ('auto', 'phases', 'xla')
COMPUTE_DTYPES = ('float32', 'bfloat16')
INITS = ('normal', 'glorot_uniform')
NUM_CHANNELS = (1, 3)
DCGAN_IMAGE_SIZES = (16, 32, 64, 128)


@dataclasses.dataclass(frozen=True)
class LayerSettings:
  """Initialisation and BatchNorm settings shared by all layers of a model.

  Builds layers so that every architecture gets the same initialisers and
  BatchNorm hyper-parameters from a single place.
  """

  init_std: float = 0.02
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_axis_name: str | None = None
  leaky_slope: float = 0.2
  # 'phases': stride-2 layers from `dcgan_jax.networks.strided` (fast on CPU);
  # 'xla': nn.Conv / nn.ConvTranspose. Same parameters, same function.
  conv_impl: str = 'phases'
  # Dtype of the convolutions and matrix products ('bfloat16': mixed
  # precision). Parameters and BatchNorm statistics are always float32.
  dtype: Any = jnp.float32
  # Guided backpropagation (Springenberg et al. 2015) through the LeakyReLUs:
  # gradients pass only where both the input and the incoming gradient are
  # positive. Same forward pass; for visualising D's features only.
  guided_backprop: bool = False
  # 'normal': kernels from N(0, init_std), BatchNorm scales from N(1,
  # init_std) (the reference DCGAN code); 'glorot_uniform': Keras' defaults
  # (the TensorFlow tutorial): Glorot-uniform kernels, BatchNorm scales 1.
  init: str = 'normal'
  # Spectral normalisation (Miyato et al., 2018) of the layers built with
  # `normed`: one power iteration per training forward pass, its vectors in
  # the 'batch_stats' collection. Set for D only.
  spectral_norm: bool = False

  @property
  def kernel_init(self) -> Callable[..., jax.Array]:
    if self.init == 'glorot_uniform':
      return nn.initializers.glorot_uniform()
    return nn.initializers.normal(self.init_std)

  def normed(self, layer: nn.Module, train: bool) -> Callable[[jax.Array], jax.Array]:
    """`layer`, spectrally normalised if `spectral_norm` (its parameters keep
    their names; the power-iteration state is `<name>_sn` in 'batch_stats')."""
    if not self.spectral_norm:
      return layer
    wrapped = nn.SpectralNorm(layer, name=f'{layer.name}_sn')
    return functools.partial(wrapped, update_stats=train)

  def dense(self, features: int, *, use_bias: bool = True, name: str) -> nn.Dense:
    """A Dense layer with the shared initialisers."""
    return nn.Dense(
      features,
      use_bias=use_bias,
      kernel_init=self.kernel_init,
      dtype=self.dtype,
      name=name,
    )

  def conv(
    self,
    features: int,
    kernel: int,
    *,
    strides: int = 1,
    padding: str = 'SAME',
    use_bias: bool = True,
    name: str,
  ) -> nn.Conv:
    """A square-kernel convolution with the shared initialisers."""
    if strides == 2 and padding == 'SAME' and self.conv_impl == 'phases':
      return strided.StridedConv(
        features,
        kernel,
        use_bias=use_bias,
        kernel_init=self.kernel_init,
        dtype=self.dtype,
        name=name,
      )
    return nn.Conv(
      features,
      (kernel, kernel),
      strides=(strides, strides),
      padding=padding,
      use_bias=use_bias,
      kernel_init=self.kernel_init,
      dtype=self.dtype,
      name=name,
    )

  def conv_transpose(
    self,
    features: int,
    kernel: int,
    *,
    strides: int = 1,
    padding: str = 'SAME',
    use_bias: bool = True,
    name: str,
  ) -> nn.Module:
    """A square-kernel transposed convolution with the shared initialisers.

    With padding 'SAME' the output is exactly `strides` times the input.
    """
    if strides == 2 and padding == 'SAME' and self.conv_impl == 'phases':
      return strided.StridedTransposeConv(
        features,
        kernel,
        use_bias=use_bias,
        kernel_init=self.kernel_init,
        dtype=self.dtype,
        name=name,
      )
    return nn.ConvTranspose(
      features,
      (kernel, kernel),
      strides=(strides, strides),
      padding=padding,
      use_bias=use_bias,
      kernel_init=self.kernel_init,
      dtype=self.dtype,
      name=name,
    )

  def batch_norm(self, train: bool, *, name: str) -> nn.BatchNorm:
    """BatchNorm: batch statistics when training, running averages otherwise."""
    std = self.init_std

    def scale_init(key, shape, dtype=jnp.float32):
      if self.init == 'glorot_uniform':
        return jnp.ones(shape, dtype)
      return 1.0 + std * jax.random.normal(key, shape, dtype)

    return nn.BatchNorm(
      use_running_average=not train,
      momentum=self.bn_momentum,
      epsilon=self.bn_epsilon,
      axis_name=self.bn_axis_name,
      scale_init=scale_init,
      dtype=self.dtype,  # Statistics are reduced in float32 regardless.
      name=name,
    )

  def leaky_relu(self, x: jax.Array) -> jax.Array:
    """LeakyReLU with the configured negative slope."""
    if self.guided_backprop:
      return _guided_leaky_relu(x, self.leaky_slope)
    return nn.leaky_relu(x, negative_slope=self.leaky_slope)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _guided_leaky_relu(x: jax.Array, slope: float) -> jax.Array:
  return nn.leaky_relu(x, negative_slope=slope)


def _guided_fwd(x: jax.Array, slope: float):
  return _guided_leaky_relu(x, slope), x


def _guided_bwd(slope: float, x: jax.Array, g: jax.Array):
  del slope  # Negative inputs pass no gradient, like ReLU in guided backprop.
  return (jnp.where((x > 0) & (g > 0), g, jnp.zeros_like(g)),)


_guided_leaky_relu.defvjp(_guided_fwd, _guided_bwd)


def _maybe_bn(
  x: jax.Array, layers: LayerSettings, use_bn: bool, train: bool, name: str
) -> jax.Array:
  """Applies BatchNorm named `name` if `use_bn`, else passes `x` through."""
  return layers.batch_norm(train, name=name)(x) if use_bn else x


def _logits(
  x: jax.Array, layers: LayerSettings, train: bool, onehot: jax.Array | None = None
) -> jax.Array:
  """Flattens features (and appends the labels of a conditional D), maps
  them to one logit per example: float32 [B]."""
  x = _join(x.reshape(x.shape[0], -1), onehot)
  dense = layers.normed(layers.dense(1, name='logits'), train)
  return dense(x).reshape(-1).astype(jnp.float32)


def _join(x: jax.Array, onehot: jax.Array | None) -> jax.Array:
  """Appends the one-hot labels to features: to vectors [B, D] as more
  entries, to feature maps [B, H, W, D] as constant maps (the authors'
  conditional MNIST model's `conv_cond_concat`). Unconditional: `x`."""
  if onehot is None:
    return x
  onehot = onehot.astype(x.dtype)
  if x.ndim == 2:
    return jnp.concatenate([x, onehot], axis=-1)
  maps = jnp.broadcast_to(onehot[:, None, None, :], (*x.shape[:3], onehot.shape[-1]))
  return jnp.concatenate([x, maps], axis=-1)


def split_latent(
  latent: jax.Array, num_classes: int
) -> tuple[jax.Array, jax.Array | None]:
  """(z, one-hot labels) of a conditional G's input [B, z_dim + num_classes]
  (its last num_classes entries); (latent, None) for an unconditional G."""
  if not num_classes:
    return latent, None
  return latent[:, :-num_classes], latent[:, -num_classes:]


def _d_labels(
  labels: jax.Array | None, num_classes: int, batch: int
) -> jax.Array | None:
  """A conditional D's labels as one-hot float32 [B, C] (given as class
  indices [B] or one-hot); ValueError where they are missing."""
  if not num_classes:
    return None
  if labels is None:
    raise ValueError(
      f'This discriminator is class-conditional ({num_classes} classes): pass '
      'labels=... with the images.'
    )
  if labels.ndim == 1:
    labels = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if labels.shape != (batch, num_classes):
    raise ValueError(f'labels must be [{batch}] or [{batch}, {num_classes}].')
  return labels


def _check_images(x: jax.Array, image_size: int, num_channels: int) -> None:
  """Raises ValueError if `x` is not [B, image_size, image_size, C]."""
  want = (image_size, image_size, num_channels)
  if x.ndim != 4 or tuple(x.shape[1:]) != want:
    raise ValueError(f'Discriminator expects images [B, {want}], got {x.shape}.')


def _num_doublings(image_size: int) -> int:
  """n = log2(image_size / 4): G's upsamplings from 4x4, D's downsamplings."""
  return int(round(math.log2(image_size // 4)))


# ----------------------------------------------------------------- dcgan ---


class DCGANGenerator(nn.Module):
  """The paper's generator: project z to 4x4xwidth, then upsample by 2 n times.

  Channels halve at every upsampling; the last layer maps to `num_channels`
  with a bias, tanh and no BatchNorm (Radford et al., 2015, figure 1).
  """

  layers: LayerSettings
  image_size: int
  num_channels: int
  width: int
  kernel_size: int = 5
  upsample: str = 'transpose'
  resize_method: str = 'nearest'
  batchnorm: bool = True
  # > 0: class-conditional; the input is [z, one-hot label] and the label
  # is appended to every hidden layer's feature maps.
  num_classes: int = 0

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
    bn, ch = self.batchnorm, self.width
    z, onehot = split_latent(z, self.num_classes)
    x = self.layers.dense(4 * 4 * ch, use_bias=not bn, name='project')(_join(z, onehot))
    x = x.reshape(z.shape[0], 4, 4, ch)
    x = nn.relu(_maybe_bn(x, self.layers, bn, train, 'project_bn'))
    for i in range(_num_doublings(self.image_size) - 1):
      ch //= 2
      x = self._upsample(_join(x, onehot), ch, use_bias=not bn, name=f'up_{i}')
      x = nn.relu(_maybe_bn(x, self.layers, bn, train, f'up_{i}_bn'))
    x = self._upsample(_join(x, onehot), self.num_channels, use_bias=True, name='out')
    return jnp.tanh(x.astype(jnp.float32))

  def _upsample(
    self, x: jax.Array, features: int, *, use_bias: bool, name: str
  ) -> jax.Array:
    """Doubles height and width: transposed conv or resize + conv."""
    k = self.kernel_size
    if self.upsample == 'transpose':
      up = self.layers.conv_transpose(
        features, k, strides=2, use_bias=use_bias, name=name
      )
      return up(x)
    b, h, w, c = x.shape
    x = jax.image.resize(x, (b, 2 * h, 2 * w, c), method=self.resize_method)
    return self.layers.conv(features, k, use_bias=use_bias, name=name)(x)


class DCGANDiscriminator(nn.Module):
  """The paper's discriminator: n stride-2 convs doubling channels, then Dense(1).

  The input conv has a bias and no BatchNorm; the others have BatchNorm. All
  use LeakyReLU.
  """

  layers: LayerSettings
  image_size: int
  num_channels: int
  width: int
  kernel_size: int = 5
  batchnorm: bool = True
  # > 0: class-conditional; the labels are appended to the input, to every
  # hidden layer's feature maps and to the last features.
  num_classes: int = 0

  @nn.compact
  def __call__(
    self, x: jax.Array, train: bool = False, labels: jax.Array | None = None
  ) -> jax.Array:
    _check_images(x, self.image_size, self.num_channels)
    onehot = _d_labels(labels, self.num_classes, x.shape[0])
    for i in range(_num_doublings(self.image_size)):
      x = _join(x, onehot)
      use_bn = self.batchnorm and i > 0
      conv = self.layers.conv(
        self.width * 2**i,
        self.kernel_size,
        strides=2,
        use_bias=not use_bn,
        name=f'conv_{i}',
      )
      x = self.layers.normed(conv, train)(x)
      x = _maybe_bn(x, self.layers, use_bn, train, f'conv_{i}_bn')
      x = self.layers.leaky_relu(x)
    return _logits(x, self.layers, train, onehot)


# ----------------------------------------------------------- tf_tutorial ---


class TFTutorialGenerator(nn.Module):
  """Generator of TensorFlow's DCGAN tutorial (MNIST, 28x28).

  Dense 7x7x256 -> transposed convs 128 (stride 1), 64, C (stride 2), all
  5x5 and without bias, as in the tutorial. The tutorial's LeakyReLU uses the
  Keras default slope 0.3; here (and in the discriminator) the slope is
  `model.leaky_slope` (default 0.2), so set it to 0.3 to match the tutorial.
  """

  layers: LayerSettings
  num_channels: int
  batchnorm: bool = True
  num_classes: int = 0  # > 0: the input is [z, one-hot label].

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
    bn, lyr = self.batchnorm, self.layers
    z, onehot = split_latent(z, self.num_classes)
    x = lyr.dense(7 * 7 * 256, use_bias=not bn, name='project')(_join(z, onehot))
    # As in Keras, BatchNorm normalises each of the 12544 Dense units, before
    # the reshape (not per channel, as the 'dcgan' generator does).
    x = lyr.leaky_relu(_maybe_bn(x, lyr, bn, train, 'project_bn'))
    x = x.reshape(z.shape[0], 7, 7, 256)
    for i, (ch, stride) in enumerate(((128, 1), (64, 2))):
      up = lyr.conv_transpose(ch, 5, strides=stride, use_bias=not bn, name=f'up_{i}')
      x = lyr.leaky_relu(_maybe_bn(up(x), lyr, bn, train, f'up_{i}_bn'))
    out = lyr.conv_transpose(
      self.num_channels, 5, strides=2, use_bias=False, name='out'
    )
    return jnp.tanh(out(x).astype(jnp.float32))


class TFTutorialDiscriminator(nn.Module):
  """Discriminator of TensorFlow's DCGAN tutorial: two 5x5 stride-2 convs.

  Each conv is followed by LeakyReLU and Dropout (active only when training;
  needs the 'dropout' rng then).
  """

  layers: LayerSettings
  num_channels: int
  dropout_rate: float = 0.3
  num_classes: int = 0  # > 0: labels joined to the input and last features.

  @nn.compact
  def __call__(
    self, x: jax.Array, train: bool = False, labels: jax.Array | None = None
  ) -> jax.Array:
    _check_images(x, 28, self.num_channels)
    onehot = _d_labels(labels, self.num_classes, x.shape[0])
    x = _join(x, onehot)
    lyr = self.layers
    for i, ch in enumerate((64, 128)):
      conv = lyr.normed(lyr.conv(ch, 5, strides=2, name=f'conv_{i}'), train)
      x = lyr.leaky_relu(conv(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return _logits(x, lyr, train, onehot)


# ---------------------------------------------------------------- conv28 ---


class Conv28Generator(nn.Module):
  """28x28 generator that treats z as a 1x1 image.

  A 7x7 'VALID' transposed conv makes it 7x7x256, then two 5x5 stride-2 ones
  go 7 -> 14 -> 28. BatchNorm + ReLU on all but the output layer.
  """

  layers: LayerSettings
  num_channels: int
  batchnorm: bool = True
  num_classes: int = 0  # > 0: the input is [z, one-hot label].

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
    bn, lyr = self.batchnorm, self.layers
    z = _join(*split_latent(z, self.num_classes))
    x = z.reshape(z.shape[0], 1, 1, z.shape[-1])
    x = lyr.conv_transpose(256, 7, padding='VALID', use_bias=not bn, name='up_0')(x)
    x = nn.relu(_maybe_bn(x, lyr, bn, train, 'up_0_bn'))
    x = lyr.conv_transpose(128, 5, strides=2, use_bias=not bn, name='up_1')(x)
    x = nn.relu(_maybe_bn(x, lyr, bn, train, 'up_1_bn'))
    x = lyr.conv_transpose(self.num_channels, 5, strides=2, name='out')(x)
    return jnp.tanh(x.astype(jnp.float32))


class Conv28Discriminator(nn.Module):
  """Mirror of Conv28Generator, ending in a conv instead of a Dense layer.

  5x5 stride-2 convs to 128 and 256 channels (28 -> 14 -> 7), then a 7x7
  'VALID' conv to one logit. No BatchNorm on the input layer.
  """

  layers: LayerSettings
  num_channels: int
  batchnorm: bool = True
  num_classes: int = 0  # > 0: labels joined to the input and the 7x7 maps.

  @nn.compact
  def __call__(
    self, x: jax.Array, train: bool = False, labels: jax.Array | None = None
  ) -> jax.Array:
    _check_images(x, 28, self.num_channels)
    onehot = _d_labels(labels, self.num_classes, x.shape[0])
    x = _join(x, onehot)
    bn, lyr = self.batchnorm, self.layers
    x = lyr.leaky_relu(lyr.normed(lyr.conv(128, 5, strides=2, name='conv_0'), train)(x))
    conv = lyr.conv(256, 5, strides=2, use_bias=not bn, name='conv_1')
    x = lyr.normed(conv, train)(x)
    x = lyr.leaky_relu(_maybe_bn(x, lyr, bn, train, 'conv_1_bn'))
    x = _join(x, onehot)
    x = lyr.normed(lyr.conv(1, 7, padding='VALID', name='logits'), train)(x)
    return x.reshape(-1).astype(jnp.float32)


# ------------------------------------------------------------------- mlp ---


class MLPGenerator(nn.Module):
  """Plain MLP generator: Dense(hidden) + ReLU -> Dense(H*W*C) + tanh."""

  layers: LayerSettings
  image_size: int
  num_channels: int
  hidden: int = 128
  num_classes: int = 0  # > 0: the input is [z, one-hot label].

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
    del train  # No BatchNorm or dropout.
    size, ch = self.image_size, self.num_channels
    z = _join(*split_latent(z, self.num_classes))
    x = nn.relu(self.layers.dense(self.hidden, name='hidden')(z))
    x = jnp.tanh(self.layers.dense(size * size * ch, name='out')(x).astype(jnp.float32))
    return x.reshape(z.shape[0], size, size, ch)


class MLPDiscriminator(nn.Module):
  """Plain MLP discriminator: flatten -> Dense(hidden) + ReLU -> Dense(1)."""

  layers: LayerSettings
  image_size: int
  num_channels: int
  hidden: int = 128
  num_classes: int = 0  # > 0: labels joined to the input and hidden units.

  @nn.compact
  def __call__(
    self, x: jax.Array, train: bool = False, labels: jax.Array | None = None
  ) -> jax.Array:
    _check_images(x, self.image_size, self.num_channels)
    onehot = _d_labels(labels, self.num_classes, x.shape[0])
    x = _join(x.reshape(x.shape[0], -1), onehot)
    hidden = self.layers.normed(self.layers.dense(self.hidden, name='hidden'), train)
    return _logits(nn.relu(hidden(x)), self.layers, train, onehot)


# ------------------------------------------------------------ public API ---


def _check_choice(what: str, value: Any, valid: tuple[Any, ...]) -> None:
  """Raises ValueError naming `what`, the bad `value` and the valid choices."""
  if value not in valid:
    raise ValueError(f'{what}={value!r} is not supported; use one of {valid}.')


def _check_dcgan(model_config: ml_collections.ConfigDict, image_size: int) -> None:
  """Validates the 'dcgan' keys; messages say which key to change and how."""
  if image_size not in DCGAN_IMAGE_SIZES:
    raise ValueError(
      f"image_size={image_size} is not supported by arch='dcgan': use a power "
      f'of two in {DCGAN_IMAGE_SIZES}, or arch tf_tutorial/conv28 for 28x28.'
    )
  _check_choice('model.kernel_size', model_config.kernel_size, KERNEL_SIZES)
  _check_choice('model.upsample', model_config.upsample, UPSAMPLES)
  _check_choice('model.resize_method', model_config.resize_method, RESIZE_METHODS)
  n = _num_doublings(image_size)
  if model_config.g_width // 2 ** (n - 1) < 1:
    raise ValueError(
      f'model.g_width={model_config.g_width} is halved {n - 1} times at image_size='
      f'{image_size} and would reach 0 channels; use g_width >= {2 ** (n - 1)}.'
    )
  if model_config.d_width < 1:
    raise ValueError(f'model.d_width={model_config.d_width} must be >= 1.')


def _check_config(
  model_config: ml_collections.ConfigDict, image_size: int, num_channels: int
) -> None:
  """Raises ValueError for combinations no architecture supports."""
  _check_choice('model.arch', model_config.arch, ARCHS)
  _check_choice(
    'model.compute_dtype', model_config.get('compute_dtype', 'float32'), COMPUTE_DTYPES
  )
  _check_choice('num_channels', num_channels, NUM_CHANNELS)
  _check_choice('model.init', model_config.get('init', 'normal'), INITS)
  if model_config.arch == 'dcgan':
    _check_dcgan(model_config, image_size)
  elif model_config.arch in ('tf_tutorial', 'conv28') and image_size != 28:
    raise ValueError(
      f'arch={model_config.arch!r} only makes 28x28 images, got image_size={image_size}; '
      "set image_size=28 or use arch='dcgan' (16..128) or 'mlp'."
    )
  elif model_config.arch == 'mlp' and image_size < 8:
    raise ValueError(f"arch='mlp' needs image_size >= 8, got {image_size}.")


def resolve_conv_impl(conv_impl: str) -> str:
  """'auto' -> 'phases' on CPU (where it is several times faster), else 'xla'."""
  _check_choice('model.conv_impl', conv_impl, CONV_IMPLS)
  if conv_impl == 'auto':
    return 'phases' if jax.default_backend() == 'cpu' else 'xla'
  return conv_impl


def create_models(
  model_config: ml_collections.ConfigDict,
  *,
  image_size: int,
  num_channels: int,
  bn_axis_name: str | None = None,
) -> tuple[nn.Module, nn.Module]:
  """Returns (generator, discriminator) for `model_config.arch`.

  Raises ValueError, saying what to change, for unsupported combinations.
  `bn_axis_name` goes to every BatchNorm (synchronised BatchNorm under pmap).
  `g_batchnorm` / `d_batchnorm` apply to every arch that has BatchNorm
  ('dcgan', and 'tf_tutorial' / 'conv28' too); 'mlp' has none.
  """
  _check_config(model_config, image_size, num_channels)
  lyr = LayerSettings(
    init_std=model_config.init_std,
    bn_momentum=model_config.bn_momentum,
    bn_epsilon=model_config.bn_epsilon,
    bn_axis_name=bn_axis_name,
    leaky_slope=model_config.leaky_slope,
    # .get: workdirs written before these keys existed still load.
    conv_impl=resolve_conv_impl(model_config.get('conv_impl', 'auto')),
    dtype=jnp.dtype(model_config.get('compute_dtype', 'float32')),
    init=model_config.get('init', 'normal'),
  )
  # D's layers: spectrally normalised if asked (never G's).
  d_lyr = dataclasses.replace(
    lyr, spectral_norm=model_config.get('d_spectral_norm', False)
  )
  g_bn, d_bn, c = model_config.g_batchnorm, model_config.d_batchnorm, num_channels
  k = model_config.get('num_classes', 0)
  if model_config.arch == 'dcgan':
    conv = dict(
      image_size=image_size,
      num_channels=c,
      kernel_size=model_config.kernel_size,
      num_classes=k,
    )
    return (
      DCGANGenerator(
        lyr,
        width=model_config.g_width,
        upsample=model_config.upsample,
        resize_method=model_config.resize_method,
        batchnorm=g_bn,
        **conv,
      ),
      DCGANDiscriminator(d_lyr, width=model_config.d_width, batchnorm=d_bn, **conv),
    )
  if model_config.arch == 'tf_tutorial':
    return (
      TFTutorialGenerator(lyr, num_channels=c, batchnorm=g_bn, num_classes=k),
      TFTutorialDiscriminator(
        d_lyr, num_channels=c, dropout_rate=model_config.dropout_rate, num_classes=k
      ),
    )
  if model_config.arch == 'conv28':
    return (
      Conv28Generator(lyr, num_channels=c, batchnorm=g_bn, num_classes=k),
      Conv28Discriminator(d_lyr, num_channels=c, batchnorm=d_bn, num_classes=k),
    )
  mlp = dict(
    image_size=image_size,
    num_channels=c,
    hidden=model_config.mlp_hidden,
    num_classes=k,
  )
  return MLPGenerator(lyr, **mlp), MLPDiscriminator(d_lyr, **mlp)


def sample_z(key: jax.Array, num: int, z_dim: int, dist: str) -> jax.Array:
  """Draws G's input: float32 [num, z_dim], 'uniform' in [-1, 1] or 'normal'."""
  _check_choice('model.z_dist', dist, Z_DISTS)
  shape = (num, z_dim)
  if dist == 'uniform':
    return jax.random.uniform(key, shape, jnp.float32, minval=-1.0, maxval=1.0)
  return jax.random.normal(key, shape, jnp.float32)


def count_params(params: Any) -> int:
  """Number of scalars in a pytree of arrays (or of jax.ShapeDtypeStructs)."""
  return int(
    sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree.leaves(params))
  )
