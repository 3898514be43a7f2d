"""Pictures of what a trained DCGAN learned (the paper's qualitative figures).

  python -m dcgan_jax.visualize sheet --workdir=W [--num=100] [--seed=0]
  python -m dcgan_jax.visualize interpolate --workdir=W [--pairs=6] [--steps=10]
  python -m dcgan_jax.visualize arithmetic --workdir=W --a=I,J,K --b=I,J,K --c=I,J,K
  python -m dcgan_jax.visualize movie --workdir=W [--fps=4]
  python -m dcgan_jax.visualize guided_backprop --workdir=W [--layer=-1] [--units=6]
  python -m dcgan_jax.visualize batchnorm_modes --workdir=W [--small_batch=2]
  python -m dcgan_jax.visualize forget --workdir=W [--layer=NAME] [--boxes=auto|FILE]
  python -m dcgan_jax.visualize gallery --workdir=W --output=DIR

Every command writes into --output (default W/visualize/) and prints the
files. G's BatchNorm: --batchnorm 'running' (default: its running averages,
each image a function of its own z only, as needed to compare images of
different z), 'reference' (the statistics of a fixed batch of 256 z: looks
like training-time samples, still one image per z) or 'batch' (statistics
of the batch being drawn: images depend on each other).

- sheet: a numbered sheet of samples from z seed `seed`; its z are saved
  beside it (sheet_seed<S>.npz) and `arithmetic` picks concepts by these
  numbers.
- interpolate: for pairs of random z, G along the straight line ('linear')
  and along the great circle ('slerp', White 2016) between them: a PNG grid
  per method (one pair per row) and a GIF that walks through all pairs.
- arithmetic: the paper's vector arithmetic (section 6.3.2): the mean z of
  the sheet samples a, b and c (three per concept), then
  mean(a) - mean(b) + mean(c), shown with samples at small random
  perturbations of it (uniform noise of +-`noise`).
- movie: the fixed-z sample grids the run saved (W/samples/step_*.png) as an
  animated GIF: training in motion.
- guided_backprop: for D's layer `layer`, the `units` channels with the
  largest activation over real images; for each, its `images_per_unit`
  strongest images and the guided backpropagation (Springenberg et al.
  2015) of its strongest activation to the input, for the trained D and
  for a randomly initialised D side by side (the paper's figure 5). Two
  numbers per D (also in a JSON): how closely |map| follows the image
  (correlation) and how much of the map is pixel-level texture (roughness:
  about 1 for white noise).
- batchnorm_modes: the same z in each BatchNorm mode, plus 'batch' mode in
  batches of `small_batch`, with each panel's difference from 'running'.
- forget: the paper's section 6.3.1 for any object a detector or boxes
  locate: G's `num` sheet samples (z seed `seed`), their object boxes (the
  data set's detector, or --boxes), a logistic regression from G's layer
  `layer` to inside-a-box, and the same z drawn again with the maps of
  positive weight zeroed (see dcgan_jax/evaluation/forgetting.py): pairs
  with and without them (PNG), and a JSON of the maps dropped, the
  regression's held-out accuracy, the detector's hit rate before and after
  and the pixel change inside and outside the boxes, and the same for as
  many maps drawn at random (a control).
- gallery: all of the above but forget, with fixed choices, into one
  directory.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image, ImageDraw

from dcgan_jax import cli
from dcgan_jax.core import generate, rundir
from dcgan_jax.core import state as state_lib
from dcgan_jax.data import input_pipeline, loader, scenes
from dcgan_jax.evaluation import d_features, forgetting
from dcgan_jax.util import figures, files, progress

OUTPUT_DIR = 'visualize'
# What this command writes into --output (and nothing else may be there).
_OUTPUT_NAMES = re.compile(
  r'(sheet_seed\d+\.(png|npz)|interpolate(_.+\.png|\.gif)|arithmetic_.+\.png'
  r'|training\.gif|guided_backprop_layer-?\d+\.(png|json)'
  r'|batchnorm_modes\.(png|json)|gallery\.json'
  r'|forget_.+_seed\d+\.(png|json)|forget_boxes_seed\d+\.json)(\.tmp-.*)?'
)


def check_output(output: str) -> None:
  """A FileExistsError unless `output` is new, empty, or holds only this
  command's pictures: it never writes among a user's files."""
  if not files.isdir(output):
    return
  others = [n for n in files.listdir(output) if not _OUTPUT_NAMES.fullmatch(n)]
  if others:
    raise FileExistsError(
      f'--output={output} already holds files this command did not write '
      f'({", ".join(others[:5])}); give a new directory, or one holding only '
      'earlier pictures.'
    )


_SHEET_KEY_TAG = 0x73686565  # 'shee'
_WALK_KEY_TAG = 0x77616C6B  # 'walk'
_PERTURB_KEY_TAG = 0x70657274  # 'pert'


# ----------------------------------------------------------------------------
# Generator and z.


@dataclasses.dataclass(frozen=True)
class Run(rundir.Run):
  """A trained run (`rundir.Run`) with its generator in one BatchNorm mode."""

  batchnorm: str = 'running'

  @functools.cached_property
  def _generator(self) -> Callable[[jax.Array], jax.Array]:
    return generate.generator_fn(
      self.config, self.g_variables, batchnorm=self.batchnorm
    )

  def generate(self, z: jax.Array | np.ndarray) -> np.ndarray:
    """uint8 images G(z) (the first call for each number of z compiles G)."""
    with progress.timed(f'G on {len(z)} z'):
      return generate.to_uint8(self._generator(jnp.asarray(z, jnp.float32)))

  def z(self, seed: int, tag: int, num: int) -> np.ndarray:
    key = jax.random.fold_in(jax.random.key(seed), tag)
    return np.asarray(generate.sample_z(self.config, key, num))


def load_run(workdir: str, batchnorm: str = 'running', generator: str = 'auto') -> Run:
  run = rundir.load_run(workdir, generator)
  if batchnorm not in generate.BATCHNORM_MODES:
    raise ValueError(
      f'batchnorm must be one of {generate.BATCHNORM_MODES}, got {batchnorm!r}.'
    )
  return Run(
    run.workdir, run.config, run.state, generator=run.generator, batchnorm=batchnorm
  )


def slerp(z0: np.ndarray, z1: np.ndarray, t: np.ndarray) -> np.ndarray:
  """Spherical interpolation [len(t), D] from z0 to z1 (linear when they
  are parallel): angle-proportional along the great circle, norms
  interpolated linearly."""
  z0, z1, t = (np.asarray(a, np.float64) for a in (z0, z1, t))
  n0, n1 = np.linalg.norm(z0), np.linalg.norm(z1)
  u0, u1 = z0 / n0, z1 / n1
  omega = np.arccos(np.clip(u0 @ u1, -1.0, 1.0))
  if omega < 1e-6:
    return lerp(z0, z1, t)
  dirs = (
    np.sin((1 - t)[:, None] * omega) * u0 + np.sin(t[:, None] * omega) * u1
  ) / np.sin(omega)
  return (dirs * ((1 - t) * n0 + t * n1)[:, None]).astype(np.float32)


def lerp(z0: np.ndarray, z1: np.ndarray, t: np.ndarray) -> np.ndarray:
  t = np.asarray(t, np.float64)[:, None]
  return ((1 - t) * z0 + t * z1).astype(np.float32)


# ----------------------------------------------------------------------------
# The tools.


def sheet(run: Run, output: str, *, num: int = 100, seed: int = 0) -> list[str]:
  """Numbered samples (PNG) and their z (npz) for `arithmetic`."""
  if num < 1:
    raise ValueError(f'num must be >= 1, got {num}.')
  z = run.z(seed, _SHEET_KEY_TAG, num)
  images = run.generate(z)
  grid = figures.labelled_grid(
    images,
    [str(i) for i in range(num)],
    num_cols=math.ceil(math.sqrt(num)),
    title=f'sample sheet, z seed {seed}, BatchNorm {run.batchnorm}',
  )
  png = figures.save_image(grid, os.path.join(output, f'sheet_seed{seed}.png'))
  npz = os.path.join(output, f'sheet_seed{seed}.npz')
  with files.atomic_write(npz) as f:
    np.savez(f, z=z, images=images, seed=seed)
  return [png, npz]


def interpolate(
  run: Run, output: str, *, pairs: int = 6, steps: int = 10, seed: int = 0, fps=8
) -> list[str]:
  """Linear and spherical walks between `pairs` pairs of z: a PNG grid per
  method and a GIF through all of them (both methods side by side)."""
  if pairs < 1 or steps < 2:
    raise ValueError(f'need pairs >= 1 and steps >= 2, got {pairs}, {steps}.')
  ends = run.z(seed, _WALK_KEY_TAG, pairs + 1)  # Consecutive pairs: a tour.
  t = np.linspace(0.0, 1.0, steps)
  written, walks = [], {}
  for name, path_fn in (('linear', lerp), ('slerp', slerp)):
    z = np.concatenate([path_fn(ends[i], ends[i + 1], t) for i in range(pairs)])
    images = run.generate(z)
    walks[name] = images.reshape(pairs, steps, *images.shape[1:])
    grid = figures.labelled_grid(
      images,
      num_cols=steps,
      title=f'{name} interpolation, {steps} steps per row (z seed {seed})',
    )
    written.append(
      figures.save_image(grid, os.path.join(output, f'interpolate_{name}.png'))
    )
  frames = []
  for p in progress.track(range(pairs), 'Interpolation frames', unit='walks'):
    for s in range(0 if p == 0 else 1, steps):  # Pair p starts where p-1 ended.
      frames.append(
        figures.labelled_grid(
          np.stack([walks['linear'][p, s], walks['slerp'][p, s]]),
          ['linear', 'slerp'],
          num_cols=2,
        )
      )
  written.append(
    figures.save_gif(frames, os.path.join(output, 'interpolate.gif'), fps=fps)
  )
  return written


def _indices(spec: str | Sequence[int], name: str, num: int) -> list[int]:
  if isinstance(spec, str):
    try:
      spec = [int(s) for s in spec.split(',') if s.strip()]
    except ValueError as e:
      raise ValueError(f'--{name} must be comma-separated sheet numbers: {e}') from e
  bad = [i for i in spec if not 0 <= i < num]
  if not spec or bad:
    raise ValueError(
      f'--{name}={",".join(map(str, spec))}: give sheet numbers in 0..{num - 1} '
      '(see the sheet PNG).'
    )
  return list(spec)


def arithmetic(
  run: Run,
  output: str,
  *,
  a: str | Sequence[int],
  b: str | Sequence[int],
  c: str | Sequence[int],
  sheet_seed: int = 0,
  sheet_size: int = 100,
  num_perturbed: int = 8,
  noise: float = 0.25,
  seed: int = 0,
) -> list[str]:
  """mean z(a) - mean z(b) + mean z(c) from the numbered sheet, with
  `num_perturbed` samples at uniform perturbations of +-`noise`."""
  z_sheet = run.z(sheet_seed, _SHEET_KEY_TAG, sheet_size)
  a, b, c = (_indices(v, n, sheet_size) for v, n in ((a, 'a'), (b, 'b'), (c, 'c')))
  means = [z_sheet[idx].mean(axis=0) for idx in (a, b, c)]
  result = means[0] - means[1] + means[2]
  key = jax.random.fold_in(jax.random.key(seed), _PERTURB_KEY_TAG)
  shape = (num_perturbed, result.shape[0])
  perturbed = result + np.asarray(
    jax.random.uniform(key, shape, minval=-noise, maxval=noise)
  )
  concept_images = [run.generate(z_sheet[idx]) for idx in (a, b, c)]
  mean_images = run.generate(np.stack(means))
  result_images = run.generate(np.concatenate([result[None], perturbed]))
  cols = max(len(a), len(b), len(c)) + 1
  rows, labels, row_labels = [], [], []
  blank = np.full_like(mean_images[0], 255)
  for name, idx, images, mean in zip(
    'abc', (a, b, c), concept_images, mean_images, strict=True
  ):
    row = list(images) + [blank] * (cols - 1 - len(idx)) + [mean]
    rows.extend(row)
    labels.extend([f'#{i}' for i in idx] + [''] * (cols - 1 - len(idx)) + ['mean z'])
    row_labels.append(name)
  top = figures.labelled_grid(
    np.stack(rows),
    labels,
    num_cols=cols,
    row_labels=row_labels,
    title=f'concepts from sheet seed {sheet_seed}: a - b + c',
  )
  bottom = figures.labelled_grid(
    result_images,
    ['a-b+c'] + [f'+noise {i + 1}' for i in range(num_perturbed)],
    num_cols=min(len(result_images), 9),
    title=f'result, and perturbations of +-{noise}',
  )
  canvas = Image.new(
    'RGB', (max(top.width, bottom.width), top.height + bottom.height + 8), 'white'
  )
  canvas.paste(top, (0, 0))
  canvas.paste(bottom, (0, top.height + 8))
  name = 'arithmetic_{}_minus_{}_plus_{}.png'.format(
    *('-'.join(map(str, idx)) for idx in (a, b, c))
  )
  return [figures.save_image(canvas, os.path.join(output, name))]


def movie(run_or_workdir: Run | str, output: str, *, fps: float = 4) -> list[str]:
  """W/samples/step_*.png (same z throughout training) as one GIF, each frame
  labelled with its step."""
  workdir = getattr(run_or_workdir, 'workdir', run_or_workdir)
  samples = files.join(workdir, rundir.SAMPLES_DIR)
  names = files.listdir(samples) if files.isdir(samples) else []
  steps = sorted(
    (int(m.group(1)), files.join(samples, name))
    for name in names
    if (m := re.fullmatch(r'step_(\d+)\.png', name))
  )
  if len(steps) < 2:
    raise ValueError(
      f'{workdir}/samples has {len(steps)} sample grid(s); a movie needs at least '
      'two (lower --config.sample_every_steps when training).'
    )
  frames = []
  for step, path in progress.track(steps, 'Movie frames', unit='frames'):
    with files.open(path, 'rb') as f, Image.open(f) as image:
      grid = image.convert('RGB')
    factor = max(1, math.ceil(256 / min(grid.size)))
    grid = grid.resize((grid.width * factor, grid.height * factor), Image.NEAREST)
    frame = Image.new('RGB', (grid.width, grid.height + 16), 'white')
    frame.paste(grid, (0, 16))
    ImageDraw.Draw(frame).text((4, 2), f'step {step}', fill='black')
    frames.append(frame)
  path = os.path.join(output, 'training.gif')
  return [figures.save_gif(frames, path, fps=fps, hold_last=1.5)]


def guided_backprop_maps(
  config: ml_collections.ConfigDict,
  d_variables: dict[str, Any],
  images: np.ndarray,
  *,
  layer: int = -1,
  units: int = 6,
  images_per_unit: int = 3,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Guided backpropagation of D's top units to the input.

  Picks the `units` channels of D's conv layer `layer` with the largest
  activation anywhere over `images` (uint8 [N, H, W, C]); for each, the
  `images_per_unit` images on which that channel is strongest, and the
  gradient of its strongest activation (one position of one image) with
  respect to that image, through guided LeakyReLUs, BatchNorm in inference
  mode.

  Returns (unit indices [U], image indices [U, K], maps [U, K, H, W, C]).
  """
  discriminator = d_features.discriminator_for(config)
  guided = discriminator.clone(
    layers=dataclasses.replace(discriminator.layers, guided_backprop=True)
  )
  variables = {
    'params': d_variables['params'],
    'batch_stats': d_variables.get('batch_stats', {}),
  }
  x = jnp.asarray(input_pipeline.scale_images(images))

  @jax.jit
  def strongest_per_image(x):
    maps = d_features.layer_activations(guided, variables, x)[layer]
    return maps.max(axis=(1, 2))  # [N, C]

  strongest = np.asarray(strongest_per_image(x))
  num_units = strongest.shape[1]
  if not 0 < units <= num_units:
    raise ValueError(f'units must be in 1..{num_units} for layer {layer}.')
  if not 0 < images_per_unit <= len(images):
    raise ValueError(f'images_per_unit must be in 1..{len(images)}.')
  chosen = np.argsort(-strongest.max(axis=0), kind='stable')[:units]
  image_idx = np.stack(
    [np.argsort(-strongest[:, u], kind='stable')[:images_per_unit] for u in chosen]
  )

  @jax.jit
  def gradient(image, unit):
    def strongest_activation(img):
      act = d_features.layer_activations(guided, variables, img[None])[layer]
      return act[0, :, :, unit].max()

    return jax.grad(strongest_activation)(image)

  maps = [
    [np.asarray(gradient(x[n], unit)) for n in row]
    for unit, row in progress.track(
      list(zip(chosen, image_idx, strict=True)), 'Guided backprop maps', unit='units'
    )
  ]
  return chosen, image_idx, np.asarray(maps)


