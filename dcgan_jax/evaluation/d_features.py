"""D's features: every convolution of D after its activation, max-pooled.

The DCGAN paper's representation (its section 5.1): the output of every
convolution of D after its activation (BatchNorm with running averages +
LeakyReLU), adaptively max-pooled to 4x4 (`adaptive_max_pool`), flattened
and concatenated in layer order. Feature counts:

  arch         image  layers (pooled)                       features
  dcgan        16     8x8xw, 4x4x2w                          48 w
  dcgan        32     16x16xw, 8x8x2w, 4x4x4w               112 w
  dcgan        64     + 4x4x8w                              240 w
  dcgan        128    + 4x4x16w                             496 w
  tf_tutorial  28     14x14x64, 7x7x128                     3,072
  conv28       28     14x14x128, 7x7x256 (not the logits)   6,144

with w = model.d_width: 3,584 for configs/digits.py, 7,168 for
configs/mnist_files.py, 14,336 for configs/cifar10.py and configs/svhn.py,
28,672 for configs/imagenet32.py (the paper's count for its ImageNet D).
The linear probe (`probe`), the memorisation metric (`evaluator`) and
guided backpropagation (`visualize`) use them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dcgan_jax.data import input_pipeline
from dcgan_jax.networks import models

POOL_SIZE = 4  # Each layer is max-pooled to a POOL_SIZE x POOL_SIZE grid.
_FEATURE_LAYER = re.compile(r'conv_(\d+)(_bn)?')


def adaptive_max_pool(x: jax.Array, size: int = POOL_SIZE) -> jax.Array:
  """Max-pools [B, H, W, C] to [B, min(H, size), min(W, size), C].

  Output cell i of a dimension n > size is the maximum over input rows
  floor(i n / size) ... ceil((i + 1) n / size) - 1: equal windows when size
  divides n, else the overlapping windows that cover it (as PyTorch's
  AdaptiveMaxPool2d). Dimensions of at most `size` are left as they are.
  """

  def pool(x: jax.Array, axis: int) -> jax.Array:
    n = x.shape[axis]
    if n <= size:
      return x
    cells = [
      jax.lax.slice_in_dim(x, i * n // size, -(-(i + 1) * n // size), axis=axis)
      for i in range(size)
    ]
    return jnp.concatenate([c.max(axis=axis, keepdims=True) for c in cells], axis)

  return pool(pool(x, 1), 2)


def _is_feature_layer(module: nn.Module, method: str) -> bool:
  """D's own conv_i and conv_i_bn submodules (not their insides)."""
  return (
    method == '__call__'
    and len(module.scope.path) == 1
    and _FEATURE_LAYER.fullmatch(module.name or '') is not None
  )


def layer_activations(
  discriminator: nn.Module, variables: dict[str, Any], x: jax.Array
) -> list[jax.Array]:
  """D's convolutional feature maps [B, H_i, W_i, C_i], input to output.

  Layer i is conv_i, followed by its BatchNorm conv_i_bn where D has one
  (running averages: inference mode), then D's LeakyReLU. D's output layer
  (Dense or the 'logits' conv) is not a feature layer. Dropout is inactive
  in inference mode.
  """
  _, state = discriminator.apply(
    variables,
    x,
    train=False,
    capture_intermediates=_is_feature_layer,
    mutable=['intermediates'],
  )
  captured = state['intermediates']
  layers = sorted(
    int(m.group(1))
    for name in captured
    if (m := _FEATURE_LAYER.fullmatch(name)) and not m.group(2)
  )
  if not layers:
    raise ValueError(
      f'{type(discriminator).__name__} has no convolution layers named conv_<i>.'
    )
  outputs = []
  for i in layers:
    pre = captured.get(f'conv_{i}_bn', captured[f'conv_{i}'])['__call__'][0]
    outputs.append(discriminator.layers.leaky_relu(pre))
  return outputs


@functools.partial(jax.jit, static_argnums=0)
def _pooled_features(discriminator: nn.Module, variables: Any, x: jax.Array):
  maps = layer_activations(discriminator, variables, x)
  flat = [adaptive_max_pool(m).reshape(len(x), -1) for m in maps]
  return jnp.concatenate(flat, axis=1).astype(jnp.float32)


