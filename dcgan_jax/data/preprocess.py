"""Decoding and preprocessing one image, with Pillow and NumPy.

`decode` turns a file's bytes (PNG, JPEG, GIF, BMP) into uint8 [H, W, C]
(C = 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA), checking the size its header
declares before any pixel is decoded. `preprocess` converts the channels,
crops and resizes it to uint8 [S, S, num_channels]:

- channels: alpha is dropped, RGB -> grey by ITU-R 601 luminance
  (0.299 R + 0.587 G + 0.114 B), grey -> RGB by repetition;
- crop: 'center' (the largest centred square), 'celeba' (a centred
  108 x 108, or the centred square of an image smaller than that), 'none';
- resize: antialiased bilinear (a triangle filter widened by the
  downscaling factor, pixel centres at half-integers, weights normalised
  over the pixels inside the image), in float32, then rounded half to even
  and clipped to 0..255.

The resize is the one `tf.image.resize(method='bilinear', antialias=True)`
computes, so images preprocessed before TensorFlow became optional keep
their pixels: upscaling by a power of two (the digits' 8 -> 32) gives
identical bytes, other sizes agree to within one grey level on the rare
pixel whose value lands on a rounding boundary (tests/preprocess_test.py).
"""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image, ImageSequence

CROPS = ('center', 'celeba', 'none')
CELEBA_CROP = 108
_LUMINANCE = (np.float32(0.299), np.float32(0.587), np.float32(0.114))

# Pillow's own guard against decompression bombs (a warning above ~89M
# pixels, an error above twice that) is replaced by `decode`'s check of the
# header against the caller's limit, made before any pixel is decoded.
Image.MAX_IMAGE_PIXELS = None


class BadImage(ValueError):
  """Bytes that are no decodable PNG, JPEG, GIF or BMP image."""


class TooManyPixels(BadImage):
  """An image whose header declares more pixels than allowed."""


def header_pixels(contents: bytes) -> int:
  """Width x height as a PNG, GIF, BMP or JPEG header declares it, read
  without decoding (nor checking) anything else; 0 for other bytes."""
  head = contents[:32].ljust(32, b'\0')
  if head.startswith(b'\x89PNG'):
    return int.from_bytes(head[16:20], 'big') * int.from_bytes(head[20:24], 'big')
  if head.startswith(b'GIF8'):
    return int.from_bytes(head[6:8], 'little') * int.from_bytes(head[8:10], 'little')
  if head.startswith(b'BM'):
    width = int.from_bytes(head[18:22], 'little', signed=True)
    height = int.from_bytes(head[22:26], 'little', signed=True)
    return abs(width) * abs(height)  # A negative height: rows top-down.
  if head.startswith(b'\xff\xd8'):  # JPEG: Pillow reads the frame header.
    try:
      with Image.open(io.BytesIO(contents)) as image:
        return image.width * image.height
    except Exception:  # noqa: BLE001  A header too broken to read.
      return 0
  return 0


def decode(contents: bytes, max_pixels: int) -> np.ndarray:
  """A file's bytes -> uint8 [H, W, C]; a GIF gives its first frame.

  Raises TooManyPixels for a header declaring more than max_pixels pixels,
  BadImage for anything else that cannot be decoded.
  """
  if header_pixels(contents) > max_pixels:
    raise TooManyPixels(f'image over MAX_IMAGE_PIXELS={max_pixels:,} pixels')
  try:
    image = Image.open(io.BytesIO(contents))
  except Exception as e:  # noqa: BLE001
    raise BadImage(f'not a readable image ({e})') from e
  with image:
    if image.width * image.height > max_pixels:  # Another format's header.
      raise TooManyPixels(f'image over MAX_IMAGE_PIXELS={max_pixels:,} pixels')
    try:
      image = next(ImageSequence.Iterator(image))  # The first frame.
      pixels = _to_array(image)
    except Exception as e:  # noqa: BLE001  Truncated or corrupt data.
      raise BadImage(f'cannot decode ({e})') from e
  if pixels.ndim == 2:
    pixels = pixels[..., None]
  return pixels