def gradient_to_uint8(maps: np.ndarray) -> np.ndarray:
  """Each map [..., H, W, C] normalised to its own max |value|, shown around
  mid-grey."""
  axes = tuple(range(maps.ndim - 3, maps.ndim))
  scale = np.abs(maps).max(axis=axes, keepdims=True) + 1e-12
  out = 0.5 + 0.5 * maps / scale
  return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def map_statistics(maps: np.ndarray, images: np.ndarray) -> dict[str, float]:
  """Two numbers that say what guided-backprop maps [N, H, W, C] of uint8
  images [N, H, W, C] look like, averaged over the maps:

  - image_correlation: Pearson correlation, over pixels, of |map| with the
    image's intensity (channel mean). High: the unit's gradient follows the
    image's strokes or objects.
  - roughness: mean squared difference between neighbouring pixels of the
    map over twice its mean square. 0 for a constant map, about 1 for
    white noise, 2 for a checkerboard: how much of the map is pixel-level
    texture.
  """
  m = maps.astype(np.float64).reshape(-1, *maps.shape[-3:])
  im = images.astype(np.float64).reshape(-1, *images.shape[-3:]).mean(-1)
  mag = np.abs(m).mean(-1)
  a = mag.reshape(len(mag), -1)
  b = im.reshape(len(im), -1)
  a = a - a.mean(1, keepdims=True)
  b = b - b.mean(1, keepdims=True)
  denom = np.sqrt((a * a).sum(1) * (b * b).sum(1))
  corr = np.where(denom > 0, (a * b).sum(1) / np.maximum(denom, 1e-30), 0.0)
  dy = np.diff(m, axis=1) ** 2
  dx = np.diff(m, axis=2) ** 2
  neighbours = (dy.sum((1, 2, 3)) + dx.sum((1, 2, 3))) / (dy[0].size + dx[0].size)
  power = (m * m).mean((1, 2, 3))
  roughness = neighbours / np.maximum(2 * power, 1e-30)
  return {
    'image_correlation': float(corr.mean()),
    'roughness': float(roughness.mean()),
  }