def discriminator_for(config: ml_collections.ConfigDict) -> nn.Module:
  if config.model.get('num_classes', 0):
    raise ValueError(
      "This run's D is class-conditional (config.conditional=True): its "
      'features depend on the label given with each image, so there are no '
      'label-free features to read; use an unconditional run.'
    )
  if config.model.arch == 'mlp':
    raise ValueError(
      "model.arch='mlp' has no convolutions, so it has no convolutional "
      "features to probe; use a workdir trained with arch 'dcgan', "
      "'tf_tutorial' or 'conv28'."
    )
  _, discriminator = models.create_models(
    config.model, image_size=config.image_size, num_channels=config.num_channels
  )
  return discriminator


def feature_count(config: ml_collections.ConfigDict) -> int:
  """The length of `discriminator_features`' rows for this config."""
  discriminator = discriminator_for(config)
  x = jax.ShapeDtypeStruct(
    (1, config.image_size, config.image_size, config.num_channels), jnp.float32
  )
  variables = jax.eval_shape(
    lambda x: discriminator.init(jax.random.key(0), x, train=False), x
  )
  return int(jax.eval_shape(_pooled_features, discriminator, variables, x).shape[1])


def discriminator_features(
  config: ml_collections.ConfigDict,
  d_variables: dict[str, Any],
  images_uint8: np.ndarray,
  *,
  batch_size: int = 256,
) -> np.ndarray:
  """D's pooled convolutional features of uint8 images: float32 [N, F].

  config: the run's config (model, image_size, num_channels). d_variables:
  {'params': ..., 'batch_stats': ...} of D (e.g. from a checkpoint's
  d_params and d_batch_stats). images_uint8: [N, image_size, image_size,
  num_channels], scaled to [-1, 1] here as in training. One jitted program
  runs over fixed-size batches (the last one padded), so any N compiles
  once. See the module docstring for what the features are and how many.
  """
  return features_fn(config, d_variables, batch_size=batch_size)(images_uint8)


def features_fn(
  config: ml_collections.ConfigDict,
  d_variables: dict[str, Any],
  *,
  batch_size: int = 256,
) -> Callable[[np.ndarray], np.ndarray]:
  """`discriminator_features` as a function of the images alone, D's
  variables placed on the device once: for calls on many chunks of a data
  set (the memorisation search streams the training set through it)."""
  discriminator = discriminator_for(config)
  want = (config.image_size, config.image_size, config.num_channels)
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  variables = jax.device_put(  # Once, not with every batch.
    {'params': d_variables['params'], 'batch_stats': d_variables.get('batch_stats', {})}
  )
  num_features = feature_count(config)

  def features(images_uint8: np.ndarray) -> np.ndarray:
    images = np.asarray(images_uint8)
    if images.ndim != 4 or tuple(images.shape[1:]) != want or images.dtype != np.uint8:
      raise ValueError(
        f"Expected uint8 images [N, {', '.join(map(str, want))}] (the config's "
        f'image_size and num_channels), got {images.dtype} {images.shape}.'
      )
    out = np.empty((len(images), num_features), np.float32)
    for start in range(0, len(images), batch_size):
      batch = input_pipeline.scale_images(images[start : start + batch_size])
      n = len(batch)
      if n < batch_size:
        pad = np.zeros((batch_size - n, *batch.shape[1:]), np.float32)
        batch = np.concatenate([batch, pad])
      maps = _pooled_features(discriminator, variables, jnp.asarray(batch))
      out[start : start + n] = np.asarray(maps[:n])
    return out

  return features


def workspace_bytes(config: ml_collections.ConfigDict, batch_size: int = 256) -> int:
  """Bytes `features_fn` allocates per call besides its output: one batch of
  float images and D's float32 feature maps for it (an estimate)."""
  discriminator = discriminator_for(config)
  x = jax.ShapeDtypeStruct(
    (1, config.image_size, config.image_size, config.num_channels), jnp.float32
  )
  variables = jax.eval_shape(
    lambda x: discriminator.init(jax.random.key(0), x, train=False), x
  )
  maps = jax.eval_shape(
    lambda v, x: layer_activations(discriminator, v, x), variables, x
  )
  # The batch on host and on device; each map before and after LeakyReLU.
  per_image = 2 * x.size + 2 * sum(m.size for m in maps)
  return 4 * batch_size * per_image
