"""A run's training images, as its config describes them."""

import os

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from dcgan_jax.data import input_pipeline
from dcgan_jax.util.errors import ConfigError

# The disk cache's default place, WORKDIR/data_cache (config.cache_dir).
DATA_CACHE_DIR = 'data_cache'


def load_data(config: ml_collections.ConfigDict, workdir: str) -> np.ndarray:
  """The training images, uint8 [N, S, S, C], as `config` describes them.

  With several processes, process 0 goes first, so that a TFDS data set is
  prepared once rather than by every host into the same data_dir at once.
  """
  try:
    return _load_data_in_turn(config, workdir)
  except (ValueError, FileNotFoundError, RuntimeError) as e:  # Say so, briefly.
    raise ConfigError(f'Cannot load config.dataset={config.dataset!r}: {e}') from e


def _load_data_in_turn(config: ml_collections.ConfigDict, workdir: str) -> np.ndarray:
  if jax.process_count() == 1:
    return _load_data(config, workdir)
  if jax.process_index() == 0:
    images = _load_data(config, workdir)
  multihost_utils.sync_global_devices('dcgan_jax: data prepared by process 0')
  if jax.process_index() != 0:
    images = _load_data(config, workdir)
  return images


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
    cache_dir=config.cache_dir or os.path.join(workdir, DATA_CACHE_DIR),
    bad_images=config.bad_images,
  )
  logging.info('Data set %r: %d images %s.', config.dataset, len(images), images.shape)
  return images