def guided_backprop(
  run: Run,
  output: str,
  *,
  layer: int = -1,
  units: int = 6,
  images_per_unit: int = 3,
  num_images: int = 512,
  seed: int = 0,
) -> list[str]:
  """Trained D beside a randomly initialised D (same architecture, the run's
  init seed): for each, a row per top unit with its strongest real images
  and their guided-backprop maps; and a JSON of `map_statistics` for both."""
  images = loader.load_data(run.config, run.workdir)
  order = np.random.default_rng(seed).permutation(len(images))[:num_images]
  images = images[np.sort(order)]
  random_state = state_lib.initial_state(run.config)
  panels, report = [], {'layer': layer, 'num_images': len(images)}
  for key, name, state_vars in (
    ('trained', 'trained D', run.d_variables),
    (
      'random',
      'random D',
      {'params': random_state.d_params, 'batch_stats': random_state.d_batch_stats},
    ),
  ):
    chosen, image_idx, maps = guided_backprop_maps(
      run.config,
      state_vars,
      images,
      layer=layer,
      units=units,
      images_per_unit=images_per_unit,
    )
    stats = map_statistics(maps, images[image_idx])
    report[key] = {'units': chosen.tolist(), **stats}
    pairs = np.stack([images[image_idx], gradient_to_uint8(maps)], axis=2)
    panels.append(
      figures.labelled_grid(
        pairs.reshape(-1, *pairs.shape[-3:]),
        ['image', 'guided bp'] * (len(chosen) * images_per_unit),
        num_cols=2 * images_per_unit,
        row_labels=[f'unit {u}' for u in chosen],
        title=(
          f'{name}, layer {layer}: corr(|map|, image) '
          f'{stats["image_correlation"]:.2f}, roughness {stats["roughness"]:.2f}'
        ),
      )
    )
  name = f'guided_backprop_layer{layer}'
  json_path = os.path.join(output, f'{name}.json')
  files.makedirs(output)
  files.write_json(json_path, report)
  return [
    figures.save_image(
      figures.side_by_side(panels), os.path.join(output, f'{name}.png')
    ),
    json_path,
  ]


