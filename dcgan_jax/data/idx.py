"""IDX files (MNIST's format): the arrays they hold, checked.

An 'idx:DIR' data set is a directory of them: PREFIX-images-idx3-ubyte and
PREFIX-labels-idx1-ubyte (each maybe gzipped) per split, with the prefix
'train' for split 'train' and 't10k' for 'test'. DIR is a local directory
or a gs:// URL: every file is read through `dcgan_jax.util.files`.
"""

import gzip
import math
import struct
import zlib

import numpy as np

from dcgan_jax.util import files

# IDX split -> file name prefix, and file kind -> name part: a split's files
# are PREFIX-images-idx3-ubyte and PREFIX-labels-idx1-ubyte (each maybe .gz).
IDX_SPLITS = {'train': 'train', 'test': 't10k'}


_IDX_KINDS = {'images': 'images-idx3', 'labels': 'labels-idx1'}


# IDX type byte -> element dtype (big-endian).
_IDX_DTYPES = {
  0x08: np.dtype('u1'),
  0x09: np.dtype('i1'),
  0x0B: np.dtype('>i2'),
  0x0C: np.dtype('>i4'),
  0x0D: np.dtype('>f4'),
  0x0E: np.dtype('>f8'),
}


def idx_file(directory: str, split: str, kind: str) -> str:
  """The path of the split's 'images' or 'labels' IDX file in `directory`.

  The uncompressed name if that file exists, else the '.gz' one; a
  FileNotFoundError that names both and says what to put where if neither
  does, a ValueError for a split other than 'train' and 'test'.
  """
  if split not in IDX_SPLITS:
    raise ValueError(
      f'An idx: data set has the splits {list(IDX_SPLITS)}, not {split!r}; set '
      'config.split to one of them.'
    )
  if not files.isdir(directory):
    raise FileNotFoundError(
      f'IDX directory {directory} does not exist; fix config.dataset="idx:DIR" '
      '(DIR holds e.g. t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz).'
    )
  base = f'{IDX_SPLITS[split]}-{_IDX_KINDS[kind]}-ubyte'
  for name in (base, base + '.gz'):
    path = files.join(directory, name)
    if files.isfile(path):
      return path
  present = sorted(
    s
    for s, prefix in IDX_SPLITS.items()
    if any(
      f.startswith(f'{prefix}-images-idx3-ubyte') for f in files.listdir(directory)
    )
  )
  wanted = ', '.join(f'{IDX_SPLITS[split]}-{k}-ubyte[.gz]' for k in _IDX_KINDS.values())
  raise FileNotFoundError(
    f'Split {split!r} of the IDX data set in {directory} needs {base} (or '
    f'{base}.gz), which is not there. Put the MNIST-format files {wanted} in '
    f'{directory}, or set config.split to a split that is there '
    f'({present or "none is"}).'
  )


def read_idx(path: str) -> np.ndarray:
  """The array in an IDX file (gzipped or not), in native byte order.

  Checks the magic number (00 00 TYPE NDIM), the dimensions and that the
  data has exactly the size the header announces; a ValueError naming the
  file otherwise.
  """
  try:
    data = files.read_bytes(path)
    if data[:2] == b'\x1f\x8b':  # gzip, whatever the file is called.
      data = gzip.decompress(data)
  except (OSError, EOFError, zlib.error) as e:
    raise ValueError(
      f'Cannot read the IDX file {path} ({e}); replace it with an intact copy.'
    ) from e
  return _parse_idx(data, path)


def _parse_idx(data: bytes, path: str) -> np.ndarray:
  """The array in an IDX file's bytes; a ValueError naming `path` if malformed."""
  fix = 'replace it with an intact copy of the original file'
  if len(data) < 4 or data[:2] != b'\0\0' or data[2] not in _IDX_DTYPES:
    first = data[:4].hex(' ') or '(none)'
    raise ValueError(
      f'{path} is not an IDX file: it starts with bytes {first}, where an IDX '
      f'header starts 00 00 TYPE NDIM (TYPE 08 = uint8, ...); {fix}.'
    )
  ndim = data[3]
  start = 4 + 4 * ndim
  if ndim == 0 or len(data) < start:
    raise ValueError(
      f'{path}: the IDX header announces {ndim} dimensions, which the file '
      f'cannot hold ({len(data)} bytes); {fix}.'
    )
  shape = struct.unpack(f'>{ndim}I', data[4:start])
  dtype = _IDX_DTYPES[data[2]]
  expected = math.prod(shape) * dtype.itemsize
  if len(data) - start != expected:
    raise ValueError(
      f'{path}: the IDX header announces {dtype.name} data of shape {shape} '
      f'({expected} bytes), but the file holds {len(data) - start} bytes '
      f'after the header (truncated or corrupt); {fix}.'
    )
  array = np.frombuffer(data, dtype, offset=start).reshape(shape)
  return array.astype(dtype.newbyteorder('='), copy=False)


def idx_images(directory: str, split: str) -> np.ndarray:
  """The split's images as stored, uint8 [N, rows, cols, 1] (or [..., C])."""
  path = idx_file(directory, split, 'images')
  images = read_idx(path)
  if images.dtype != np.uint8 or images.ndim not in (3, 4) or not images.size:
    raise ValueError(
      f'{path} holds {images.dtype.name} data of shape {images.shape}; an '
      'images file holds uint8 [N, rows, cols] (idx3-ubyte). Is it the right file?'
    )
  return images[..., None] if images.ndim == 3 else images


def idx_labels(directory: str, split: str) -> np.ndarray:
  """The split's labels, int32 [N], checked against its images file's N."""
  path = idx_file(directory, split, 'labels')
  labels = read_idx(path)
  if labels.ndim != 1 or labels.dtype.kind not in 'iu' or (labels < 0).any():
    raise ValueError(
      f'{path} holds {labels.dtype.name} data of shape {labels.shape}; a labels '
      'file holds non-negative integers [N] (idx1-ubyte). Is it the right file?'
    )
  num_images = _idx_length(idx_file(directory, split, 'images'))
  if len(labels) != num_images:
    raise ValueError(
      f'{path} has {len(labels)} labels but the images file of split {split!r} '
      f'has {num_images} images: the two files do not belong together.'
    )
  return labels.astype(np.int32)


def _idx_length(path: str) -> int:
  """The first dimension in an IDX file's header (reads only the header)."""
  try:
    with files.open(path) as f:
      gzipped = f.read(2) == b'\x1f\x8b'  # gzip, whatever the file is called.
      f.seek(0)
      header = (gzip.GzipFile(fileobj=f) if gzipped else f).read(8)
  except (OSError, EOFError, zlib.error) as e:
    raise ValueError(f'Cannot read the IDX file {path} ({e}).') from e
  if len(header) < 8 or header[:2] != b'\0\0' or header[2] not in _IDX_DTYPES:
    _parse_idx(header, path)  # Raises with the reason.
  if header[3] == 0:
    raise ValueError(f'{path}: the IDX header announces 0 dimensions.')
  return struct.unpack('>I', header[4:8])[0]
