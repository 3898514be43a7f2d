"""Checkerboard artefacts: the periodic energy stride-2 upsampling leaves.

A generator that doubles its resolution k times with stride-2 layers
computes each output pixel from one of four phases (even or odd row and
column) of the layer before. Where the phases get systematically different
weights (the uneven overlap of a transposed convolution; Odena, Dumoulin &
Olah 2016, "Deconvolution and checkerboard artifacts"), the image is the
intended one modulated by a pattern that repeats every 2 pixels (the last
layer), 4, ..., up to 2^k (the first). A pattern of period P in an image of
N pixels has its energy at the spatial frequencies that are multiples of
N/P along both axes: the Nyquist frequencies (N/2, 0), (0, N/2), (N/2, N/2)
for P = 2, a finer lattice for longer periods. `artefact_period` takes P =
2^k from the image size (k doublings from 4x4, or from 7x7 for 28x28).

Everything reads the mean normalised power spectrum of a set of images:
each image's channels have their mean removed, their 2-D power spectra are
averaged over channels and divided by their sum (so nothing depends on
contrast, offset or whether pixels are uint8 or on [-1, 1]), and these are
averaged over the images, a batch at a time (memory does not grow with
their number). Two scores:

- share: the power at the artefact frequencies (all of it for a pure 2x2
  texture, almost none for a smooth image), for samples and for real
  images, and their ratio. It also counts the broadband high-frequency
  noise a generator may have, periodic or not.
- spike ratio (samples against real images): divide the samples' spectrum
  by the real images' (the relative spectrum, 1 where the samples have as
  much power as real images). For each period P = 2, 4, ..., 2^k, take the
  frequencies it adds to the lattice (multiples of N/P that are not
  multiples of N/(P/2)) and divide the relative spectrum summed over them
  by its sum over their neighbourhoods (each one's 8 neighbours,
  averaged); the spike ratio is the mean of these k ratios (so the 3
  Nyquist frequencies count as much as the 48 of period 8 at 32x32).
  Broadband differences cancel: 1.0 means the samples' spectrum, compared
  with real images', has no spikes at the artefact frequencies; periodic
  patterns make it larger than 1.

The DFT treats an image as periodic: a ramp that jumps between opposite
edges puts power along the axes, on some artefact frequencies. Samples and
real images share such edges, so the spike ratio cancels them; the share
counts them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# Images transformed at once (float64 and complex128 copies of a batch).
BATCH = 256
# Real images scored at most (a fixed random subset of a larger set).
REAL_IMAGES = 10_000
# The smallest map a generator upsamples from: N / period >= this.
MIN_START = 4
# Relative-spectrum values where the real images' spectrum is below this
# (normalised: it sums to 1) are left out of the spike ratio.
_MIN_POWER = 1e-12


def artefact_period(image_size: int) -> int:
  """2^k for an image made by k stride-2 doublings: the largest power of
  two that divides `image_size` and leaves at least MIN_START pixels (32 ->
  8: 4x4 doubled 3 times; 28 -> 4: 7x7 doubled twice)."""
  period = 1
  while image_size % (2 * period) == 0 and image_size // (2 * period) >= MIN_START:
    period *= 2
  if period < 2:
    raise ValueError(
      f'{image_size}-pixel images are not made by stride-2 doublings from '
      f'{MIN_START}x{MIN_START} or larger: no artefact frequencies.'
    )
  return period


def artefact_mask(height: int, width: int, period: int) -> np.ndarray:
  """bool [height, width] over np.fft.fft2's frequencies: True where a pattern
  of `period` pixels (or a divisor) puts energy, the multiples of
  height/period and width/period except (0, 0)."""
  if period < 2 or height % period or width % period:
    raise ValueError(
      f'period must be at least 2 and divide the image size, got {period} for '
      f'{height}x{width} images.'
    )
  rows = np.arange(height) % (height // period) == 0
  cols = np.arange(width) % (width // period) == 0
  mask = rows[:, None] & cols[None, :]
  mask[0, 0] = False
  return mask


def neighbourhood_weights(mask: np.ndarray) -> np.ndarray:
  """float64 [H, W]: the sum over masked frequencies of the mean over each
  one's 8 (cyclic) neighbours that are neither masked nor (0, 0), as weights
  on the frequencies (so `(weights * spectrum).sum()` is that sum)."""
  height, width = mask.shape
  weights = np.zeros(mask.shape)
  for y, x in zip(*np.nonzero(mask), strict=True):
    around = {
      ((y + dy) % height, (x + dx) % width)
      for dy in (-1, 0, 1)
      for dx in (-1, 0, 1)
      if dy or dx
    }
    around = [f for f in around if not mask[f] and f != (0, 0)]
    for f in around:
      weights[f] += 1 / len(around)
  return weights


def normalised_spectra(images: np.ndarray) -> np.ndarray:
  """float64 [N, H, W]: each image's mean-removed power spectrum, averaged
  over its channels and divided by its sum (zero for a constant image)."""
  x = np.asarray(images, np.float64)
  x = x - x.mean(axis=(1, 2), keepdims=True)
  power = (np.abs(np.fft.fft2(x, axes=(1, 2))) ** 2).mean(axis=-1)
  total = power.sum(axis=(1, 2), keepdims=True)
  return np.divide(power, total, out=np.zeros_like(power), where=total > 0)


def _check_images(name: str, images: Any) -> tuple[int, ...]:
  shape = np.shape(images)
  if len(shape) != 4 or not shape[0] or shape[1] < 2 or shape[2] < 2:
    raise ValueError(f'{name} must be [N, H, W, C] with N > 0, got shape {shape}.')
  return shape


def mean_spectrum(
  images: Any, *, indices: Sequence[int] | None = None, batch_size: int = BATCH
) -> np.ndarray:
  """float64 [H, W]: the mean of `normalised_spectra` over images [N, H, W, C]
  (uint8 or floats, possibly memory-mapped), `batch_size` at a time;
  `indices` (sorted rows) restricts it to those rows."""
  _check_images('images', images)
  rows = np.arange(len(images)) if indices is None else np.asarray(indices)
  if not len(rows):
    raise ValueError('No images to score.')
  total = 0.0
  for start in range(0, len(rows), batch_size):
    chosen = rows[start : start + batch_size]
    total = total + normalised_spectra(images[chosen]).sum(axis=0)
  return total / len(rows)


def share(spectrum: np.ndarray, period: int) -> float:
  """A mean normalised spectrum's power at the artefact frequencies."""
  return float(spectrum[artefact_mask(*spectrum.shape, period)].sum())