def batchnorm_modes(
  run: Run, output: str, *, num: int = 64, seed: int = 0, small_batch: int = 2
) -> list[str]:
  """The same `num` z drawn with BatchNorm in 'running', 'batch' and
  'reference' mode, then in 'batch' mode again in batches of `small_batch`
  (batch statistics from that few images), and that last panel's difference
  from 'running' mode (|difference| x4, white is large). Each title gives
  the panel's mean and max |d|, its difference from 'running' in grey
  levels (0..255); so does a JSON beside the PNG."""
  if not 0 < small_batch <= num:
    raise ValueError(f'small_batch must be in 1..{num}.')
  z = jnp.asarray(run.z(seed, _SHEET_KEY_TAG, num))
  drawn = {}
  for mode in generate.BATCHNORM_MODES:
    fn = generate.generator_fn(run.config, run.g_variables, batchnorm=mode)
    drawn[mode] = generate.to_uint8(fn(z))
  batch = generate.generator_fn(run.config, run.g_variables, batchnorm='batch')
  drawn[f'batch of {small_batch}'] = np.concatenate(
    [
      generate.to_uint8(batch(z[i : i + small_batch]))
      for i in range(0, num, small_batch)
    ]
  )
  running = drawn['running'].astype(np.int16)
  report = {'num': num, 'small_batch': small_batch}
  for name, images in drawn.items():
    diff = np.abs(images.astype(np.int16) - running)
    report[name] = {
      'mean_abs_diff': float(diff.mean()),
      'max_abs_diff': int(diff.max()),
    }
  cols = math.ceil(math.sqrt(num))
  panels = [
    figures.labelled_grid(
      images,
      num_cols=cols,
      title=(
        'BatchNorm: running'
        if name == 'running'
        else f'{name}: mean |d| {report[name]["mean_abs_diff"]:.1f}, '
        f'max {report[name]["max_abs_diff"]}'
      ),
    )
    for name, images in drawn.items()
  ]
  last = np.abs(drawn[f'batch of {small_batch}'].astype(np.int16) - running)
  panels.append(
    figures.labelled_grid(
      np.clip(4 * last, 0, 255).astype(np.uint8),
      num_cols=cols,
      title=f'|batch of {small_batch} - running| x4',
    )
  )
  files.makedirs(output)
  json_path = os.path.join(output, 'batchnorm_modes.json')
  files.write_json(json_path, report)
  png = figures.save_image(
    figures.side_by_side(panels), os.path.join(output, 'batchnorm_modes.png')
  )
  return [png, json_path]


