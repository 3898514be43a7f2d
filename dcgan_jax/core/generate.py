"""G -> images: the one place that turns generator variables into samples.

`generate` applies G with BatchNorm in one of three modes (`BATCHNORM_MODES`);
`generator_fn` is a jitted z -> G(z) for a run; `images` draws uint8 samples
in chunks; `fixed_z_sampler` is the trainer's grid of the run's own sample z;
`eval_z` the z of evaluation, never equal to the training run's.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import linen as nn

from dcgan_jax.core.state import split_root_key
from dcgan_jax.networks import models
from dcgan_jax.util import progress

# Folded into key(seed): z for evaluation never equals the training run's z.
_EVAL_KEY_TAG = 0x6576616C  # 'eval'


def to_uint8(images: jax.Array | np.ndarray) -> np.ndarray:
  """Maps images in [-1, 1] to uint8 [0, 255] (rounded, clipped)."""
  images = np.asarray(images, dtype=np.float32)
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


BATCHNORM_MODES = ('running', 'batch', 'reference')


REFERENCE_BATCH = 256


_REFERENCE_KEY_TAG = 0x72656631  # 'ref1': folded into key(seed).


def generate(
  generator: nn.Module,
  variables: dict[str, Any],
  z: jax.Array,
  *,
  batchnorm: str = 'running',
) -> jax.Array:
  """G(z) in [-1, 1], BatchNorm normalising with

  - 'running': the running averages kept during training (inference mode;
    each image depends on its own z only);
  - 'batch': the statistics of this batch of z (as in training and in the
    reference implementations' samples; each image depends on the batch).

  For 'reference' statistics, pass the variables of `reference_variables`
  with batchnorm='running'.
  """
  if batchnorm == 'running':
    return generator.apply(variables, z, train=False)
  if batchnorm == 'batch':
    images, _ = generator.apply(variables, z, train=True, mutable=['batch_stats'])
    return images
  raise ValueError(
    f"batchnorm must be 'running' or 'batch' here, got {batchnorm!r} "
    "('reference': use reference_variables)."
  )


def reference_variables(
  generator: nn.Module, variables: dict[str, Any], z_reference: jax.Array
) -> dict[str, Any]:
  """G's variables with every BatchNorm's statistics replaced by those of the
  batch G(z_reference): generate with them in 'running' mode and each image
  looks like a batch-statistics sample, yet depends on its own z only (the
  reference batch of Salimans et al. 2016's virtual BatchNorm, fixed)."""
  if 'batch_stats' not in variables:
    return variables  # No BatchNorm.
  layers = dataclasses.replace(generator.layers, bn_momentum=0.0)
  _, updated = generator.clone(layers=layers).apply(
    variables, z_reference, train=True, mutable=['batch_stats']
  )  # Momentum 0: the new "running" statistics are the batch's own.
  return {**variables, 'batch_stats': updated['batch_stats']}


def reference_z(key_seed: int, z_dim: int, z_dist: str) -> jax.Array:
  """The fixed reference batch of z for 'reference' mode, from `key_seed`."""

  key = jax.random.fold_in(jax.random.key(key_seed), _REFERENCE_KEY_TAG)
  return models.sample_z(key, REFERENCE_BATCH, z_dim, z_dist)


def _generator(config: ml_collections.ConfigDict) -> nn.Module:
  generator, _ = models.create_models(
    config.model, image_size=config.image_size, num_channels=config.num_channels
  )
  return generator


def generator_fn(
  config: ml_collections.ConfigDict,
  variables: dict[str, Any],
  *,
  batchnorm: str | None = None,
) -> Callable[[jax.Array], jax.Array]:
  """A jitted z -> G(z) in [-1, 1] for a run's config and G variables, with
  BatchNorm in `batchnorm` mode (default config.sample_batchnorm): 'running',
  'batch' or 'reference' (statistics of a fixed batch of 256 z drawn from
  the run's seed; each image depends on its own z only)."""
  batchnorm = batchnorm or config.sample_batchnorm
  if batchnorm not in BATCHNORM_MODES:
    raise ValueError(f'batchnorm must be one of {BATCHNORM_MODES}, got {batchnorm!r}.')
  generator = _generator(config)
  if batchnorm == 'reference':
    z_ref = reference_z(config.seed, config.model.z_dim, config.model.z_dist)
    variables = reference_variables(generator, variables, z_ref)
    batchnorm = 'running'
  fn = jax.jit(functools.partial(generate, generator, batchnorm=batchnorm))
  return functools.partial(fn, variables)


def images(
  fn: Callable[[jax.Array], jax.Array], z: jax.Array, *, batch_size: int = 500
) -> np.ndarray:
  """uint8 [len(z), H, W, C] samples fn(z), in chunks of `batch_size` z so
  that large requests fit in memory (in 'batch' BatchNorm mode the chunk is
  the batch whose statistics G normalises with)."""
  count = progress.Progress('Drawing samples', len(z), unit='images')
  chunks = []
  for i in range(0, len(z), batch_size):
    if i == 0:  # The first call compiles G.
      with progress.timed('Compiling G (and drawing its first chunk)'):
        chunks.append(to_uint8(fn(z[i : i + batch_size])))
    else:
      chunks.append(to_uint8(fn(z[i : i + batch_size])))
    count.update(len(chunks[-1]))
  count.close()
  return np.concatenate(chunks)


def sample_z(config: ml_collections.ConfigDict, key: jax.Array, num: int) -> jax.Array:
  """`num` z of the run's z dimension and distribution from `key`."""
  return models.sample_z(key, num, config.model.z_dim, config.model.z_dist)


def run_z(config: ml_collections.ConfigDict, num: int, seed: int | None = None):
  """The z of the run's sample key (that of `seed` instead, if given): the
  z of the trainer's sample grids and of the sample command."""
  root_key = jax.random.key(config.seed if seed is None else seed)
  return sample_z(config, split_root_key(root_key)[2], num)


def eval_z(config: ml_collections.ConfigDict, num: int, seed: int = 0) -> jax.Array:
  """The z of evaluation: from fold_in(key(seed), 'eval'), so never the
  training run's own z."""
  return sample_z(config, jax.random.fold_in(jax.random.key(seed), _EVAL_KEY_TAG), num)


def fixed_z_sampler(
  config: ml_collections.ConfigDict,
) -> Callable[[dict[str, Any]], np.ndarray]:
  """G's variables -> uint8 samples G(z) [N, H, W, C] for the run's fixed z
  (config.num_sample_images of them), compiled once for the whole run."""
  generator = _generator(config)
  z = run_z(config, config.num_sample_images)
  generate_fn = jax.jit(
    functools.partial(generate, generator, batchnorm=config.sample_batchnorm)
  )
  return lambda variables: to_uint8(generate_fn(variables, z))
