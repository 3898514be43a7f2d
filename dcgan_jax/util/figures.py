"""Figures: every PNG and GIF the project writes is drawn here.

- `make_grid`, `save_png`, `save_image`: sample grids and PIL images, written
  atomically (`files`).
- `coverage_png`: evaluation's share of samples per class.
- `neighbour_grid`, `distance_histogram`: memorisation's nearest training
  images and distance distributions.
- `labelled_grid`, `side_by_side`, `stacked`, `save_gif`, `enlarge`: the
  pictures of `python -m dcgan_jax.visualize` and of the benchmarks.
"""

import dataclasses
import functools
import io
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dcgan_jax.util import files

MIN_TILE = 64  # Small images are enlarged (nearest neighbour) to this size.


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
  save_image(Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image), path)


def save_image(image: Image.Image, path: str) -> str:
  """Writes a PIL image as PNG, atomically; returns `path`."""
  buffer = io.BytesIO()
  image.save(buffer, format='PNG')
  return files.write_atomic(path, buffer.getvalue())


def coverage_png(
  path: str, fractions: Sequence[float], *, title: str, missing_share: float
) -> str:
  """A bar chart of the share of samples per class, against the uniform
  share (dashed line) and the 'missing' threshold, `missing_share` times
  the uniform share (red); returns `path`."""
  k = len(fractions)
  bar, gap, height, top, bottom, left = 36, 12, 240, 30, 40, 50
  width = left + k * (bar + gap) + gap
  scale = height / max(max(fractions), 1.5 / k)
  image = Image.new('RGB', (width, top + height + bottom), 'white')
  draw = ImageDraw.Draw(image)
  draw.text((left, 8), title, fill='black')
  base = top + height
  draw.line([(left, base), (width - gap // 2, base)], fill='black')
  for level, label in ((1 / k, 'uniform'), (missing_share / k, 'missing')):
    y = base - level * scale
    color = 'gray' if label == 'uniform' else 'red'
    for x in range(left, width - gap, 8):
      draw.line([(x, y), (x + 4, y)], fill=color)
    draw.text((2, y - 6), label, fill=color)
  for i, fraction in enumerate(fractions):
    x0 = left + gap + i * (bar + gap)
    color = (200, 40, 40) if fraction < missing_share / k else (60, 110, 200)
    draw.rectangle([x0, base - fraction * scale, x0 + bar, base], fill=color)
    draw.text((x0 + bar // 2 - 3, base + 6), str(i), fill='black')
    draw.text((x0, base - fraction * scale - 14), f'{fraction:.3f}', fill='black')
  return save_image(image, path)


@functools.lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
  try:
    return ImageFont.load_default(size=size)
  except (ImportError, OSError, TypeError):  # Pillow without FreeType.
    return ImageFont.load_default()


def _line_height(font: Any) -> int:
  left, top, right, bottom = font.getbbox('Ag|(')
  return int(bottom) + 3


def _fit(text: str, font: Any, width: int) -> str:
  """`text` cut (with '..') to at most `width` pixels."""
  if font.getlength(text) <= width:
    return text
  while text and font.getlength(text + '..') > width:
    text = text[:-1]
  return text + '..'


def _wrap(text: str, font: Any, width: int) -> list[str]:
  lines: list[str] = []
  for paragraph in text.split('\n'):
    line = ''
    for word in paragraph.split(' '):
      candidate = f'{line} {word}' if line else word
      if line and font.getlength(candidate) > width:
        lines.append(line)
        line = word
      else:
        line = candidate
    lines.append(line)
  return lines


def check_images(name: str, images: Any) -> np.ndarray:
  x = np.asarray(images)
  if x.ndim != 4 or x.shape[-1] not in (1, 3) or x.dtype != np.uint8 or not len(x):
    raise ValueError(
      f'{name} must be uint8 images [N, H, W, C] with C = 1 or 3 and N > 0, '
      f'got shape {x.shape} and dtype {x.dtype}.'
    )
  return x


# Layout of `neighbour_grid`, in pixels.
GRID_PAD = 8  # Around everything.
GRID_GAP = 3  # Between tiles in a row.
GRID_ROW_GAP = 8  # Between rows.
GRID_SEPARATOR = 16  # Column between each sample and its neighbours.
_BACKGROUND = (255, 255, 255)
_SEPARATOR_COLOUR = (220, 40, 40)
_TEXT_COLOUR = (20, 20, 20)


@dataclasses.dataclass(frozen=True)
class GridLayout:
  """Where `neighbour_grid` put things.

  boxes[row][col] = (left, top, right, bottom) of a tile: col 0 is the
  sample, col j its j-th nearest training image.
  """

  path: str
  width: int
  height: int
  scale: int
  boxes: tuple[tuple[tuple[int, int, int, int], ...], ...]


def _grid_inputs(
  samples_uint8: Any,
  train_uint8: Any,
  indices: Any,
  distances: Any,
  num_rows: int,
  rows: Sequence[int] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[int]]:
  """`neighbour_grid`'s arguments as arrays, checked; the rows to show."""
  samples = check_images('samples_uint8', samples_uint8)
  train = check_images('train_uint8', train_uint8)
  if samples.shape[1:] != train.shape[1:]:
    raise ValueError(
      f'samples are {samples.shape[1:]} but training images are '
      f'{train.shape[1:]}: both must be [H, W, C] of the same size.'
    )
  ids = np.asarray(indices)
  dist = np.asarray(distances, np.float64)
  if (
    ids.ndim != 2
    or ids.shape[0] != len(samples)
    or dist.shape != ids.shape
    or not ids.shape[1]
  ):
    raise ValueError(
      f'indices and distances must both be [{len(samples)}, k] (one row per '
      f'sample), got {ids.shape} and {dist.shape}.'
    )
  if ids.min() < 0 or ids.max() >= len(train):
    raise ValueError(f'indices must lie in [0, {len(train)}), the training images.')
  rows = (
    list(range(min(num_rows, len(samples)))) if rows is None else [int(i) for i in rows]
  )
  if not rows or min(rows) < 0 or max(rows) >= len(samples):
    raise ValueError(
      f'rows must be a non-empty list of sample indices in [0, {len(samples)}).'
    )
  return samples, train, ids, dist, rows


def neighbour_grid(
  samples_uint8: Any,
  train_uint8: Any,
  indices: Any,
  distances: Any,
  *,
  path: str,
  num_rows: int = 8,
  rows: Sequence[int] | None = None,
  title: str | None = None,
  min_tile_size: int = 64,
) -> GridLayout:
  """PNG: per row a generated sample, a red bar, its nearest training images.

  Args:
    samples_uint8: [N, H, W, C] uint8 generated images, C = 1 or 3.
    train_uint8: [M, H, W, C] uint8 training images.
    indices: [N, k] indices into train_uint8, nearest first (from
      `nearest_neighbours(samples, train)`).
    distances: [N, k] the matching distances, printed above each neighbour.
    path: the PNG to write (atomically).
    num_rows: rows to show when `rows` is None: samples 0 .. num_rows - 1.
    rows: which samples to show, in order.
    title: text above the grid (wrapped), e.g. the distance's space.
    min_tile_size: images are enlarged by an integer factor (nearest
      neighbour) until their smaller side is at least this many pixels.

  Returns:
    The layout: image size, enlargement factor and every tile's box.
  """
  samples, train, ids, dist, rows = _grid_inputs(
    samples_uint8, train_uint8, indices, distances, num_rows, rows
  )
  if int(min_tile_size) != min_tile_size or min_tile_size < 1:
    raise ValueError(
      f'min_tile_size must be a positive integer, got {min_tile_size!r}.'
    )
  k = ids.shape[1]
  height, width = samples.shape[1:3]
  scale = max(1, -(-min_tile_size // min(height, width)))
  tile_h, tile_w = height * scale, width * scale
  font = _font(11)
  line = _line_height(font)
  canvas_w = 2 * GRID_PAD + tile_w + GRID_SEPARATOR + k * tile_w + (k - 1) * GRID_GAP
  title_lines = _wrap(title, _font(13), canvas_w - 2 * GRID_PAD) if title else []
  title_h = len(title_lines) * _line_height(_font(13)) + GRID_GAP if title else 0
  row_h = line + tile_h
  canvas_h = 2 * GRID_PAD + title_h + len(rows) * row_h + (len(rows) - 1) * GRID_ROW_GAP
  image = Image.new('RGB', (canvas_w, canvas_h), _BACKGROUND)
  draw = ImageDraw.Draw(image)
  for i, text in enumerate(title_lines):
    draw.text(
      (GRID_PAD, GRID_PAD + i * _line_height(_font(13))),
      text,
      fill=_TEXT_COLOUR,
      font=_font(13),
    )

  def tile(x: np.ndarray) -> Image.Image:
    x = np.repeat(np.repeat(x, scale, axis=0), scale, axis=1)
    return Image.fromarray(np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x, 'RGB')

  boxes = []
  for r, sample in enumerate(rows):
    top = GRID_PAD + title_h + r * (row_h + GRID_ROW_GAP) + line
    lefts = [GRID_PAD] + [
      GRID_PAD + tile_w + GRID_SEPARATOR + j * (tile_w + GRID_GAP) for j in range(k)
    ]
    pictures = [samples[sample]] + [train[t] for t in ids[sample]]
    labels = [f'sample {sample}'] + [f'd={d:.3g}' for d in dist[sample]]
    for left, picture, label in zip(lefts, pictures, labels, strict=True):
      image.paste(tile(picture), (left, top))
      draw.text(
        (left, top - line), _fit(label, font, tile_w), fill=_TEXT_COLOUR, font=font
      )
    bar = GRID_PAD + tile_w + GRID_SEPARATOR // 2
    draw.rectangle((bar - 2, top, bar + 1, top + tile_h - 1), fill=_SEPARATOR_COLOUR)
    boxes.append(tuple((left, top, left + tile_w, top + tile_h) for left in lefts))
  save_image(image, path)
  return GridLayout(os.fspath(path), canvas_w, canvas_h, scale, tuple(boxes))


def _nice_ticks(lo: float, hi: float, count: int = 6) -> np.ndarray:
  """Round tick values covering [lo, hi], about `count` of them."""
  span = hi - lo
  step = 10.0 ** math.floor(math.log10(span / count))
  for multiple in (1, 2, 2.5, 5, 10):
    if span / (step * multiple) <= count:
      step *= multiple
      break
  first, last = math.floor(lo / step), math.ceil(hi / step)
  return np.arange(first, last + 1) * step


_SAMPLE_COLOUR = (230, 110, 20)
_TRAIN_COLOUR = (30, 90, 200)


@dataclasses.dataclass(frozen=True)
class _Plot:
  """A plot area in pixels and the data range it shows."""

  left: int
  top: int
  right: int
  bottom: int
  lo: float
  hi: float
  y_max: float

  def x(self, value: float) -> float:
    return self.left + (value - self.lo) / (self.hi - self.lo) * (
      self.right - self.left
    )

  def y(self, value: float) -> float:
    return self.bottom - value / self.y_max * (self.bottom - self.top)


def distance_histogram(
  sample_to_train: Any,
  train_to_train: Any,
  *,
  path: str,
  title: str = 'Nearest-neighbour distances',
  num_bins: int = 40,
  width: int = 760,
  height: int = 440,
) -> str:
  """PNG: overlaid histograms of the two nearest-neighbour distance sets.

  Each set is shown as its share (%) per bin, on shared bins, so sets of
  different sizes compare; the dashed line is the 1st percentile of the
  train-to-train distances (samples left of it look memorised). Returns
  the path written (atomically).
  """
  s = np.asarray(sample_to_train, np.float64).reshape(-1)
  t = np.asarray(train_to_train, np.float64).reshape(-1)
  if num_bins < 1 or width < 320 or height < 240:
    raise ValueError('num_bins must be >= 1, width >= 320 and height >= 240.')
  lo, hi = float(min(s.min(), t.min())), float(max(s.max(), t.max()))
  if hi - lo < 1e-12 * max(1.0, abs(hi)):
    lo, hi = lo - 0.5 * max(1.0, abs(lo)), hi + 0.5 * max(1.0, abs(hi))
  x_ticks = _nice_ticks(lo, hi)
  edges = np.linspace(x_ticks[0], x_ticks[-1], num_bins + 1)
  shares = [100.0 * np.histogram(d, edges)[0] / d.size for d in (s, t)]
  y_ticks = _nice_ticks(0.0, max(float(max(h.max() for h in shares)), 1e-9), 5)

  font, big = _font(12), _font(14)
  line = _line_height(font)
  legend_top = 10 + _line_height(big)
  plot = _Plot(
    left=58,
    top=legend_top + 2 * line + 10,
    right=width - 20,
    bottom=height - (2 * line + 12),
    lo=float(x_ticks[0]),
    hi=float(x_ticks[-1]),
    y_max=float(y_ticks[-1]),
  )
  image = Image.new('RGB', (width, height), _BACKGROUND)
  draw = ImageDraw.Draw(image)
  draw.text(
    (plot.left, 8),
    _fit(title, big, plot.right - plot.left),
    fill=_TEXT_COLOUR,
    font=big,
  )
  _draw_axes(draw, plot, x_ticks, y_ticks, font)
  _draw_bars(image, plot, edges, shares, (_SAMPLE_COLOUR, _TRAIN_COLOUR))
  draw = ImageDraw.Draw(image)
  draw.rectangle((plot.left, plot.top, plot.right, plot.bottom), outline=_TEXT_COLOUR)
  _draw_threshold(draw, plot, float(np.quantile(t, 0.01)), font)
  legend = (
    f'generated sample -> nearest training image  (n={s.size}, median '
    f'{np.median(s):.4g})',
    f'training image -> nearest other training image  (n={t.size}, median '
    f'{np.median(t):.4g})',
  )
  for i, (colour, text) in enumerate(
    zip((_SAMPLE_COLOUR, _TRAIN_COLOUR), legend, strict=True)
  ):
    y = legend_top + i * line
    draw.rectangle((plot.left, y + 2, plot.left + 12, y + line - 3), fill=colour)
    text = _fit(text, font, plot.right - plot.left - 18)
    draw.text((plot.left + 18, y), text, fill=_TEXT_COLOUR, font=font)
  return save_image(image, path)


def _draw_axes(
  draw: ImageDraw.ImageDraw,
  plot: _Plot,
  x_ticks: np.ndarray,
  y_ticks: np.ndarray,
  font: Any,
) -> None:
  """Grid lines, tick labels and axis labels."""
  line = _line_height(font)
  for value in y_ticks:
    y = plot.y(float(value))
    draw.line((plot.left, y, plot.right, y), fill=(225, 225, 225))
    label = f'{value:g}'
    xy = (plot.left - 6 - font.getlength(label), y - line / 2)
    draw.text(xy, label, fill=_TEXT_COLOUR, font=font)
  for value in x_ticks:
    x = plot.x(float(value))
    draw.line((x, plot.bottom, x, plot.bottom + 4), fill=_TEXT_COLOUR)
    label = f'{value:g}'
    xy = (x - font.getlength(label) / 2, plot.bottom + 6)
    draw.text(xy, label, fill=_TEXT_COLOUR, font=font)
  label = 'distance to the nearest neighbour (Euclidean)'
  xy = ((plot.left + plot.right - font.getlength(label)) / 2, plot.bottom + 8 + line)
  draw.text(xy, label, fill=_TEXT_COLOUR, font=font)
  draw.text((4, plot.top - line - 4), '% of set', fill=_TEXT_COLOUR, font=font)


def _draw_bars(
  image: Image.Image,
  plot: _Plot,
  edges: np.ndarray,
  shares: Sequence[np.ndarray],
  colours: Sequence[tuple[int, int, int]],
) -> None:
  """Translucent bars (overlaps stay visible), each outlined as a step line."""
  overlay = Image.new('RGBA', image.size, (0, 0, 0, 0))
  layer = ImageDraw.Draw(overlay)
  for share, colour in zip(shares, colours, strict=True):
    for i, value in enumerate(share):
      if value > 0:
        box = (plot.x(edges[i]), plot.y(value), plot.x(edges[i + 1]), plot.bottom)
        layer.rectangle(box, fill=(*colour, 90))
  image.paste(Image.alpha_composite(image.convert('RGBA'), overlay).convert('RGB'))
  draw = ImageDraw.Draw(image)
  for share, colour in zip(shares, colours, strict=True):
    points = [(plot.x(plot.lo), plot.bottom)]
    for i, value in enumerate(share):
      points += [
        (plot.x(edges[i]), plot.y(value)),
        (plot.x(edges[i + 1]), plot.y(value)),
      ]
    points.append((plot.x(plot.hi), plot.bottom))
    draw.line(points, fill=colour, width=2)


def _draw_threshold(
  draw: ImageDraw.ImageDraw, plot: _Plot, value: float, font: Any
) -> None:
  """Dashed vertical line at the train-to-train 1st percentile, labelled."""
  x = plot.x(value)
  for y in range(plot.top, plot.bottom, 8):
    draw.line((x, y, x, min(y + 4, plot.bottom)), fill=_TEXT_COLOUR)
  note = f'train 1st pct. = {value:.4g}'
  fits_right = x + 4 + font.getlength(note) < plot.right
  note_x = x + 4 if fits_right else x - 4 - font.getlength(note)
  draw.text((note_x, plot.top + 3), note, fill=_TEXT_COLOUR, font=font)


def enlarge(images: np.ndarray, min_size: int = MIN_TILE) -> np.ndarray:
  """uint8 [N, H, W, C] enlarged by the integer factor that makes the smaller
  side at least `min_size` (nearest neighbour: pixels stay visible)."""
  factor = max(1, math.ceil(min_size / min(images.shape[1:3])))
  return images.repeat(factor, axis=1).repeat(factor, axis=2)


def rgb(images: np.ndarray) -> np.ndarray:
  return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def labelled_grid(
  images: np.ndarray,
  labels: Sequence[str] | None = None,
  *,
  num_cols: int,
  title: str | None = None,
  row_labels: Sequence[str] | None = None,
  pad: int = 4,
) -> Image.Image:
  """An RGB grid of uint8 [N, H, W, C] images (enlarged to >= MIN_TILE px),
  each with an optional caption above it, rows with an optional label at
  the left, and an optional title line."""
  tiles = rgb(enlarge(images))
  n, h, w, _ = tiles.shape
  num_rows = math.ceil(n / num_cols)
  caption = 12 if labels else 0
  left = 8 + 7 * max((len(r) for r in row_labels), default=0) if row_labels else 0
  top = 18 if title else 0
  width = left + num_cols * (w + pad) + pad
  height = top + num_rows * (h + caption + pad) + pad
  canvas = Image.new('RGB', (width, height), 'white')
  draw = ImageDraw.Draw(canvas)
  if title:
    draw.text((pad, 3), title, fill='black')
  for i, tile in enumerate(tiles):
    r, c = divmod(i, num_cols)
    x = left + pad + c * (w + pad)
    y = top + pad + r * (h + caption + pad)
    if labels:
      draw.text((x, y - 1), labels[i], fill='black')
    canvas.paste(Image.fromarray(tile), (x, y + caption))
  for r, label in enumerate(row_labels or ()):
    y = top + pad + r * (h + caption + pad) + caption + h // 2 - 6
    draw.text((4, y), label, fill='black')
  return canvas


def side_by_side(images: Sequence[Image.Image], gap: int = 16) -> Image.Image:
  width = sum(i.width for i in images) + gap * (len(images) - 1)
  canvas = Image.new('RGB', (width, max(i.height for i in images)), 'white')
  x = 0
  for image in images:
    canvas.paste(image, (x, 0))
    x += image.width + gap
  return canvas


def stacked(images: Sequence[Image.Image], gap: int = 8) -> Image.Image:
  """Images one above the other, left-aligned, on white."""
  height = sum(i.height for i in images) + gap * (len(images) - 1)
  canvas = Image.new('RGB', (max(i.width for i in images), height), 'white')
  y = 0
  for image in images:
    canvas.paste(image, (0, y))
    y += image.height + gap
  return canvas


def save_gif(
  frames: Sequence[Image.Image], path: str, *, fps: float, hold_last: float = 0.0
) -> str:
  """An endlessly looping animated GIF, atomically; the last frame stays
  `hold_last` seconds longer."""
  if not frames:
    raise ValueError('no frames to write')
  frames = [  # One exact palette per frame: small files, no dithering noise.
    f.convert('RGB').quantize(colors=256, dither=Image.Dither.NONE) for f in frames
  ]
  buffer = io.BytesIO()
  frames[0].save(
    buffer,
    format='GIF',
    save_all=True,
    append_images=frames[1:],
    duration=[max(20, round(1000 / fps))] * (len(frames) - 1)
    + [max(20, round(1000 / fps + 1000 * hold_last))],
    loop=0,
    disposal=1,
  )
  return files.write_atomic(path, buffer.getvalue())