_BOXES_FORMAT = (
  '{"<sample number>": [[top, left, bottom, right], ...], ...} in pixels of '
  'the generated images (bottom and right exclusive)'
)


def read_boxes(path: str, num: int, image_size: int) -> list[np.ndarray]:
  """Object boxes per sample from a JSON file of _BOXES_FORMAT (samples
  not listed have none); a one-line ValueError for anything else."""
  if not files.isfile(path):
    raise FileNotFoundError(f'--boxes={path} does not exist; give {_BOXES_FORMAT}.')
  try:
    value = files.read_json(path)
  except ValueError as e:
    raise ValueError(f'--boxes={path} is not JSON ({e}); give {_BOXES_FORMAT}.') from e
  if not isinstance(value, dict):
    raise ValueError(f'--boxes={path} must hold {_BOXES_FORMAT}.')
  boxes = [np.zeros((0, 4), np.int64) for _ in range(num)]
  for key, entries in value.items():
    if not (key.isdigit() and int(key) < num):
      raise ValueError(
        f'--boxes={path}: {key!r} is not a sample number in 0..{num - 1} '
        f'(--num={num}); give {_BOXES_FORMAT}.'
      )
    ok = isinstance(entries, list)
    for box in entries if ok else ():
      ok = ok and isinstance(box, list) and len(box) == 4
      ok = ok and all(isinstance(v, int) and not isinstance(v, bool) for v in box)
      ok = (
        ok and 0 <= box[0] < box[2] <= image_size and 0 <= box[1] < box[3] <= image_size
      )
    if not ok:
      raise ValueError(
        f'--boxes={path}: sample {key}: {entries!r} is not a list of boxes '
        f'[top, left, bottom, right] with 0 <= top < bottom <= {image_size} and '
        f'0 <= left < right <= {image_size}.'
      )
    boxes[int(key)] = np.asarray(entries, np.int64).reshape(-1, 4)
  return boxes