def spike_ratios(
  spectrum: np.ndarray, real_spectrum: np.ndarray, period: int
) -> dict[int, float]:
  """{P: spike ratio of the frequencies period P adds} for P = 2, 4, ...,
  `period` (module docstring): the relative spectrum (`spectrum` /
  `real_spectrum`) summed over them, over its neighbourhood sum.
  Frequencies where the real images have no power are left out (NaN where
  nothing is left)."""
  if spectrum.shape != real_spectrum.shape:
    raise ValueError(f'Spectra of {spectrum.shape} and {real_spectrum.shape} images.')
  usable = real_spectrum > _MIN_POWER
  relative = np.where(usable, spectrum / np.where(usable, real_spectrum, 1), 0)
  ratios, coarser, p = {}, np.zeros(spectrum.shape, bool), 2
  while p <= period:
    lattice = artefact_mask(*spectrum.shape, p)
    added = lattice & ~coarser & usable
    around = (neighbourhood_weights(added) * relative).sum()
    ratios[p] = float(relative[added].sum() / around) if around > 0 else float('nan')
    coarser, p = lattice, 2 * p
  return ratios


def spike_ratio(spectrum: np.ndarray, real_spectrum: np.ndarray, period: int) -> float:
  """The mean of `spike_ratios` over the periods (NaN where none is defined)."""
  values = [v for v in spike_ratios(spectrum, real_spectrum, period).values() if v == v]
  return float(np.mean(values)) if values else float('nan')


def real_indices(num_real: int, max_images: int = REAL_IMAGES) -> np.ndarray:
  """The rows of the real images scored: all, or a fixed random subset."""
  if num_real <= max_images:
    return np.arange(num_real)
  return np.sort(np.random.default_rng(0).permutation(num_real)[:max_images])


def checkerboard_metrics(
  samples: Any,
  real_images: Any,
  *,
  period: int | None = None,
  max_real: int = REAL_IMAGES,
  batch_size: int = BATCH,
) -> dict[str, float]:
  """Samples against real images of the same size (at most `max_real` of
  them): both shares, their ratio and the spike ratio. `period`: None for
  `artefact_period` of the image size."""
  shape = _check_images('samples', samples)
  if _check_images('real_images', real_images)[1:3] != shape[1:3]:
    raise ValueError(
      f'samples are {shape[1:3]} but real images are {np.shape(real_images)[1:3]}: '
      'the artefact frequencies differ.'
    )
  period = period or artefact_period(min(shape[1:3]))
  fake = mean_spectrum(samples, batch_size=batch_size)
  real = mean_spectrum(
    real_images, indices=real_indices(len(real_images), max_real), batch_size=batch_size
  )
  fake_share, real_share = share(fake, period), share(real, period)
  return {
    'checkerboard_spike_ratio': spike_ratio(fake, real, period),
    'checkerboard_share': fake_share,
    'checkerboard_real_share': real_share,
    'checkerboard_share_ratio': fake_share / real_share if real_share else float('nan'),
  }


def workspace_bytes(image_shape: Sequence[int], batch_size: int = BATCH) -> int:
  """Peak bytes of one batch's transform: its float64 copy, the complex128
  transform and its power, the normalised spectra, and the running sums."""
  height, width, channels = image_shape
  per_image = height * width * (channels * (8 + 16 + 8) + 8 * 2)
  return batch_size * per_image + 8 * height * width * 8