def _to_array(image: Image.Image) -> np.ndarray:
  """Pillow's modes as uint8 grey, grey + alpha, RGB or RGBA."""
  mode = image.mode
  if mode in ('L', 'LA', 'RGB', 'RGBA'):
    return np.asarray(image, np.uint8)
  if mode == '1':
    return np.asarray(image.convert('L'), np.uint8)
  if mode in ('I;16', 'I;16B', 'I;16L', 'I'):  # 16-bit grey -> 8 bits.
    wide = np.asarray(image, np.int64)
    return np.round(np.clip(wide, 0, 65535) / 257.0).astype(np.uint8)
  if mode == 'P' or mode == 'PA':
    has_alpha = 'transparency' in image.info or mode == 'PA'
    return np.asarray(image.convert('RGBA' if has_alpha else 'RGB'), np.uint8)
  return np.asarray(image.convert('RGB'), np.uint8)


def preprocess(
  image: np.ndarray, *, image_size: int, num_channels: int, crop: str
) -> np.ndarray:
  """One decoded image [H, W, C] (C in 1..4) -> uint8 [S, S, num_channels]."""
  x = np.asarray(image, np.float32)
  if x.ndim == 2:
    x = x[..., None]
  channels = x.shape[-1]
  if num_channels == 1:
    if channels >= 3:
      r, g, b = _LUMINANCE
      x = x[..., 0:1] * r + x[..., 1:2] * g + x[..., 2:3] * b
    else:
      x = x[..., :1]
  elif channels >= 3:
    x = x[..., :3]
  else:
    x = np.repeat(x[..., :1], 3, axis=-1)
  if crop != 'none':
    x = _crop(x, crop)
  x = _resize_axis(x, 0, image_size)
  x = _resize_axis(x, 1, image_size)
  return np.clip(np.round(x), 0.0, 255.0).astype(np.uint8)


def _crop(x: np.ndarray, crop: str) -> np.ndarray:
  height, width = x.shape[:2]
  side = min(height, width)
  if crop == 'celeba' and side >= CELEBA_CROP:
    side = CELEBA_CROP
  top = (height - side) // 2
  left = (width - side) // 2
  return x[top : top + side, left : left + side]


@functools.lru_cache(maxsize=256)
def _weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(first input pixel int64 [out], weights float32 [out, span]) of the
  antialiased triangle filter that maps in_size pixels to out_size, each
  number computed in float32 as TensorFlow's ScaleAndTranslate kernel does."""
  f32 = np.float32
  inv_scale = f32(1) / (f32(out_size) / f32(in_size))
  kernel_scale = max(inv_scale, f32(1))
  one_over_kernel_scale = f32(1) / kernel_scale
  rows = []
  starts = np.empty(out_size, np.int64)
  for x in range(out_size):
    sample = (f32(x) + f32(0.5)) * inv_scale
    first = int(np.ceil(sample - kernel_scale - f32(0.5)))
    last = int(np.floor(sample + kernel_scale - f32(0.5)))
    first = min(max(first, 0), in_size - 1)
    last = min(max(last, 0), in_size - 1) + 1
    positions = np.arange(first, last).astype(f32) + f32(0.5) - sample
    weights = np.maximum(f32(0), f32(1) - np.abs(positions * one_over_kernel_scale))
    total = f32(0)
    for w in weights:  # Summed in order, in float32.
      total = f32(total + w)
    if abs(total) >= f32(1000) * np.finfo(f32).tiny:
      weights = weights * (f32(1) / total)
    starts[x] = first
    rows.append(weights.astype(f32))
  span = max(len(row) for row in rows)
  table = np.zeros((out_size, span), f32)
  for x, row in enumerate(rows):
    table[x, : len(row)] = row
  table.setflags(write=False)
  starts.setflags(write=False)
  return starts, table


def _resize_axis(x: np.ndarray, axis: int, out_size: int) -> np.ndarray:
  """Resamples float32 x along axis 0 or 1 to out_size pixels, adding the
  weighted input pixels in order (the same additions for every image)."""
  in_size = x.shape[axis]
  if in_size == out_size:
    return x
  starts, weights = _weights(in_size, out_size)
  moved = np.moveaxis(x, axis, 0)
  total = np.zeros((out_size,) + moved.shape[1:], np.float32)
  shape = (out_size,) + (1,) * (moved.ndim - 1)
  for k in range(weights.shape[1]):
    # Zero weights past a span's end read the last pixel, adding 0.
    pixels = np.minimum(starts + k, in_size - 1)
    total += weights[:, k].reshape(shape) * moved[pixels]
  return np.moveaxis(total, 0, axis)