def detector_for(config: ml_collections.ConfigDict) -> forgetting.Detector | None:
  """The object detector of the run's data set, if it has one."""
  return scenes.DETECTORS.get(config.get('dataset'))


def forget(
  run: Run,
  output: str,
  *,
  layer: str | None = None,
  num: int = 100,
  seed: int = 0,
  boxes: str = 'auto',
  shown: int = 24,
) -> list[str]:
  """The paper's section 6.3.1 (module docstring): drop the maps of G's
  `layer` that predict the object and draw the same z again."""
  if num < 4:
    raise ValueError(f'forget needs --num >= 4 samples, got {num}.')
  detector = detector_for(run.config)
  if boxes == 'auto' and detector is None:
    raise ValueError(
      f'--boxes=auto needs a data set with an object detector '
      f'({", ".join(scenes.DETECTORS)}), but {run.workdir} was trained on '
      f'config.dataset={run.config.dataset!r}; give --boxes=FILE.json with '
      f'the boxes of the samples of `visualize sheet --num={num} --seed={seed}`.'
    )
  size = run.config.image_size
  box_list = None if boxes == 'auto' else read_boxes(boxes, num, size)
  found = forgetting.find_layer(run.config, layer)
  fn = forgetting.layer_generator(
    run.config, run.g_variables, found, batchnorm=run.batchnorm
  )
  z = run.z(seed, _SHEET_KEY_TAG, num)  # The samples of `sheet`.
  num_maps = found.shape[-1]
  with progress.timed(f'G on {num} z, layer {found.name}'):
    before, features = forgetting.draw(fn, z, forgetting.keep_maps(num_maps))
  written = []
  if box_list is None:
    box_list = forgetting.detection(before, detector)
    written.append(
      files.write_json(
        os.path.join(output, f'forget_boxes_seed{seed}.json'),
        {str(i): b.tolist() for i, b in enumerate(box_list)},
      )
    )
  maps = forgetting.fit_object_maps(features, box_list, size, seed=seed)
  # The control: as many maps, drawn at random.
  random_maps = np.random.default_rng(seed).choice(
    num_maps, len(maps.dropped), replace=False
  )
  drawn = {}
  for name, dropped in (('object', maps.dropped), ('random', random_maps)):
    with progress.timed(f'G on {num} z without {len(dropped)} {name} maps'):
      drawn[name] = forgetting.draw(fn, z, forgetting.keep_maps(num_maps, dropped))[0]
  report = {
    'workdir': run.workdir,
    'step': run.step,
    'layer': found.name,
    'layer_shape': list(found.shape),
    'num_samples': num,
    'seed': seed,
    'batchnorm': run.batchnorm,
    'boxes': boxes,
    'samples_with_boxes': int(sum(len(b) > 0 for b in box_list)),
    'dropped_maps': maps.dropped.tolist(),
    'num_maps': num_maps,
    'regression': maps.summary(),
    **forgetting.effects(before, drawn['object'], box_list, detector),
    'control_random_maps': {
      'dropped_maps': sorted(random_maps.tolist()),
      **forgetting.effects(before, drawn['random'], box_list, detector),
    },
  }
  name = f'forget_{found.name}_seed{seed}'
  files.makedirs(output)
  figure = _forget_figure(before[:shown], drawn['object'][:shown], detector, report)
  return [
    figures.save_image(figure, os.path.join(output, f'{name}.png')),
    files.write_json(os.path.join(output, f'{name}.json'), report),
    *written,
  ]


