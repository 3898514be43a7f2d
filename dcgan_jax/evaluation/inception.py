"""The Inception-v3 network of FID, KID and IS, in Flax, with its weights.

`FIDInceptionV3` is pytorch-fid's `FIDInceptionV3`, i.e. the TensorFlow graph
'pt_inception-2015-12-05' that FID was defined with: torchvision's
Inception-v3 layout with 1008 classes, no auxiliary head, and the graph's
pooling quirks (average pools that do not count padding; a max pool in the
last block's pool branch). One pass gives both the 2048-d `pool3` features
(FID, KID) and the 1008 `logits` (IS).

  module, variables = inception.load_fid_inception()
  out = module.apply(variables, inception.preprocess(images))
  out['pool3']   # [N, 2048]
  out['logits']  # [N, 1008]

`images` are the project's: [N, H, W, 1 or 3] floats in [-1, 1]. The weights
are pytorch-fid's file, read without torch (see `dcgan_jax.evaluation.pth_reader`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import urllib.request

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from dcgan_jax.evaluation import pth_reader
from dcgan_jax.util import files

INPUT_SIZE = 299
NUM_CLASSES = 1008
FID_WEIGHTS_URL = (
  'https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
  'pt_inception-2015-12-05-6726825d.pth'
)
FID_WEIGHTS_FILENAME = FID_WEIGHTS_URL.rsplit('/', 1)[1]
# torch.hub convention: the hex digits before '.pth' start the file's SHA-256.
FID_WEIGHTS_SHA256_PREFIX = re.search(r'-([0-9a-f]+)\.pth$', FID_WEIGHTS_FILENAME)[1]
# The whole SHA-256 and size of pytorch-fid's published file: a download must
# match; any other file is used but recorded as not the official weights.
FID_WEIGHTS_SHA256 = '6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2'
FID_WEIGHTS_SIZE = 95_628_359
# Where the weights file is looked for: this variable, else the cache below.
WEIGHTS_ENV_VAR = 'DCGAN_FID_WEIGHTS'
DEFAULT_CACHE_DIR = os.path.join('~', '.cache', 'dcgan_jax')

_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------
# The network.


class BasicConv2d(nn.Module):
  """Convolution without bias, BatchNorm (running statistics), ReLU.

  `padding` is torchvision's (rows, columns) zero padding on both sides.
  """

  features: int
  kernel_size: tuple[int, int]
  strides: int = 1
  padding: tuple[int, int] = (0, 0)
  precision: jax.lax.PrecisionLike = _HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pad_h, pad_w = self.padding
    x = nn.Conv(
      self.features,
      self.kernel_size,
      strides=self.strides,
      padding=((pad_h, pad_h), (pad_w, pad_w)),
      use_bias=False,
      precision=self.precision,
      name='conv',
    )(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name='bn')(x)
    return nn.relu(x)


def avg_pool_3x3_same(x: jax.Array) -> jax.Array:
  """3x3 stride-1 average pool, padding 1, padded zeros not counted (TF's)."""
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def max_pool_3x3_same(x: jax.Array) -> jax.Array:
  """3x3 stride-1 max pool, padding 1 (padding never wins the max)."""
  return nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))


def max_pool_3x3_valid(x: jax.Array) -> jax.Array:
  """3x3 stride-2 max pool without padding."""
  return nn.max_pool(x, (3, 3), (2, 2), 'VALID')


