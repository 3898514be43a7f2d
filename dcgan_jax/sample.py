"""Draw images from a trained generator.

Library functions turn generator outputs into uint8 images and grids; the
command line loads the latest checkpoint of a workdir with the config it was
trained with:

  python -m dcgan_jax.sample --workdir=DIR --num_samples=1000 --output=s.npz
  python -m dcgan_jax.sample --workdir=DIR --num_samples=64 --output=grid.png

An .npz holds `images`, uint8 [N, H, W, C]; a .png holds a grid of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from PIL import Image


def to_uint8(images: jax.Array | np.ndarray) -> np.ndarray:
  """Maps images in [-1, 1] to uint8 [0, 255] (rounded, clipped)."""
  images = np.asarray(images, dtype=np.float32)
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, *, pad: int = 2, num_cols: int | None = None):
  """Tiles uint8 [N, H, W, C] images into one [rows*(H+pad)+pad, ..., C] grid."""
  n, h, w, c = images.shape
  num_cols = num_cols or math.ceil(math.sqrt(n))
  num_rows = math.ceil(n / num_cols)
  grid = np.full(
    (num_rows * (h + pad) + pad, num_cols * (w + pad) + pad, c), 255, np.uint8
  )
  for i, image in enumerate(images):
    r, col = divmod(i, num_cols)
    top, left = pad + r * (h + pad), pad + col * (w + pad)
    grid[top : top + h, left : left + w] = image
  return grid


def save_png(image: np.ndarray, path: str) -> None:
  """Writes a uint8 [H, W, C] image as PNG, atomically (temp file + rename)."""
  if image.shape[-1] == 1:
    image = image[..., 0]
  tmp = f'{path}.tmp-{os.getpid()}'
  Image.fromarray(image).save(tmp, format='PNG')
  os.replace(tmp, path)


BATCHNORM_MODES = ('running', 'batch', 'reference')
# Size of the fixed reference batch of z ('reference' BatchNorm mode).
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
  from dcgan_jax import models

  key = jax.random.fold_in(jax.random.key(key_seed), _REFERENCE_KEY_TAG)
  return models.sample_z(key, REFERENCE_BATCH, z_dim, z_dist)


def generator_fn(
  config: Any, variables: dict[str, Any], *, batchnorm: str | None = None
) -> Callable[[jax.Array], jax.Array]:
  """A jitted z -> G(z) in [-1, 1] for a run's config and G variables, with
  BatchNorm in `batchnorm` mode (default config.sample_batchnorm): 'running',
  'batch' or 'reference' (statistics of a fixed batch of 256 z drawn from
  the run's seed; each image depends on its own z only)."""
  from dcgan_jax import models

  batchnorm = batchnorm or config.sample_batchnorm
  if batchnorm not in BATCHNORM_MODES:
    raise ValueError(f'batchnorm must be one of {BATCHNORM_MODES}, got {batchnorm!r}.')
  generator, _ = models.create_models(
    config.model, image_size=config.image_size, num_channels=config.num_channels
  )
  if batchnorm == 'reference':
    z_ref = reference_z(config.seed, config.model.z_dim, config.model.z_dist)
    variables = reference_variables(generator, variables, z_ref)
    batchnorm = 'running'
  fn = jax.jit(lambda v, z: generate(generator, v, z, batchnorm=batchnorm))
  return functools.partial(fn, variables)


def sample_from_workdir(
  workdir: str,
  num_samples: int,
  *,
  seed: int | None = None,
  batch_size: int = 500,
  batchnorm: str | None = None,
) -> np.ndarray:
  """uint8 [num_samples, H, W, C] from the latest checkpoint in `workdir`.

  z comes from `seed` (default: the training run's own sample key), in chunks
  of `batch_size` so large requests fit in memory (in 'batch' mode the chunk
  is the batch whose statistics BatchNorm uses). `batchnorm`: see
  `generator_fn` (default: the run's config.sample_batchnorm).
  """
  from dcgan_jax import models, train  # Deferred: keeps `make_grid` light.

  config, state = load_generator(workdir)
  variables = {'params': state.g_params, 'batch_stats': state.g_batch_stats}
  root_key = jax.random.key(config.seed if seed is None else seed)
  sample_key = train.split_root_key(root_key)[2]
  z = models.sample_z(sample_key, num_samples, config.model.z_dim, config.model.z_dist)
  gen = generator_fn(config, variables, batchnorm=batchnorm)
  chunks = [
    to_uint8(gen(z[i : i + batch_size])) for i in range(0, num_samples, batch_size)
  ]
  return np.concatenate(chunks)


def load_generator(workdir: str):
  """(config, state) of the latest checkpoint of a single-GAN workdir, with
  errors that say what to pass instead."""
  from dcgan_jax import train

  config = train.load_config(workdir)
  if config.get('num_seeds', 1) > 1:
    members = ', '.join(wd for _, wd in train.seed_members(config, workdir))
    raise FileNotFoundError(
      f'{workdir} holds {config.num_seeds} GANs (num_seeds); use --workdir '
      f'set to one of: {members}.'
    )
  state = train.restore_latest(workdir, config)
  if state is None:
    raise FileNotFoundError(
      f'No checkpoint under {os.path.join(workdir, "checkpoints")}: train first '
      f'with `python launch.py --config=... --workdir={workdir}`.'
    )
  return config, state


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    prog='python -m dcgan_jax.sample', description=__doc__.split('\n\n')[0]
  )
  parser.add_argument('--workdir', required=True, help='Training workdir.')
  parser.add_argument('--num_samples', type=int, default=64)
  parser.add_argument('--output', required=True, help='.npz or .png file.')
  parser.add_argument(
    '--seed', type=int, default=None, help='z seed (default: the run seed).'
  )
  parser.add_argument(
    '--batchnorm',
    choices=BATCHNORM_MODES,
    default=None,
    help="G's BatchNorm statistics: 'running' averages (each image depends on "
    "its z only), this 'batch' of z's, or a fixed 'reference' batch's "
    "(default: the config's sample_batchnorm).",
  )
  args = parser.parse_args(argv)
  if args.num_samples < 1:
    parser.error('--num_samples must be at least 1.')
  ext = os.path.splitext(args.output)[1].lower()
  if ext not in ('.npz', '.png'):
    parser.error(f'--output must end in .npz or .png, got {args.output!r}.')
  try:
    images = sample_from_workdir(
      args.workdir, args.num_samples, seed=args.seed, batchnorm=args.batchnorm
    )
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f'error: {e}')
  if ext == '.png':
    save_png(make_grid(images), args.output)
  else:
    np.savez_compressed(args.output, images=images)
  print(f'Wrote {len(images)} samples {images.shape[1:]} to {args.output}')


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  main(sys.argv[1:])