def _forget_figure(
  before: np.ndarray,
  after: np.ndarray,
  detector: forgetting.Detector | None,
  report: dict[str, Any],
  num_cols: int = 8,
) -> Image.Image:
  """Rows of samples as G draws them, each above the same z without the
  dropped maps; with a detector, each caption gives the objects found."""
  rows, labels, row_labels = [], [], []
  for start in range(0, len(before), num_cols):
    for name, images in (('G', before), ('dropped', after)):
      chunk = images[start : start + num_cols]
      rows.extend(chunk)
      rows.extend([np.full_like(chunk[0], 255)] * (num_cols - len(chunk)))
      found = forgetting.detection(chunk, detector) if detector else None
      labels.extend(
        (f'#{start + i} ' if name == 'G' else '')
        + (f'{len(found[i])} found' if found is not None else '')
        for i in range(len(chunk))
      )
      labels.extend([''] * (num_cols - len(chunk)))
      row_labels.append(name)
  title = (
    f'layer {report["layer"]}: {len(report["dropped_maps"])} of '
    f'{report["num_maps"]} maps dropped (held-out accuracy '
    f'{report["regression"]["held_out_accuracy"]:.2f})'
  )
  if detector is not None:
    title += ', object found in {:.0%} -> {:.0%} of samples'.format(
      report['detected_before']['share_of_samples'],
      report['detected_after']['share_of_samples'],
    )
  return figures.labelled_grid(
    np.stack(rows), labels, num_cols=num_cols, row_labels=row_labels, title=title
  )


def gallery(
  run: Run,
  output: str,
  *,
  a: str = '0,1,2',
  b: str = '3,4,5',
  c: str = '6,7,8',
) -> list[str]:
  """The gallery of docs/pictures.md: BatchNorm modes, sheet, walks, arithmetic, movie
  frame, guided backprop, into `output`."""
  parts = [
    lambda: batchnorm_modes(run, output, num=16),
    lambda: sheet(run, output, num=64),
    lambda: interpolate(run, output, pairs=4, steps=10),
    lambda: arithmetic(run, output, a=a, b=b, c=c, sheet_size=64),
    lambda: movie(run, output),
    lambda: guided_backprop(run, output),
  ]
  written = []
  for part in progress.track(parts, 'Gallery', unit='figures'):
    written += part()
  files.write_json(
    os.path.join(output, 'gallery.json'), {'workdir': run.workdir, 'files': written}
  )
  return written


COMMANDS: dict[str, Callable[..., list[str]]] = {
  'sheet': sheet,
  'interpolate': interpolate,
  'arithmetic': arithmetic,
  'movie': movie,
  'guided_backprop': guided_backprop,
  'batchnorm_modes': batchnorm_modes,
  'forget': forget,
  'gallery': gallery,
}


