"""A run's training images, as its config describes them: decoded once.

With several processes (hosts), process 0 loads the images (decoding them,
or reading its disk cache) and shares them in WORKDIR/data_cache/: first
NAME.npy, then the commit marker NAME.json, which holds their digest. The
other processes wait until process 0 tells them NAME and the digest, then
read that copy instead of decoding the data set again:

  * a local (shared) workdir: memory-mapped in place (cache='disk') or read
    into memory (cache='memory');
  * a gs:// workdir: downloaded once into the process's own local cache_dir,
    then memory-mapped (cache='disk'), or read into memory (cache='memory').

A TFDS data set is thus prepared and read by process 0 alone. A process
that does not see the copy (each host has its own local workdir) decodes
the data set itself, and must get the digest of process 0. The disk
cache (config.cache_dir) is always local, as it is memory-mapped: by default
WORKDIR/data_cache for a local workdir and ~/.cache/dcgan_jax/data for a
gs:// one, never a local path made from the URL.

Process 0 tells the others through the key-value store of JAX's
coordination service (jax.distributed): they wait as long as decoding takes
(up to _WAIT_MS), with no device collective in flight meanwhile. A barrier
made of a collective (multihost_utils.sync_global_devices) cannot wait that
long on CPU: once the backends are up, gloo gives up setting up the
collective when one process arrives over 30 s after the other ('GetKeyValue()
timed out ... cpu:gloo'), as process 0 does after decoding 100,000 images.
"""

import datetime
import itertools
import json
import os
import shutil

import jax
import ml_collections
import numpy as np
from absl import logging
from jax._src import distributed as jax_distributed  # Private, as Orbax uses it.

from dcgan_jax.data import input_pipeline
from dcgan_jax.util import files
from dcgan_jax.util.errors import ConfigError

# Under the workdir: the disk cache of a local workdir, and the images
# process 0 shares with the others.
DATA_CACHE_DIR = 'data_cache'
# The disk cache of a gs:// workdir (config.cache_dir overrides both).
LOCAL_CACHE_DIR = os.path.join('~', '.cache', 'dcgan_jax', 'data')

# What process 0 tells the others: it failed, it loaded the images but could
# not share them, or it shared them.
_FAILED, _LOADED, _SHARED = 'failed', 'loaded', 'shared'
# How long the others wait for process 0 to load the data set.
_WAIT_MS = 24 * 3600 * 1000
_COPY_BYTES = 64 << 20
# Numbers this process's calls of load_data: the key of each message.
_CALLS = itertools.count()


def load_data(config: ml_collections.ConfigDict, workdir: str) -> np.ndarray:
  """The training images, uint8 [N, S, S, C], as `config` describes them.

  Every process of a run calls it; with several, only process 0 decodes
  (see the module docstring). A ConfigError that says what to change if
  the data cannot be loaded.
  """
  try:
    if jax.process_count() == 1 or _client() is None:  # Alone, or no way
      return _load_data(config, workdir)  # to talk: each process loads.
    if jax.process_index() == 0:
      return _load_and_share(config, workdir)
    return _load_shared(config, workdir)
  except (ValueError, FileNotFoundError, RuntimeError) as e:  # Say so, briefly.
    raise ConfigError(f'Cannot load config.dataset={config.dataset!r}: {e}') from e


def prepare(config: ml_collections.ConfigDict) -> None:
  """Makes sure `config`'s data set can be read (a TFDS data set prepared),
  before a run writes anything: a ConfigError that says what to change."""
  try:
    input_pipeline.prepare_source(
      dataset=config.dataset, data_dir=config.data_dir, download=config.download
    )
  except (ValueError, FileNotFoundError, RuntimeError) as e:
    raise ConfigError(f'Cannot load config.dataset={config.dataset!r}: {e}') from e


def load_labels(config: ml_collections.ConfigDict) -> tuple[np.ndarray, int]:
  """(class labels int32 [N], number of classes) of the training images,
  row for row; every process reads them itself (they are small). A
  ConfigError that says what to change where the data set has none."""
  try:
    labels, num_classes = input_pipeline.load_labels(
      dataset=config.dataset,
      split=config.split,
      data_dir=config.data_dir,
      download=config.download,
      label_key=config.get('label_key', 'label'),
      folder_classes=True,
    )
  except (ValueError, FileNotFoundError) as e:
    raise ConfigError(
      f'config.conditional=True needs class labels, and config.dataset='
      f'{config.dataset!r} has none we can read: {e}'
    ) from e
  return labels, num_classes