class InceptionA(nn.Module):
  """Mixed_5b/5c/5d (pytorch-fid's FIDInceptionA): 35x35, 64+64+96+pool."""

  pool_features: int
  precision: jax.lax.PrecisionLike = _HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b1 = conv(64, (1, 1), name='branch1x1')(x)
    b5 = conv(48, (1, 1), name='branch5x5_1')(x)
    b5 = conv(64, (5, 5), padding=(2, 2), name='branch5x5_2')(b5)
    b3 = conv(64, (1, 1), name='branch3x3dbl_1')(x)
    b3 = conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(b3)
    b3 = conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_3')(b3)
    bp = conv(self.pool_features, (1, 1), name='branch_pool')(avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a (torchvision's InceptionB): 35x35 -> 17x17, 384+96+input."""

  precision: jax.lax.PrecisionLike = _HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b3 = conv(384, (3, 3), strides=2, name='branch3x3')(x)
    bd = conv(64, (1, 1), name='branch3x3dbl_1')(x)
    bd = conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = conv(96, (3, 3), strides=2, name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, max_pool_3x3_valid(x)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b..6e (pytorch-fid's FIDInceptionC): 17x17, factorised 7x7."""

  channels_7x7: int
  precision: jax.lax.PrecisionLike = _HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    c7 = self.channels_7x7
    row = dict(kernel_size=(1, 7), padding=(0, 3))
    col = dict(kernel_size=(7, 1), padding=(3, 0))
    b1 = conv(192, (1, 1), name='branch1x1')(x)
    b7 = conv(c7, (1, 1), name='branch7x7_1')(x)
    b7 = conv(c7, **row, name='branch7x7_2')(b7)
    b7 = conv(192, **col, name='branch7x7_3')(b7)
    bd = conv(c7, (1, 1), name='branch7x7dbl_1')(x)
    bd = conv(c7, **col, name='branch7x7dbl_2')(bd)
    bd = conv(c7, **row, name='branch7x7dbl_3')(bd)
    bd = conv(c7, **col, name='branch7x7dbl_4')(bd)
    bd = conv(192, **row, name='branch7x7dbl_5')(bd)
    bp = conv(192, (1, 1), name='branch_pool')(avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a (torchvision's InceptionD): 17x17 -> 8x8, 320+192+input."""

  precision: jax.lax.PrecisionLike = _HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b3 = conv(192, (1, 1), name='branch3x3_1')(x)
    b3 = conv(320, (3, 3), strides=2, name='branch3x3_2')(b3)
    b7 = conv(192, (1, 1), name='branch7x7x3_1')(x)
    b7 = conv(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = conv(192, (3, 3), strides=2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, max_pool_3x3_valid(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b / 7c (pytorch-fid's FIDInceptionE_1 / _2): 8x8, 2048 out.

  `pool`: 'avg' (7b, padding not counted) or 'max' (7c: the TF graph's
  quirk, a 3x3 stride-1 max pool where the paper has an average pool).
  """

  pool: str
  precision: jax.lax.PrecisionLike = _HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    row = dict(kernel_size=(1, 3), padding=(0, 1))
    col = dict(kernel_size=(3, 1), padding=(1, 0))
    b1 = conv(320, (1, 1), name='branch1x1')(x)
    b3 = conv(384, (1, 1), name='branch3x3_1')(x)
    b3 = jnp.concatenate(
      [
        conv(384, **row, name='branch3x3_2a')(b3),
        conv(384, **col, name='branch3x3_2b')(b3),
      ],
      axis=-1,
    )
    bd = conv(448, (1, 1), name='branch3x3dbl_1')(x)
    bd = conv(384, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate(
      [
        conv(384, **row, name='branch3x3dbl_3a')(bd),
        conv(384, **col, name='branch3x3dbl_3b')(bd),
      ],
      axis=-1,
    )
    pool = {'avg': avg_pool_3x3_same, 'max': max_pool_3x3_same}[self.pool]
    bp = conv(192, (1, 1), name='branch_pool')(pool(x))
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """pytorch-fid's FIDInceptionV3 (TF 'pt_inception-2015-12-05'), NHWC.

  Input: [N, 299, 299, 3] in the network's range [-1, 1] (see `preprocess`).
  Output: {'pool3': [N, 2048] global average after Mixed_7c (FID, KID),
  'logits': [N, 1008] from fc (IS; softmax over all 1008)}. Inference only:
  BatchNorm uses the running statistics in `variables['batch_stats']`.
  `precision` defaults to HIGHEST so that GPUs/TPUs do not silently use
  TF32/bf16 passes, which move FID by more than its usual reporting digits.
  """

  num_classes: int = NUM_CLASSES
  precision: jax.lax.PrecisionLike = _HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    p = self.precision
    conv = functools.partial(BasicConv2d, precision=p)
    x = conv(32, (3, 3), strides=2, name='Conv2d_1a_3x3')(x)  # 149
    x = conv(32, (3, 3), name='Conv2d_2a_3x3')(x)  # 147
    x = conv(64, (3, 3), padding=(1, 1), name='Conv2d_2b_3x3')(x)
    x = max_pool_3x3_valid(x)  # 73
    x = conv(80, (1, 1), name='Conv2d_3b_1x1')(x)
    x = conv(192, (3, 3), name='Conv2d_4a_3x3')(x)  # 71
    x = max_pool_3x3_valid(x)  # 35
    x = InceptionA(32, precision=p, name='Mixed_5b')(x)  # 256
    x = InceptionA(64, precision=p, name='Mixed_5c')(x)  # 288
    x = InceptionA(64, precision=p, name='Mixed_5d')(x)  # 288
    x = InceptionB(precision=p, name='Mixed_6a')(x)  # 17x17x768
    for name, c7 in (('Mixed_6b', 128), ('Mixed_6c', 160), ('Mixed_6d', 160)):
      x = InceptionC(c7, precision=p, name=name)(x)
    x = InceptionC(192, precision=p, name='Mixed_6e')(x)
    x = InceptionD(precision=p, name='Mixed_7a')(x)  # 8x8x1280
    x = InceptionE('avg', precision=p, name='Mixed_7b')(x)  # 2048
    x = InceptionE('max', precision=p, name='Mixed_7c')(x)  # 2048
    pool3 = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, precision=p, name='fc')(pool3)
    return {'pool3': pool3, 'logits': logits}


# ----------------------------------------------------------------------------
# Preprocessing.


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] weights of PyTorch's bilinear resize, align_corners=False.

  Output pixel d samples the input at s = (d + 0.5) * in / out - 0.5,
  clamped below at 0, interpolating between floor(s) and floor(s) + 1 (the
  last pixel repeats past the edge). No antialiasing: when shrinking, each
  output still reads only two input pixels, as F.interpolate does.
  """
  src = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
  lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = src - lo
  weights = np.zeros((out_size, in_size))
  np.add.at(weights, (np.arange(out_size), lo), 1.0 - frac)
  np.add.at(weights, (np.arange(out_size), hi), frac)
  return weights


def resize_bilinear(images: jax.Array, height: int, width: int) -> jax.Array:
  """[N, H, W, C] -> [N, height, width, C] like F.interpolate(mode='bilinear',
  align_corners=False) without antialiasing.

  (jax.image.resize antialiases when shrinking unless told otherwise, which
  is not what pytorch-fid or the TF graph did.)
  """
  rows = jnp.asarray(bilinear_matrix(images.shape[1], height), images.dtype)
  cols = jnp.asarray(bilinear_matrix(images.shape[2], width), images.dtype)
  x = jnp.einsum('oh,nhwc->nowc', rows, images, precision=_HIGHEST)
  return jnp.einsum('pw,nowc->nopc', cols, x, precision=_HIGHEST)


def preprocess(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
  """Project images -> the network's input, as pytorch-fid prepares them.

  images: [N, H, W, C] float in [-1, 1] (the project's convention), any H, W,
  C = 1 (repeated to RGB) or 3. pytorch-fid takes x01 in [0, 1], resizes it
  to 299x299 (bilinear, align_corners=False, no antialiasing) and feeds
  2 * x01 - 1. Here: x01 = (images + 1) / 2, then the same two steps, so
  [-1, 1] maps to [-1, 1]. Values are neither clipped nor quantised.
  Returns float32 [N, size, size, 3].

  This is pytorch-fid's resize; the original TF FID code resized inside the
  graph with TF1's ResizeBilinear (no half-pixel centres), so scores match
  pytorch-fid's to the last digits, TF's only closely.
  """
  images = jnp.asarray(images)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f'expected [N, H, W, 1 or 3] images, got shape {images.shape}')
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise TypeError(
      f'expected float images in [-1, 1], got {images.dtype}; convert uint8 '
      'images with x / 127.5 - 1'
    )
  images = images.astype(jnp.float32)
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  unit = (images + 1.0) / 2.0  # pytorch-fid's input range [0, 1]
  unit = resize_bilinear(unit, size, size)
  return 2.0 * unit - 1.0  # pytorch-fid's normalize_input


# ----------------------------------------------------------------------------
# Weights: the pytorch-fid state dict -> Flax variables.


def _flax_path(torch_name: str) -> tuple[tuple[str, ...], bool]:
  """'A.b.conv.weight' -> (('params', 'A', 'b', 'conv', 'kernel'), transpose)."""
  *modules, leaf = torch_name.split('.')
  collection, name, transpose = {
    ('conv', 'weight'): ('params', 'kernel', True),
    ('bn', 'weight'): ('params', 'scale', False),
    ('bn', 'bias'): ('params', 'bias', False),
    ('bn', 'running_mean'): ('batch_stats', 'mean', False),
    ('bn', 'running_var'): ('batch_stats', 'var', False),
    ('fc', 'weight'): ('params', 'kernel', True),
    ('fc', 'bias'): ('params', 'bias', False),
  }[(modules[-1], leaf)]
  return (collection, *modules, name), transpose


def _torch_name(path: tuple[str, ...]) -> str:
  """Inverse of _flax_path: ('params', ..., 'conv', 'kernel') -> '....conv.weight'."""
  collection, *modules, name = path
  leaf = {
    ('params', 'kernel'): 'weight',
    ('params', 'scale'): 'weight',
    ('params', 'bias'): 'bias',
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
  }[(collection, name)]
  return '.'.join([*modules, leaf])


def _to_flax_layout(array: np.ndarray, transpose: bool) -> np.ndarray:
  """Conv OIHW -> HWIO, Dense [out, in] -> [in, out]; others unchanged."""
  if not transpose:
    return array
  return array.transpose(2, 3, 1, 0) if array.ndim == 4 else array.T


def _torch_shape(shape: tuple[int, ...], path: tuple[str, ...]) -> tuple[int, ...]:
  if path[-1] != 'kernel':
    return tuple(shape)
  if len(shape) == 4:
    h, w, i, o = shape
    return (o, i, h, w)
  return tuple(reversed(shape))


def expected_state_dict_shapes(module: nn.Module | None = None) -> dict[str, tuple]:
  """{torch name: torch shape} of every tensor the module needs from the file."""
  module = module or FIDInceptionV3()
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 75, 75, 3)))
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  out = {}
  for key_path, leaf in flat:
    path = tuple(k.key for k in key_path)
    out[_torch_name(path)] = _torch_shape(leaf.shape, path)
  return dict(sorted(out.items()))


def _mismatch_report(state_dict, expected, source: str) -> str | None:
  ignored = {k for k in state_dict if k.endswith('.num_batches_tracked')}
  missing = [k for k in expected if k not in state_dict]
  unexpected = [k for k in state_dict if k not in expected and k not in ignored]
  wrong = [
    f'{k}: file {tuple(state_dict[k].shape)}, network {expected[k]}'
    for k in expected
    if k in state_dict and tuple(state_dict[k].shape) != expected[k]
  ]
  if not (missing or unexpected or wrong):
    return None
  lines = [f'{source} does not match FIDInceptionV3:']
  for title, items in (
    ('missing from the file', missing),
    ('not in the network', unexpected),
    ('shape mismatches', wrong),
  ):
    if items:
      lines.append(f'  {len(items)} {title}, first: ' + '; '.join(items[:8]))
  lines.append(
    f"Expected the state dict of pytorch-fid's {FID_WEIGHTS_FILENAME} "
    f'({len(expected)} tensors, from {FID_WEIGHTS_URL}).'
  )
  return '\n'.join(lines)


def variables_from_state_dict(
  state_dict: dict[str, np.ndarray],
  module: nn.Module | None = None,
  source: str = 'state dict',
) -> dict:
  """Flax variables {'params', 'batch_stats'} from pytorch-fid's state dict.

  Conv OIHW -> HWIO, fc [out, in] -> [in, out], BatchNorm weight/bias ->
  scale/bias, running_mean/var -> batch_stats mean/var; num_batches_tracked
  is ignored. Raises ValueError listing the first mismatched names/shapes.
  """
  expected = expected_state_dict_shapes(module)
  report = _mismatch_report(state_dict, expected, source)
  if report:
    raise ValueError(report)
  variables = {}
  for name in expected:
    path, transpose = _flax_path(name)
    node = variables
    for key in path[:-1]:
      node = node.setdefault(key, {})
    array = np.asarray(state_dict[name], np.float32)
    node[path[-1]] = jnp.asarray(_to_flax_layout(array, transpose))
  return variables


def default_weights_path() -> str:
  """$DCGAN_FID_WEIGHTS, else ~/.cache/dcgan_jax/<pytorch-fid file name>."""
  return os.environ.get(WEIGHTS_ENV_VAR) or os.path.join(
    os.path.expanduser(DEFAULT_CACHE_DIR), FID_WEIGHTS_FILENAME
  )


def download_weights(path: str, url: str = FID_WEIGHTS_URL, timeout: float = 60.0):
  """Downloads `url` to `path` (temp file + atomic rename) if its SHA-256 is
  FID_WEIGHTS_SHA256; raises OSError otherwise, leaving nothing behind."""
  sha = hashlib.sha256()
  with files.atomic_write(path) as f, urllib.request.urlopen(url, timeout=timeout) as r:
    while chunk := r.read(1 << 20):
      sha.update(chunk)
      f.write(chunk)
    if sha.hexdigest() != FID_WEIGHTS_SHA256:
      raise OSError(
        f'downloaded {url} has SHA-256 {sha.hexdigest()}, expected '
        f'{FID_WEIGHTS_SHA256}: refusing it'
      )


# (absolute path, size, mtime) -> SHA-256: each file is hashed once a process.
_SHA256_BY_FILE: dict[tuple[str, int, float], str] = {}
_WARNED_UNOFFICIAL: set[tuple[str, str]] = set()  # (path, SHA-256): warn once.


def file_sha256(path: str | os.PathLike) -> str:
  """The SHA-256 of a local file or URL, hashed once per (path, size, mtime)."""
  stat = files.as_path(path).stat()
  key = (files.absolute(path), int(stat.length), float(stat.mtime))
  if key not in _SHA256_BY_FILE:
    sha = hashlib.sha256()
    with files.open(path) as f:
      while chunk := f.read(1 << 20):
        sha.update(chunk)
    _SHA256_BY_FILE[key] = sha.hexdigest()
  return _SHA256_BY_FILE[key]


def weights_identity(path: str | os.PathLike | None = None) -> dict[str, object]:
  """{'inception_weights_sha256', 'inception_weights_official'} of the file
  `resolve_weights(path, download=False)` names; official: it is pytorch-fid's
  published file. Another file is accepted, with a warning."""
  resolved = resolve_weights(None if path is None else os.fspath(path), False)
  sha = file_sha256(resolved)
  official = sha == FID_WEIGHTS_SHA256
  if not official and (resolved, sha) not in _WARNED_UNOFFICIAL:
    _WARNED_UNOFFICIAL.add((resolved, sha))
    logging.warning(
      'FID Inception weights %s have SHA-256 %s, not that of pytorch-fid\'s '
      '%s (%s): FID/KID/IS from them are not comparable with published ones.',
      resolved, sha, FID_WEIGHTS_FILENAME, FID_WEIGHTS_SHA256,
    )  # fmt: skip
  return {'inception_weights_sha256': sha, 'inception_weights_official': official}


def resolve_weights(path: str | None, download: bool = True) -> str:
  """The weights file to read: `path` (must exist), else $DCGAN_FID_WEIGHTS,
  else the cache, downloaded once if `download`; FileNotFoundError saying
  where to put it otherwise."""
  if path is not None:
    if not files.exists(path):
      raise FileNotFoundError(_missing_message(path, 'was given as path'))
    return path
  path = default_weights_path()
  if files.exists(path):
    return path
  if not download:
    raise FileNotFoundError(_missing_message(path, 'is missing (download=False)'))
  try:
    download_weights(path)
  except Exception as e:  # no network, HTTP error, hash mismatch, disk full
    raise FileNotFoundError(
      _missing_message(path, f'is missing and downloading it failed ({e!r})')
    ) from e
  return path


def _missing_message(path: str, what: str) -> str:
  path = files.absolute(path, 'Inception weights')
  return (
    f'FID Inception weights not found: {path} {what}. '
    f"Download pytorch-fid's {FID_WEIGHTS_URL} ({FID_WEIGHTS_SIZE:,} bytes, "
    f'SHA-256 {FID_WEIGHTS_SHA256}) on a machine with internet access and put '
    f'it at {path}; or put it anywhere (a local path or a gs:// URL) and set '
    f'${WEIGHTS_ENV_VAR} to its path (or pass path=).'
  )


def load_fid_inception(
  path: str | os.PathLike | None = None, *, download: bool = True
) -> tuple[FIDInceptionV3, dict]:
  """(module, variables) of the FID Inception network with pytorch-fid's weights.

  The file: `path` if given (must exist), else $DCGAN_FID_WEIGHTS, else
  ~/.cache/dcgan_jax/pt_inception-2015-12-05-6726825d.pth; one download
  attempt into that location when it is missing. Raises FileNotFoundError
  (saying where to put which file) or ValueError (names/shapes that differ).
  """
  resolved = resolve_weights(None if path is None else os.fspath(path), download)
  weights_identity(resolved)  # Hashed once; warns if not the official file.
  state_dict = pth_reader.load_state_dict(resolved)
  module = FIDInceptionV3()
  return module, variables_from_state_dict(state_dict, module, source=resolved)