COMMAND = cli.Command('visualize', __doc__, subcommands=list(COMMANDS))
COMMAND.path('workdir', None, 'Training workdir (a single GAN).')
COMMAND.path('output', None, 'Directory for the pictures (default: W/visualize).')
COMMAND.enum(
  'batchnorm', 'running', generate.BATCHNORM_MODES, "G's BatchNorm statistics."
)
COMMAND.enum('generator', 'auto', rundir.GENERATORS, rundir.GENERATOR_HELP)
COMMAND.integer('seed', 0, 'Seed of the z drawn (sheet, interpolate, ...).')
COMMAND.integer('num', 100, 'sheet, forget: number of samples.', lower_bound=1)
COMMAND.integer('pairs', 6, 'interpolate: number of walks.', lower_bound=1)
COMMAND.integer('steps', 10, 'interpolate: frames per walk.', lower_bound=2)
COMMAND.string('a', None, 'arithmetic: sheet numbers of concept a (e.g. 3,17,42).')
COMMAND.string('b', None, 'arithmetic: sheet numbers of concept b.')
COMMAND.string('c', None, 'arithmetic: sheet numbers of concept c.')
COMMAND.integer('sheet_seed', 0, 'arithmetic: --seed of the sheet numbered.')
COMMAND.integer('sheet_size', 100, 'arithmetic: --num of the sheet numbered.')
COMMAND.float('noise', 0.25, 'arithmetic: size of the perturbations of z.')
COMMAND.float('fps', 4, 'interpolate, movie: GIF frames per second.')
COMMAND.string(
  'layer',
  None,
  'guided_backprop: index of a D layer (default -1: the last); forget: name '
  'of a G layer (project, up_0, ...; default: the second-highest, the last '
  'before the output).',
)
COMMAND.integer('units', 6, 'guided_backprop: top units shown.', lower_bound=1)
COMMAND.integer(
  'images_per_unit', 3, 'guided_backprop: images per unit.', lower_bound=1
)
COMMAND.integer(
  'small_batch', 2, 'batchnorm_modes: batch size of the small batches.', lower_bound=1
)
COMMAND.string(
  'boxes',
  'auto',
  "forget: the object's boxes in the samples: 'auto' (the data set's "
  'detector) or a JSON file {"<sample>": [[top, left, bottom, right], ...]} '
  'in pixels, samples numbered as by sheet with the same --num and --seed.',
)
COMMAND.required('workdir')


def _d_layer(value: str | None) -> int:
  if value is None:
    return -1
  try:
    return int(value)
  except ValueError:
    raise ValueError(
      f'guided_backprop: --layer={value} must be the index of a D layer (-1: the last).'
    ) from None


def _visualize(args, command: str) -> None:
  output = args.output or files.join(args.workdir, OUTPUT_DIR)
  check_output(output)
  run = load_run(args.workdir, args.batchnorm, args.generator)
  if command == 'sheet':
    written = sheet(run, output, num=args.num, seed=args.seed)
  elif command == 'interpolate':
    written = interpolate(
      run, output, pairs=args.pairs, steps=args.steps, seed=args.seed, fps=args.fps
    )
  elif command == 'arithmetic':
    if not (args.a and args.b and args.c):
      raise ValueError(
        'arithmetic needs --a, --b and --c: sheet numbers (e.g. --a=3,17,42) '
        'from `python -m dcgan_jax.visualize sheet`.'
      )
    written = arithmetic(
      run,
      output,
      a=args.a,
      b=args.b,
      c=args.c,
      sheet_seed=args.sheet_seed,
      sheet_size=args.sheet_size,
      noise=args.noise,
      seed=args.seed,
    )
  elif command == 'movie':
    written = movie(run, output, fps=args.fps)
  elif command == 'guided_backprop':
    written = guided_backprop(
      run,
      output,
      layer=_d_layer(args.layer),
      units=args.units,
      images_per_unit=args.images_per_unit,
      seed=args.seed,
    )
  elif command == 'batchnorm_modes':
    written = batchnorm_modes(run, output, seed=args.seed, small_batch=args.small_batch)
  elif command == 'forget':
    written = forget(
      run, output, layer=args.layer, num=args.num, seed=args.seed, boxes=args.boxes
    )
  else:
    kwargs = {k: getattr(args, k) for k in 'abc' if getattr(args, k)}
    written = gallery(run, output, **kwargs)
  for path in written:
    print(path)


def main(argv: Sequence[str]) -> None:
  COMMAND.run(_visualize, argv)


if __name__ == '__main__':
  main(cli.main_argv())
