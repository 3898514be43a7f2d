"""G -> images: the one place that turns generator variables into samples.

`generate` applies G with BatchNorm in one of three modes (`BATCHNORM_MODES`);
`generator_fn` is a jitted z -> G(z) for a run; `images` draws uint8 samples
in chunks; `fixed_z_sampler` is the trainer's grid of the run's own sample z;
`eval_z` the z of evaluation, never equal to the training run's.
"""

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
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


def reference_z(key_seed: int, z_dim: int, z_dist: str, classes: int = 0) -> jax.Array:
  """The fixed reference batch of z for 'reference' mode, from `key_seed`
  (with the one-hot labels of a conditional G: as many of each class)."""
  key = jax.random.fold_in(jax.random.key(key_seed), _REFERENCE_KEY_TAG)
  z = models.sample_z(key, REFERENCE_BATCH, z_dim, z_dist)
  if not classes:
    return z
  labels = np.arange(REFERENCE_BATCH) % classes
  return jnp.concatenate([z, jax.nn.one_hot(labels, classes, dtype=z.dtype)], -1)


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
    z_ref = reference_z(
      config.seed, config.model.z_dim, config.model.z_dist, num_classes(config)
    )
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


def num_classes(config: ml_collections.ConfigDict) -> int:
  """Classes of a conditional run's G (0: unconditional)."""
  return config.model.get('num_classes', 0)


def default_labels(config: ml_collections.ConfigDict, num: int) -> np.ndarray | None:
  """The classes asked of a conditional G when none are given: as many of
  each (up to one), in blocks, class 0 first: a grid with
  `grid_columns` columns has a row per class. None if unconditional."""
  classes = num_classes(config)
  if not classes:
    return None
  return np.repeat(np.arange(classes), -(-num // classes))[:num].astype(np.int32)


def grid_columns(config: ml_collections.ConfigDict, num: int) -> int | None:
  """Columns of a grid of `num` samples with `default_labels`: one row per
  class for a conditional run; None (square) otherwise."""
  classes = num_classes(config)
  return -(-num // classes) if classes else None


def with_labels(
  config: ml_collections.ConfigDict, z: jax.Array, labels: Sequence[int] | None = None
) -> jax.Array:
  """G's input for z: a conditional G's is [z, one-hot label] (`labels`,
  default `default_labels`); an unconditional G's is z. A ValueError (one
  line, what to pass) for labels an unconditional G or the classes cannot
  take."""
  classes = num_classes(config)
  if not classes:
    if labels is not None:
      raise ValueError(
        'This run is not class-conditional (config.conditional=False): leave '
        'out --labels.'
      )
    return z
  labels = default_labels(config, len(z)) if labels is None else np.asarray(labels)
  if labels.shape != (len(z),) or labels.min() < 0 or labels.max() >= classes:
    raise ValueError(
      f'--labels must be class numbers in [0, {classes}), one per sample; got '
      f'{labels.tolist()[:10]}{"..." if len(labels) > 10 else ""}.'
    )
  onehot = jax.nn.one_hot(labels, classes, dtype=jnp.float32)
  return jnp.concatenate([jnp.asarray(z, jnp.float32), onehot], axis=-1)


def sample_z(
  config: ml_collections.ConfigDict,
  key: jax.Array,
  num: int,
  labels: Sequence[int] | None = None,
) -> jax.Array:
  """`num` inputs of the run's G from `key`: z of its dimension and
  distribution, with the one-hot `labels` of a conditional G appended
  (`with_labels`)."""
  z = models.sample_z(key, num, config.model.z_dim, config.model.z_dist)
  return with_labels(config, z, labels)


def run_z(
  config: ml_collections.ConfigDict,
  num: int,
  seed: int | None = None,
  labels: Sequence[int] | None = None,
):
  """The z of the run's sample key (that of `seed` instead, if given): the
  z of the trainer's sample grids and of the sample command."""
  root_key = jax.random.key(config.seed if seed is None else seed)
  return sample_z(config, split_root_key(root_key)[2], num, labels)


def eval_z(config: ml_collections.ConfigDict, num: int, seed: int = 0) -> jax.Array:
  """The z of evaluation: from fold_in(key(seed), 'eval'), so never the
  training run's own z (a conditional G's with `default_labels`)."""
  return sample_z(config, jax.random.fold_in(jax.random.key(seed), _EVAL_KEY_TAG), num)


def fixed_z_sampler(
  config: ml_collections.ConfigDict,
) -> Callable[[dict[str, Any]], np.ndarray]:
  """G's variables -> uint8 samples G(z) [N, H, W, C] for the run's fixed z
  (config.num_sample_images of them; for a conditional run, rounded up to
  a row per class of `grid_columns`), compiled once for the whole run."""
  generator = _generator(config)
  num = config.num_sample_images
  if num_classes(config):
    num = num_classes(config) * grid_columns(config, num)
  z = run_z(config, num)
  generate_fn = jax.jit(
    functools.partial(generate, generator, batchnorm=config.sample_batchnorm)
  )
  return lambda variables: to_uint8(generate_fn(variables, z))