def cache_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The local directory of the disk cache: config.cache_dir, else
  WORKDIR/data_cache for a local workdir, LOCAL_CACHE_DIR for a URL."""
  if config.cache_dir:
    why = input_pipeline.CACHE_DIR_WHY
    return files.local(config.cache_dir, 'config.cache_dir', why)
  if files.is_url(workdir):
    return os.path.expanduser(LOCAL_CACHE_DIR)
  return os.path.join(files.absolute(workdir, '--workdir'), DATA_CACHE_DIR)


def _load_data(config: ml_collections.ConfigDict, workdir: str) -> np.ndarray:
  images = input_pipeline.load_images(
    dataset=config.dataset,
    split=config.split,
    image_size=config.image_size,
    num_channels=config.num_channels,
    crop=config.crop,
    data_dir=config.data_dir,
    download=config.download,
    image_key=config.image_key,
    cache=config.cache,
    cache_dir=cache_dir(config, workdir),
    bad_images=config.bad_images,
  )
  logging.info('Data set %r: %d images %s.', config.dataset, len(images), images.shape)
  return images


# --------------------------------------------------------------------------
# Process 0: load, share, tell the others.


def _load_and_share(config: ml_collections.ConfigDict, workdir: str) -> np.ndarray:
  try:
    images = _load_data(config, workdir)
    digest = input_pipeline.digest(images)
    name = input_pipeline.cache_name(
      dataset=config.dataset,
      split=config.split,
      image_size=config.image_size,
      num_channels=config.num_channels,
      crop=config.crop,
      image_key=config.image_key,
    )
    shared = _share(images, _shared_dir(workdir), name, digest, config.dataset)
  except Exception:
    _tell(_FAILED, '', '')  # The others stop too, instead of waiting.
    raise
  _tell(_SHARED if shared else _LOADED, digest, name)
  return images


def _shared_dir(workdir: str) -> str:
  return files.join(files.absolute(workdir, '--workdir'), DATA_CACHE_DIR)


def _share(
  images: np.ndarray, directory: str, name: str, digest: str, dataset: str
) -> bool:
  """Writes NAME.npy, then the marker NAME.json, unless they hold `digest`
  already; whether the others can read them."""
  array, marker = (
    files.join(directory, name + '.npy'),
    files.join(directory, name + '.json'),
  )
  try:
    if _marker_digest(marker) == digest and files.exists(array):
      logging.info('The other processes read the images shared in %s.', array)
      return True
    if files.exists(marker):
      files.remove(marker)  # Never a marker beside another array.
    _write_array(images, array)
    files.write_json(
      marker,
      {
        'dataset': dataset,
        'shape': list(images.shape),
        'dtype': images.dtype.name,
        'digest': digest,
        'written': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
      },
    )
  except OSError as e:
    logging.warning(
      'Cannot share the decoded images in %s (%s): every process decodes them.',
      directory,
      e,
    )
    return False
  logging.info('Shared the decoded images with the other processes: %s.', array)
  return True


def _write_array(images: np.ndarray, path: str) -> None:
  """Writes images to `path` as .npy: a hard link to its disk-cache file
  where both are local on one file system, a copy otherwise."""
  source = getattr(images, 'filename', None)
  if source is not None and not files.is_url(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    link = f'{path}.link-{os.getpid()}'
    try:
      os.link(source, link)
      os.replace(link, path)
      return
    except OSError:  # Another file system, or no hard links: copy.
      if os.path.exists(link):
        os.remove(link)
  with files.atomic_write(path) as f:
    np.save(f, images)


def _marker_digest(marker: str) -> str | None:
  try:
    return files.read_json(marker).get('digest') if files.exists(marker) else None
  except (OSError, ValueError, AttributeError):
    return None


def _client():
  """jax.distributed's client of the coordination service, or None."""
  return jax_distributed.global_state.client


def _tell(status: str, digest: str, name: str) -> None:
  """Process 0: sends (status, digest, name) to the others (see `_hear`)."""
  message = json.dumps({'status': status, 'digest': digest, 'name': name})
  _client().key_value_set(f'dcgan_jax/data/{next(_CALLS)}', message)


def _hear() -> tuple[str, str, str]:
  """The others: waits for what process 0 sends with `_tell`."""
  key = f'dcgan_jax/data/{next(_CALLS)}'
  message = json.loads(_client().blocking_key_value_get(key, _WAIT_MS))
  return message['status'], message['digest'], message['name']


# --------------------------------------------------------------------------
# The other processes: wait, then read what process 0 shared.


def _load_shared(config: ml_collections.ConfigDict, workdir: str) -> np.ndarray:
  status, digest, name = _hear()
  if status == _FAILED:
    raise RuntimeError('process 0 could not load it; its log says why.')
  why = 'process 0 could not share the images (its log says why)'
  if status == _SHARED:
    directory = _shared_dir(workdir)
    try:
      images = _read_shared(files.join(directory, name), digest, config, workdir)
    except (OSError, ValueError) as e:  # Unreadable: decode instead.
      logging.warning('Cannot read the images shared in %s: %s', directory, e)
      images = None
    if images is not None:
      return images
    why = (
      f'it does not see the images process 0 shared in {directory} (is the '
      'workdir on a file system all hosts share?)'
    )
  logging.warning('Process %d decodes the data set too: %s.', jax.process_index(), why)
  images = _load_data(config, workdir)
  if input_pipeline.digest(images) != digest:
    raise RuntimeError(
      f'process {jax.process_index()} decoded other images than process 0 '
      '(their digests differ): every host must see the same data set files.'
    )
  return images


def _read_shared(
  stem: str, digest: str, config: ml_collections.ConfigDict, workdir: str
) -> np.ndarray | None:
  """The images in STEM.npy if STEM.json commits them with `digest`: read
  into memory, memory-mapped in place, or downloaded into the disk cache
  and memory-mapped; None otherwise. A copy's digest is checked."""
  array = stem + '.npy'
  if _marker_digest(stem + '.json') != digest:
    return None
  local = None
  if config.cache == 'memory':
    with files.open(array) as f:
      images = np.lib.format.read_array(f)
  elif not files.is_url(array):
    images = np.load(array, mmap_mode='r')
  else:
    name = f'{os.path.basename(stem)}-{digest[:16]}.npy'
    local = os.path.join(cache_dir(config, workdir), name)
    if not os.path.exists(local):
      with files.open(array) as src, files.atomic_write(local) as dst:
        shutil.copyfileobj(src, dst, _COPY_BYTES)
      logging.info('Downloaded the shared images %s to %s.', array, local)
    images = np.load(local, mmap_mode='r')
  in_place = config.cache != 'memory' and local is None
  if not in_place and input_pipeline.digest(images) != digest:
    logging.warning('The shared images %s are not those of process 0.', array)
    if local is not None:
      os.remove(local)
    return None
  logging.info('Read the %d images process 0 shared in %s.', len(images), array)
  return images
