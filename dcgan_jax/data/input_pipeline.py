"""Training images: decoded once into a uint8 array, then batched by index.

`load_images` decodes, crops, resizes and converts a data set ONCE into a
uint8 array [N, S, S, C], kept in memory or in a memory-mapped .npy file.
`host_batches` then gathers batches by index. The example order is a pure
function of (seed, epoch) (`batch_indices`), so a run resumed at step s reads
exactly the batches an uninterrupted run reads, and each host gathers only
its own slice of the global batch.

Data sets (`dataset`):
  * a TFDS name ('mnist', 'cifar10', 'celeb_a', 'lsun/bedroom', ...), read
    without TensorFlow when prepared as ArrayRecord files (tfds_source.py);
  * 'digits': scikit-learn's 8x8 digits, built as the local TFDS data set
    `sklearn_digits` (see digits_dataset.py), then read like any TFDS name;
  * 'scenes': synthetic rooms with windows at known boxes, drawn offline as
    the local TFDS data set `synthetic_scenes` (scenes_dataset.py);
  * 'folder:PATH': every .png/.jpg/.jpeg/.bmp/.gif under PATH, recursively
    (case-insensitive extensions; symlinked folders are not followed),
    sorted by relative path component by component; GIFs give their first
    frame. Files that cannot be decoded (truncated or empty files, other
    bytes under an image name, unreadable files) stop the load
    with a ValueError naming them (bad_images='error'), or are left out with
    a warning (bad_images='skip');
  * 'idx:DIR': the original MNIST-format (IDX) files in DIR, as MNIST,
    Fashion-MNIST and KMNIST ship them. Split 'train' reads
    train-images-idx3-ubyte and train-labels-idx1-ubyte, split 'test'
    t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte, each optionally
    gzipped (.gz). Headers are checked (magic number, type, dimensions,
    size) and the images keep the files' order.

PATH and DIR are local paths or gs:// URLs: URLs are read through
`dcgan_jax.util.files` (a folder by one recursive listing, then many reads
at once); TFDS gets its data_dir as given (it reads URLs itself). The disk cache (cache_dir) is always local: it is
memory-mapped.

Preprocessing, the same for all of them: convert to `num_channels` (alpha is
dropped, RGB->grey by ITU-R 601 luminance, grey->RGB by repetition), crop
('center': largest centred square; 'celeba': centred 108x108, falling back to
the centred square for images smaller than 108 in either dimension; 'none'),
resize to image_size x image_size with antialiased bilinear filtering, round
to uint8 (preprocess.py: Pillow decodes, NumPy resizes, on a thread per
core). No augmentation.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import hashlib
import itertools
import math
import os
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
from absl import logging

from dcgan_jax.data import idx, preprocess, tfds_source
from dcgan_jax.util import files

CROPS = preprocess.CROPS
CACHES = ('memory', 'disk')
BAD_IMAGES = ('error', 'skip')
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif')
DIGITS_TFDS_NAME = tfds_source.DIGITS_TFDS_NAME
SCENES_TFDS_NAME = tfds_source.SCENES_TFDS_NAME
_LOCAL_TFDS = tfds_source.LOCAL
CELEBA_CROP = preprocess.CELEBA_CROP
# Why config.cache_dir must be a local directory (said with the error).
CACHE_DIR_WHY = (
  'the decoded images are memory-mapped from it, which needs a local file '
  'system; unset it for the default or name a local directory'
)
# Bumped whenever preprocessing changes, so stale disk caches are not reused.
_CACHE_FORMAT = 'v1'
_DECODE_BATCH = 256  # Images handed to the decoding threads at a time.
_DECODE_THREADS = 16
_BAD_LISTED = 5  # Undecodable files named in errors and warnings.
# Decoding allocates height x width x channels bytes before anything else
# looks at an image, and a few-KB PNG can declare 100,000 x 100,000 pixels.
# A folder image declaring more pixels than this in its header (PNG, JPEG,
# GIF, BMP) is a bad image ('error' names it, 'skip' leaves it out). 2**28 =
# 16,384 x 16,384: 0.8 GB decoded as RGB, far above any GAN training image.
MAX_IMAGE_PIXELS = 2**28
_COPY_BYTES = 64 << 20  # Chunk size when copying into a smaller array.
_FOLDER_PREFIX = 'folder:'
_IDX_PREFIX = 'idx:'
_TMP_INFIX = '.tmp-'  # Cache files being written: PATH.tmp-PID-RANDOM.
_READ_THREADS = 32  # Files of a URL folder read at once...
_READ_AHEAD = 256  # ... and at most this many ahead of the decoder.
_HASH_BYTES = 64 << 20  # Bytes hashed at a time (memory maps stay paged out).
# Makes the uint8 output array of a given shape (e.g. a memmap).
_Allocator = Callable[[tuple[int, ...]], np.ndarray]


# --------------------------------------------------------------------------
# Public API.


def load_images(
  *,
  dataset: str,
  split: str = 'train',
  image_size: int,
  num_channels: int,
  crop: str = 'center',
  data_dir: str | None = None,
  download: bool = True,
  image_key: str = 'image',
  cache: str = 'memory',
  cache_dir: str | None = None,
  bad_images: str = 'error',
) -> np.ndarray:
  """Returns the preprocessed data set, uint8 [N, image_size, image_size, C].

  With cache='disk' the array is a read-only memmap of an .npy file in
  `cache_dir`, written once (atomically) and reused by later calls; it is
  keyed by data set, split, size, channels and crop (for 'folder:', by the
  path and its files' names and sizes). 'digits' and 'scenes' are built
  locally even when download=False: they need no network.

  bad_images (only for 'folder:'; TFDS data sets are checked when prepared):
  what to do with files that cannot be decoded. 'error': a ValueError
  that counts and names them, after trying every file; 'skip': leave them
  out (the other images keep their order) and log a warning that counts and
  names them; a ValueError if none is left.
  """
  source = _parse_dataset(dataset)
  _check_options(image_size, num_channels, crop, cache, bad_images)
  if data_dir is not None:
    data_dir = files.check(data_dir, 'config.data_dir')
  if cache == 'disk':
    if cache_dir is None:
      raise ValueError("cache='disk' needs a directory: set config.cache_dir.")
    cache_dir = files.local(cache_dir, 'config.cache_dir', CACHE_DIR_WHY)
  if source.kind == 'folder':
    source = source._replace(listing=_list_folder(source.name))
  build = functools.partial(
    _build_array,
    source=source,
    split=split,
    image_size=image_size,
    num_channels=num_channels,
    crop=crop,
    data_dir=data_dir,
    download=download,
    image_key=image_key,
    bad_images=bad_images,
  )
  if cache == 'memory':
    images = build(out=None)
    images.setflags(write=False)
    return images
  path = os.path.join(
    cache_dir,
    _cache_key(source, split, image_size, num_channels, crop, image_key) + '.npy',
  )
  num_files = None if source.listing is None else len(source.listing)
  shape_tail = (image_size, image_size, num_channels)
  cached = _read_cache(path, shape_tail)
  # bad_images is not part of the cache key: a build that succeeds holds the
  # decodable images of the folder in either mode ('error' succeeds only when
  # every file decodes, and then 'skip' drops nothing), so both modes can
  # share the file. What differs is a cache built by 'skip' with files left
  # out (fewer rows than files, as the key pins the file list): 'error' must
  # not use it silently, so it decodes the folder again, which names the bad
  # files (or, if they were repaired in place, replaces the cache with the
  # full set); 'skip' uses it and warns again.
  if cached is not None and num_files is not None and len(cached) < num_files:
    missing = num_files - len(cached)
    if bad_images == 'error':
      logging.info(
        'Cache %s lacks %d undecodable images of %s; decoding the folder again.',
        path,
        missing,
        source.name,
      )
      cached = None
    else:
      logging.warning(
        'Cache %s leaves out %d of the %d images in %s, which could not be '
        "decoded when it was built (config.bad_images='skip'); delete it to "
        'decode them again.',
        path,
        missing,
        num_files,
        source.name,
      )
  if cached is not None:
    logging.info('Read %d cached images from %s.', len(cached), path)
    return cached
  _write_cache(path, build)
  return np.load(path, mmap_mode='r')


def prepare_source(
  *, dataset: str, data_dir: str | None = None, download: bool = True
) -> None:
  """Makes sure the data set can be read, before anything is written for a
  run: a TFDS data set is prepared (downloaded only where its hosts answer,
  see tfds_source.py), a folder is listed; an error that says what to change
  otherwise. Cheap where the data set is ready."""
  source = _parse_dataset(dataset)
  if source.kind == 'tfds':
    if data_dir is not None:
      data_dir = files.check(data_dir, 'config.data_dir')
    tfds_source.builder(source.name, data_dir, download)
  elif source.kind == 'folder':
    _list_folder(source.name)


def cache_name(
  *,
  dataset: str,
  split: str = 'train',
  image_size: int,
  num_channels: int,
  crop: str = 'center',
  image_key: str = 'image',
) -> str:
  """A file name (no extension) for what `load_images` returns with these
  options, from the options alone: a folder's or IDX directory's path, not
  its files (the disk cache's name adds those). It names the copy of the
  images that process 0 shares with the others (loader.py); their `digest`
  tells whether a copy is current."""
  source = _parse_dataset(dataset)
  if source.kind != 'tfds':
    source = source._replace(name=_hash(source.name))
  if source.kind == 'folder':
    split = 'all'
  return _safe_name(
    source.kind, source.name, split, image_size, num_channels, crop, image_key
  )


def digest(images: np.ndarray) -> str:
  """sha256 (hex) of uint8 images, their shape included: two arrays with
  the same digest hold the same images."""
  hasher = hashlib.sha256(repr(images.shape).encode())
  flat = images.reshape(-1)
  for start in range(0, flat.size, _HASH_BYTES):
    hasher.update(np.ascontiguousarray(flat[start : start + _HASH_BYTES]).data)
  return hasher.hexdigest()


def batch_indices(
  step: int, *, seed: int, num_examples: int, global_batch_size: int
) -> np.ndarray:
  """Example indices (int64 [global_batch_size]) of global step `step`.

  Epoch e = step // (num_examples // global_batch_size) visits the examples
  in the order np.random.default_rng([seed, e]).permutation(num_examples);
  the last num_examples % global_batch_size of each epoch's order are skipped.
  """
  check_batching(num_examples, global_batch_size, 1)
  if step < 0:
    raise ValueError(f'step must be >= 0, got {step}.')
  if seed < 0:
    raise ValueError(f'seed must be >= 0 (set config.seed), got {seed}.')
  steps_per_epoch = num_examples // global_batch_size
  epoch, position = divmod(step, steps_per_epoch)
  start = position * global_batch_size
  return _permutation(seed, epoch, num_examples)[start : start + global_batch_size]


def scale_images(images_uint8: np.ndarray) -> np.ndarray:
  """uint8 images to float32 in [-1, 1] (x / 127.5 - 1)."""
  x = np.asarray(images_uint8).astype(np.float32)
  x /= np.float32(127.5)
  x -= np.float32(1.0)
  return x


def host_batches(
  images: np.ndarray,
  *,
  seed: int,
  global_batch_size: int,
  start_step: int = 0,
  process_index: int = 0,
  process_count: int = 1,
  prefetch: int = 2,
) -> Iterator[np.ndarray]:
  """Yields this host's slice of the global batch for start_step, start_step+1...

  Each batch is float32 [global_batch_size // process_count, S, S, C] in
  [-1, 1]: rows process_index * B ... (process_index + 1) * B - 1 of the
  global batch `batch_indices(step)`. A daemon thread gathers `prefetch`
  batches ahead (0: gather in the caller's thread); it stops when the
  generator is closed or garbage-collected.
  """
  if images.ndim != 4:
    raise ValueError(f'images must be [N, S, S, C], got shape {images.shape}.')
  check_batching(len(images), global_batch_size, process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(
      f'process_index {process_index} is not in [0, process_count={process_count}).'
    )
  if start_step < 0 or prefetch < 0 or seed < 0:
    raise ValueError(
      f'start_step ({start_step}), prefetch ({prefetch}) and seed ({seed}) '
      'must be >= 0.'
    )
  per_host = global_batch_size // process_count
  lo = process_index * per_host

  def make(step: int) -> np.ndarray:
    indices = batch_indices(
      step, seed=seed, num_examples=len(images), global_batch_size=global_batch_size
    )
    return scale_images(_gather(images, indices[lo : lo + per_host]))

  if prefetch == 0:
    return (make(step) for step in _count(start_step))
  return _prefetched(make, start_step, prefetch)


def host_labels(
  labels: np.ndarray,
  *,
  seed: int,
  global_batch_size: int,
  start_step: int = 0,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[np.ndarray]:
  """The class labels (int32) of `host_batches`' images, batch for batch:
  the same `batch_indices` and this host's rows of them."""
  check_batching(len(labels), global_batch_size, process_count)
  per_host = global_batch_size // process_count
  lo = process_index * per_host
  for step in _count(start_step):
    indices = batch_indices(
      step, seed=seed, num_examples=len(labels), global_batch_size=global_batch_size
    )
    yield np.asarray(labels[indices[lo : lo + per_host]], np.int32)


# --------------------------------------------------------------------------
# Validation and batching helpers.


def _check_options(
  image_size: int, num_channels: int, crop: str, cache: str, bad_images: str
) -> None:
  if num_channels not in (1, 3):
    raise ValueError(
      f'num_channels must be 1 (grey) or 3 (RGB), got {num_channels}; '
      'set config.num_channels.'
    )
  if crop not in CROPS:
    raise ValueError(f'Unknown crop {crop!r}; set config.crop to one of {CROPS}.')
  if cache not in CACHES:
    raise ValueError(f'Unknown cache {cache!r}; set config.cache to one of {CACHES}.')
  if bad_images not in BAD_IMAGES:
    raise ValueError(
      f'Unknown bad_images {bad_images!r}; set config.bad_images to one of '
      f'{BAD_IMAGES}.'
    )
  if image_size < 1:
    raise ValueError(f'image_size must be >= 1, got {image_size}.')


def check_batching(
  num_examples: int, global_batch_size: int, process_count: int
) -> None:
  """A ValueError saying what to change unless the global batch splits
  evenly over the processes and the data set holds at least one."""
  if process_count < 1:
    raise ValueError(f'process_count must be >= 1, got {process_count}.')
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(
      f'config.global_batch_size ({global_batch_size}) must be a positive '
      f'multiple of the number of processes ({process_count}); change '
      'config.global_batch_size.'
    )
  if num_examples < global_batch_size:
    raise ValueError(
      f'The data set has {num_examples} examples, fewer than one global batch '
      f'({global_batch_size}); lower config.global_batch_size or use more data.'
    )


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  order = np.random.default_rng([seed, epoch]).permutation(num_examples)
  order = order.astype(np.int64)
  order.setflags(write=False)
  return order


def _gather(images: np.ndarray, indices: np.ndarray) -> np.ndarray:
  """images[indices], reading in ascending order (kind to memory maps)."""
  order = np.argsort(indices, kind='stable')
  out = np.empty((len(indices),) + images.shape[1:], images.dtype)
  out[order] = images[indices[order]]
  return out


def _count(start: int) -> Iterator[int]:
  while True:
    yield start
    start += 1


def _prefetched(
  make: Callable[[int], np.ndarray], start_step: int, depth: int
) -> Iterator[np.ndarray]:
  """make(start_step), make(start_step + 1), ... computed by a daemon thread."""
  ready: queue.Queue[tuple[np.ndarray | None, BaseException | None]]
  ready = queue.Queue(maxsize=depth)
  stop = threading.Event()

  def put(item: tuple[Any, Any]) -> None:
    while not stop.is_set():
      try:
        ready.put(item, timeout=0.05)
        return
      except queue.Full:
        continue

  def work() -> None:
    try:
      for step in _count(start_step):
        if stop.is_set():
          return
        put((make(step), None))
    except BaseException as e:  # Re-raised in the consumer.
      put((None, e))

  thread = threading.Thread(target=work, name='host_batches', daemon=True)
  thread.start()
  try:
    while True:
      batch, error = ready.get()
      if error is not None:
        raise error
      yield batch
  finally:
    stop.set()
    thread.join()


# --------------------------------------------------------------------------
# Data set sources.


class _Source(NamedTuple):
  """A data set: kind 'tfds' and its name, or kind 'folder' or 'idx' and an
  absolute path or URL; for 'folder', once listed, (relative path, size in
  bytes) of each image file, in order."""

  kind: str
  name: str
  listing: tuple[tuple[str, int], ...] | None = None


def _parse_dataset(dataset: str) -> _Source:
  if not isinstance(dataset, str) or not dataset.strip():
    raise ValueError(
      'config.dataset must be a TFDS name, "digits", "folder:PATH" or '
      f'"idx:DIR"; got {dataset!r}.'
    )
  if dataset.startswith(_IDX_PREFIX):
    path = dataset[len(_IDX_PREFIX) :]
    if not path:
      raise ValueError(
        'config.dataset="idx:DIR" needs the directory holding the IDX files '
        f'(e.g. "idx:/data/mnist" or "idx:gs://bucket/mnist"), got {dataset!r}.'
      )
    return _Source('idx', files.absolute(path, 'The IDX directory of config.dataset'))
  if dataset.startswith(_FOLDER_PREFIX):
    path = dataset[len(_FOLDER_PREFIX) :]
    if not path:
      raise ValueError(
        'config.dataset="folder:" needs a path: "folder:/path/to/images" or '
        '"folder:gs://bucket/images".'
      )
    return _Source('folder', files.absolute(path, 'The folder of config.dataset'))
  if dataset in _LOCAL_TFDS:
    return _Source('tfds', _LOCAL_TFDS[dataset])
  return _Source('tfds', dataset)


def _build_array(*, out: _Allocator | None, source: _Source, **kwargs) -> np.ndarray:
  """Runs the preprocessing pipeline into out(num_examples) (default: memory)."""
  start = time.perf_counter()
  if source.kind == 'folder':
    images = _load_folder(source.name, source.listing, out=out, **kwargs)
  elif source.kind == 'idx':
    images = _load_idx(source.name, out=out, **kwargs)
  else:
    images = _load_tfds(source.name, out=out, **kwargs)
  logging.info(
    'Preprocessed %d images of %s in %.1f s.',
    len(images),
    source.name,
    time.perf_counter() - start,
  )
  return images


def _load_tfds(
  name: str,
  *,
  out: _Allocator | None,
  split: str,
  data_dir: str | None,
  download: bool,
  image_key: str,
  bad_images: str,
  **options,
) -> np.ndarray:
  del bad_images  # folder: only.
  builder = tfds_source.builder(name, data_dir, download)
  features = builder.info.features
  if image_key not in features:
    raise ValueError(
      f'{name!r} has no feature {image_key!r} (it has {list(features.keys())}); '
      'set config.image_key.'
    )
  examples = tfds_source.Examples(builder, name, split, [image_key])
  elements = (example[image_key] for example in examples)
  images, _ = _run_pipeline(elements, len(examples), out=out, **options)
  return images


def _list_folder(path: str) -> tuple[tuple[str, int], ...]:
  """(relative path, size) of the images under `path`, sorted by path
  component by component."""
  if not files.isdir(path):
    raise ValueError(
      f'Image folder {path} does not exist or is not a directory; fix '
      'config.dataset="folder:PATH".'
    )
  found = [
    (name, size)
    for name, size in files.walk_file_sizes(path)
    if name.lower().endswith(IMAGE_EXTENSIONS)
  ]
  if not found:
    raise ValueError(
      f'No images ({", ".join(IMAGE_EXTENSIONS)}) under {path}; fix '
      'config.dataset="folder:PATH".'
    )
  return tuple(sorted(found, key=lambda item: item[0].split(os.sep)))


def folder_labels(path: str) -> tuple[np.ndarray, int]:
  """(labels int32 [N], num_classes) of a 'folder:' data set with one
  subfolder per class: an image's label is its top-level subfolder's rank
  in sorted order, row i that of row i of `load_images` (same listing). A
  ValueError, saying what to change, where images lie outside subfolders
  or there is a single class."""
  listing = _list_folder(path)
  tops = [name.split(os.sep, 1) for name, _ in listing]
  loose = [parts[0] for parts in tops if len(parts) == 1]
  if loose:
    raise ValueError(
      f'{path} has images outside class subfolders (e.g. {loose[0]}): labels '
      'come from one subfolder per class; move them into one.'
    )
  classes = sorted({parts[0] for parts in tops})
  if len(classes) < 2:
    raise ValueError(
      f'{path} has one subfolder ({classes[0]}): labels need one subfolder per '
      'class, at least two.'
    )
  rank = {name: i for i, name in enumerate(classes)}
  return np.array([rank[parts[0]] for parts in tops], np.int32), len(classes)


def _load_folder(
  path: str,
  listing: Sequence[tuple[str, int]],
  *,
  out: _Allocator | None,
  bad_images: str,
  split: str,
  data_dir: str | None,
  download: bool,
  image_key: str,
  **options,
) -> np.ndarray:
  del split, data_dir, download, image_key  # TFDS only.
  names = [name for name, _ in listing]
  paths = [files.join(path, name) for name in names]
  if files.is_url(path):  # Many reads at once.
    reader = _UrlReader(paths)
    elements = reader()
  else:
    reader = None
    elements = (_read_local_or_empty(p) for p in paths)
  # One pass decodes every file; the failures are only looked at afterwards.
  try:
    images, failed = _run_pipeline(
      elements, len(paths), out=out, drop_failures=True, **options
    )
  finally:  # A read that failed ends the reader early: its error first.
    if reader is not None and reader.error is not None:
      raise reader.error
  if not failed:
    return images
  listed = ', '.join(names[i] for i in list(failed)[:_BAD_LISTED])
  count = (
    f'{len(failed)} of {len(paths)} images in {path} cannot be decoded, e.g. '
    f'{listed} (first {_BAD_LISTED} listed)'
  )
  oversized = [
    names[i]
    for i in list(failed)[:_BAD_LISTED]
    if isinstance(failed[i], preprocess.TooManyPixels)
  ]
  if oversized:
    count += (
      f'; of these, {", ".join(oversized)} declare more than '
      f'MAX_IMAGE_PIXELS={MAX_IMAGE_PIXELS:,} pixels'
    )
  if bad_images == 'error':
    raise ValueError(f"{count}: fix or remove them, or set config.bad_images='skip'.")
  if len(failed) == len(paths):
    raise ValueError(
      f'The image folder {path} has no readable images ({count}); fix the '
      'files or config.dataset="folder:PATH".'
    )
  logging.warning("%s; config.bad_images='skip' leaves them out.", count)
  return _first_rows(images, len(paths) - len(failed), out)


class _UrlReader:
  """Called, a generator of the contents of files named by URL, in order:
  _READ_THREADS reads at once, at most _READ_AHEAD ahead of the consumer.

  A file that cannot be read (missing, no permission) gives b'', which then
  fails to decode like any undecodable file. Any other error (the network,
  say) ends the generator and is kept in `error`, for the caller to raise:
  otherwise it would pass for the end of the data.
  """

  def __init__(self, urls: Sequence[str]):
    self.urls = urls
    self.error: BaseException | None = None

  def __call__(self) -> Iterator[bytes]:
    urls = iter(self.urls)
    pending = collections.deque()
    pool = concurrent.futures.ThreadPoolExecutor(_READ_THREADS, 'read_url')

    def submit() -> None:
      url = next(urls, None)
      if url is not None:
        pending.append(pool.submit(_read_or_empty, url))

    try:
      for _ in range(_READ_AHEAD):
        submit()
      while pending:
        try:
          data = pending.popleft().result()
        except Exception as e:  # Raised by the caller.
          self.error = e
          return
        submit()
        yield data
    finally:
      pool.shutdown(wait=False, cancel_futures=True)


def _read_or_empty(url: str) -> bytes:
  try:
    return files.read_bytes(url)
  except OSError:  # FileNotFoundError, PermissionError: an unreadable file.
    return b''


def _read_local_or_empty(path: str) -> bytes:
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError:  # Missing, no permission: an unreadable file.
    return b''


def _first_rows(images: np.ndarray, n: int, out: _Allocator | None) -> np.ndarray:
  """A copy of images[:n] in a new array from `out` (default: memory)."""
  shape = (n,) + images.shape[1:]
  kept = np.empty(shape, np.uint8) if out is None else out(shape)
  step = max(1, _COPY_BYTES // max(1, images[0].nbytes))
  for start in range(0, n, step):
    stop = min(n, start + step)
    kept[start:stop] = images[start:stop]
  return kept


def _load_idx(
  directory: str,
  *,
  out: _Allocator | None,
  split: str,
  data_dir: str | None,
  download: bool,
  image_key: str,
  bad_images: str,
  **options,
) -> np.ndarray:
  del data_dir, download, image_key, bad_images  # TFDS / folder: only.
  raw = idx.idx_images(directory, split)
  images, _ = _run_pipeline(iter(raw), len(raw), out=out, **options)
  return images


# --------------------------------------------------------------------------
# The pipeline: decode and preprocess in parallel, in order.


def _decode_and_preprocess(element, options: dict[str, Any]) -> np.ndarray:
  """An encoded file (bytes) or a decoded image (array) -> uint8 [S, S, C]."""
  if isinstance(element, bytes | np.bytes_):
    element = preprocess.decode(bytes(element), MAX_IMAGE_PIXELS)
  return preprocess.preprocess(element, **options)


def _run_pipeline(
  elements: Iterator,
  num_examples: int,
  *,
  out: _Allocator | None,
  image_size: int,
  num_channels: int,
  crop: str,
  drop_failures: bool = False,
) -> tuple[np.ndarray, dict[int, preprocess.BadImage]]:
  """Decodes and preprocesses `num_examples` elements into one uint8 array,
  _DECODE_BATCH at a time on a thread per core (Pillow and NumPy release
  the interpreter lock while they work).

  Returns (images, failed). Without drop_failures the first undecodable
  element raises its BadImage and `failed` is empty. With it, undecodable
  elements are left out: `failed` maps their positions (ascending) to the
  error, and only the first num_examples - len(failed) rows are filled,
  with the other elements in order. Errors other than an undecodable image
  (in preprocessing, say) always raise.
  """
  options = dict(image_size=image_size, num_channels=num_channels, crop=crop)
  shape = (num_examples, image_size, image_size, num_channels)
  images = np.empty(shape, np.uint8) if out is None else out(shape)
  failed: dict[int, preprocess.BadImage] = {}

  def work(element):
    try:
      return _decode_and_preprocess(element, options)
    except preprocess.BadImage as e:
      if not drop_failures:
        raise
      return e

  filled = 0
  position = 0
  threads = max(1, min(_DECODE_THREADS, os.cpu_count() or 1))
  with concurrent.futures.ThreadPoolExecutor(threads, 'decode') as pool:
    while True:
      chunk = list(itertools.islice(elements, _DECODE_BATCH))
      if not chunk:
        break
      if position + len(chunk) > num_examples:
        raise RuntimeError(f'Data set yields more than its {num_examples} examples.')
      for result in pool.map(work, chunk):
        if isinstance(result, preprocess.BadImage):
          failed[position] = result
        else:
          images[filled] = result
          filled += 1
        position += 1
  if position != num_examples:
    raise RuntimeError(f'Data set yields {position} of its {num_examples} examples.')
  return images, failed


# --------------------------------------------------------------------------
# Disk cache.


def _cache_key(
  source: _Source,
  split: str,
  image_size: int,
  num_channels: int,
  crop: str,
  image_key: str,
) -> str:
  """The disk cache's file name (no extension): the options, and for a
  folder or an IDX directory its path and its files' names and sizes."""
  name = source.name
  if source.kind == 'folder':  # Keyed by path, file names and sizes.
    names = [f for f, _ in source.listing]
    sizes = [size for _, size in source.listing]
    name = _hash(repr((source.name, names, sizes)))
    split = 'all'
  elif source.kind == 'idx':  # Keyed by path, the split's file names and sizes.
    names = [idx.idx_file(source.name, split, 'images')]
    sizes = [files.size(f) for f in names]
    name = _hash(repr((source.name, names, sizes)))
  return _safe_name(source.kind, name, split, image_size, num_channels, crop, image_key)


def _hash(text: str) -> str:
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def _safe_name(
  kind: str,
  name: str,
  split: str,
  image_size: int,
  num_channels: int,
  crop: str,
  image_key: str,
) -> str:
  parts = [name if kind == 'tfds' else f'{kind}-{name}', split]
  if image_key != 'image':
    parts.append(image_key)
  parts += [f'{image_size}x{image_size}x{num_channels}', crop, _CACHE_FORMAT]
  return ''.join(c if c.isalnum() or c in '._-' else '_' for c in '-'.join(parts))


def _read_cache(path: str, shape_tail: tuple[int, ...]) -> np.ndarray | None:
  if not os.path.exists(path):
    return None
  try:
    images = np.load(path, mmap_mode='r')
  except (OSError, ValueError) as e:
    logging.warning('Ignoring unreadable cache %s: %s', path, e)
    return None
  if images.dtype != np.uint8 or images.shape[1:] != shape_tail:
    logging.warning('Ignoring cache %s of shape %s.', path, images.shape)
    return None
  return images


def _write_cache(path: str, build: Callable[..., np.ndarray]) -> None:
  """Builds into a temporary .npy beside `path`, then renames it atomically.

  build(out=allocate) may allocate more than once (e.g. a smaller array
  when images were skipped); its result must be its last allocation.
  """
  os.makedirs(os.path.dirname(path), exist_ok=True)
  _remove_stale_temp_files(path)
  temps = []

  def allocate(shape: tuple[int, ...]) -> np.ndarray:
    tmp = f'{path}{_TMP_INFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}'
    _check_free_space(os.path.dirname(path), math.prod(shape))
    temps.append(tmp)
    array = np.lib.format.open_memmap(tmp, mode='w+', dtype=np.uint8, shape=shape)
    # A memory map is sparse: a disk that fills while it is written kills the
    # process with SIGBUS. Reserve its blocks now, where a full disk is an
    # error that can be reported.
    with open(tmp, 'rb+') as f:
      try:
        os.posix_fallocate(f.fileno(), 0, os.path.getsize(tmp))
      except OSError as e:
        raise ValueError(
          f'Cannot reserve {_gigabytes(os.path.getsize(tmp))} for the disk cache '
          f'in {os.path.dirname(path)} ({e.strerror}); {_CACHE_SPACE_ADVICE}'
        ) from e
    return array

  try:
    images = build(out=allocate)
    if getattr(images, 'filename', None) != os.path.abspath(temps[-1]):
      raise RuntimeError('The cache build did not return its last allocation.')
    images.flush()
    del images
    with open(temps[-1], 'rb+') as f:
      os.fsync(f.fileno())
    os.replace(temps[-1], path)
    logging.info('Wrote image cache %s.', path)
  finally:
    for tmp in temps:
      if os.path.exists(tmp):
        os.remove(tmp)


_CACHE_SPACE_ADVICE = (
  'free space there, set config.cache_dir to a local disk with room, or use '
  "config.cache='memory'."
)


def _gigabytes(num_bytes: int) -> str:
  if num_bytes >= 2**30:
    return f'{num_bytes / 2**30:.2f} GiB'
  if num_bytes >= 2**20:
    return f'{num_bytes / 2**20:.1f} MiB'
  return f'{num_bytes:,} bytes'


def _check_free_space(directory: str, num_bytes: int) -> None:
  """A ValueError saying how much is needed unless `directory`'s disk has
  room for `num_bytes` more."""
  free = shutil.disk_usage(directory).free
  if num_bytes > free:
    raise ValueError(
      f'The disk cache needs {_gigabytes(num_bytes)} in {directory}, but only '
      f'{_gigabytes(free)} is free; {_CACHE_SPACE_ADVICE}'
    )


def _remove_stale_temp_files(path: str) -> None:
  """Deletes temporary files of `path` left by killed writers on this host."""
  directory, prefix = os.path.split(path)
  prefix += _TMP_INFIX
  for name in os.listdir(directory):
    if not name.startswith(prefix):
      continue
    pid = name[len(prefix) :].split('-')[0]
    if pid.isdigit() and not _process_alive(int(pid)):
      logging.info('Removing stale partial cache %s.', name)
      try:
        os.remove(os.path.join(directory, name))
      except FileNotFoundError:
        pass


def _process_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)  # Signal 0: only checks that the process exists.
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def load_labels(
  *,
  dataset: str,
  split: str = 'train',
  data_dir: str | None = None,
  download: bool = True,
  label_key: str = 'label',
  folder_classes: bool = False,
) -> tuple[np.ndarray, int]:
  """(labels int32 [N], num_classes) of a labelled data set ('digits', 'mnist',
  'idx:DIR', ...).

  Row i is the label of row i of `load_images` for the same data set and
  split: both read the files in order without shuffling. For 'idx:DIR' the
  labels file of the split (see `idx.idx_file`); num_classes is 10 (the MNIST
  family), or the largest label + 1 where that is more (e.g. EMNIST). A
  ValueError for TFDS data sets without a ClassLabel `label_key` and for
  'folder:' data sets, unless `folder_classes` says that their subfolders
  are classes (`folder_labels`).
  """
  kind, name, _ = _parse_dataset(dataset)
  if kind == 'folder':
    if not folder_classes:  # Subfolders may be shards, not classes.
      raise ValueError(f'{dataset!r} is a folder of images: it has no labels.')
    return folder_labels(name)
  if kind == 'idx':
    labels = idx.idx_labels(name, split)
    return labels, max(10, int(labels.max(initial=-1)) + 1)
  if data_dir is not None:
    data_dir = files.check(data_dir, 'config.data_dir')
  lib = tfds_source.tfds()
  builder = tfds_source.builder(name, data_dir, download)
  features = builder.info.features
  feature = features[label_key] if label_key in features else None
  if not isinstance(feature, lib.features.ClassLabel):
    raise ValueError(f'{name!r} has no class-label feature {label_key!r}.')
  examples = tfds_source.Examples(builder, name, split, [label_key])
  labels = np.fromiter(
    (int(example[label_key]) for example in examples), np.int32, len(examples)
  )
  return labels, int(feature.num_classes)
