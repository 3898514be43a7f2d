"""Draw images from a trained generator.

Loads the latest checkpoint of a workdir with the config it was trained
with:

  python -m dcgan_jax.sample --workdir=DIR --num_samples=1000 --output=s.npz
  python -m dcgan_jax.sample --workdir=DIR --num_samples=64 --output=grid.png

An .npz holds `images`, uint8 [N, H, W, C]; a .png holds a grid of them.
"""

import os
from collections.abc import Sequence

import numpy as np
from absl import flags

from dcgan_jax import cli
from dcgan_jax.core import generate, rundir
from dcgan_jax.util import figures, files, progress

COMMAND = cli.Command('sample', __doc__)
COMMAND.path('workdir', None, 'Training workdir (a single GAN).')
COMMAND.integer('num_samples', 64, 'How many images.', lower_bound=1)
COMMAND.path('output', None, '.npz (the images) or .png (a grid of them).')
COMMAND.integer('seed', None, 'Seed of z (default: the run seed: its sample grids).')
COMMAND.enum(
  'batchnorm',
  None,
  generate.BATCHNORM_MODES,
  "G's BatchNorm statistics: 'running' averages (each image depends on its z "
  "only), this 'batch' of z's, or a fixed 'reference' batch's (default: the "
  "config's sample_batchnorm).",
)
COMMAND.enum('generator', 'auto', rundir.GENERATORS, rundir.GENERATOR_HELP)
COMMAND.string(
  'labels',
  None,
  'Conditional runs: the classes to draw, comma-separated (e.g. 3 or 0,7), '
  'repeated over num_samples (default: as many of each class, a grid row each).',
)
COMMAND.required('workdir', 'output')


def sample_from_workdir(
  workdir: str,
  num_samples: int,
  *,
  seed: int | None = None,
  batch_size: int = 500,
  batchnorm: str | None = None,
  generator: str = 'auto',
  labels: Sequence[int] | None = None,
) -> np.ndarray:
  """uint8 [num_samples, H, W, C] from the latest checkpoint in `workdir`.

  z comes from `seed` (default: the training run's own sample key), in chunks
  of `batch_size` (see `generate.images`). `batchnorm`: see
  `generate.generator_fn` (default: the run's config.sample_batchnorm).
  `generator`: G's moving average or G itself (`rundir.resolve_generator`).
  `labels`: a conditional run's classes, repeated over the samples (default
  `generate.default_labels`).
  """
  with progress.timed(f'Restoring the checkpoint of {workdir}'):
    run = rundir.load_run(workdir, generator)
  fn = generate.generator_fn(run.config, run.g_variables, batchnorm=batchnorm)
  if labels is not None:
    labels = np.resize(np.asarray(labels, np.int32), num_samples)
  z = generate.run_z(run.config, num_samples, seed, labels)
  return generate.images(fn, z, batch_size=batch_size)


def _sample(args: flags.FlagValues) -> None:
  ext = os.path.splitext(args.output)[1].lower()
  if ext not in ('.npz', '.png'):
    raise ValueError(f'--output must end in .npz or .png, got {args.output!r}.')
  labels = None
  if args.labels is not None:
    try:
      labels = [int(x) for x in args.labels.split(',') if x.strip()]
    except ValueError:
      labels = []
    if not labels:
      raise ValueError(
        f'--labels must be class numbers separated by commas, got {args.labels!r}.'
      )
  images = sample_from_workdir(
    args.workdir,
    args.num_samples,
    seed=args.seed,
    batchnorm=args.batchnorm,
    generator=args.generator,
    labels=labels,
  )
  with progress.timed(f'Writing {args.output}'):
    if ext == '.png':
      config = rundir.load_config(args.workdir)
      columns = None if labels else generate.grid_columns(config, len(images))
      figures.save_png(figures.make_grid(images, num_cols=columns), args.output)
    else:
      with files.atomic_write(args.output) as f:
        np.savez_compressed(f, images=images)
  print(f'Wrote {len(images)} samples {images.shape[1:]} to {args.output}')


def main(argv: Sequence[str]) -> None:
  COMMAND.run(_sample, argv)


if __name__ == '__main__':
  main(cli.main_argv())
