"""TFDS data sets, read without TensorFlow wherever TFDS allows it.

A data set prepared in ArrayRecord files (what this module prepares, and
`tfds build --file_format=array_record`) is read through TFDS's data-source
API, which needs no TensorFlow. One stored as TFRecord files (the format
`tfds build` writes by default) is read through tf.data, so it needs the
'tf' extra; without it the error says so in one line. Images come back as
their encoded bytes (decoded by `preprocess.decode`, as folder images are)
or, for tensor features, as arrays.

Preparing: the local data sets (digits, scenes) are built here, offline,
into ArrayRecord files. Another data set that is not prepared is downloaded
only where its download hosts answer: the hosts of its recorded URLs are
tried first (a few seconds), so a machine without network gets the
not-prepared message at once instead of minutes of retries.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import socket
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any

from dcgan_jax.util import files

DIGITS_TFDS_NAME = 'sklearn_digits'
SCENES_TFDS_NAME = 'synthetic_scenes'
# config.dataset names of the data sets built here, offline -> TFDS names.
LOCAL = {'digits': DIGITS_TFDS_NAME, 'scenes': SCENES_TFDS_NAME}
TF_EXTRA = (
  "install the 'tf' extra (uv sync --extra tf, or pip install "
  "'dcgan_jax[tf]'; TensorFlow has no wheels for Python 3.14 yet)"
)
_PROBE_SECONDS = 4.0  # How long a download host may take to accept a connection.


def has_tensorflow() -> bool:
  try:
    return importlib.util.find_spec('tensorflow') is not None
  except ImportError:  # Found by a finder that refuses it: not usable.
    return False


def tfds():
  """tensorflow_datasets, with the local builders registered."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow_datasets

  from dcgan_jax.data import (
    digits_dataset,  # noqa: F401  Registers sklearn_digits.
    scenes_dataset,  # noqa: F401  Registers synthetic_scenes.
  )

  return tensorflow_datasets


def not_prepared_message(name: str, data_dir: str, reason: str) -> str:
  message = (
    f'TFDS data set {name!r} is not prepared in {data_dir} ({reason}). '
    'On a machine with internet run '
    f'`tfds build {name} --data_dir=DIR --file_format=array_record` (the '
    "tfds command needs the 'tf' extra), then copy DIR here and pass "
    '--config.data_dir=DIR.'
  )
  if name.split('/')[0].split(':')[0] == 'celeb_a':
    message += (
      ' celeb_a downloads its files from Google Drive, which often hits its '
      'quota. Manual route: get the 5 files of the "Align&Cropped" CelebA '
      'release (http://mmlab.ie.cuhk.edu.hk/projects/CelebA.html) under these '
      'exact names: img_align_celeba.zip (1,443,490,838 bytes), '
      'list_eval_partition.txt, list_attr_celeba.txt, '
      'list_landmarks_align_celeba.txt and identity_CelebA.txt; put them in '
      f'{files.join(data_dir, "downloads", "manual")} (or any directory '
      'passed as `tfds build celeb_a --manual_dir=...`) and run '
      f'`tfds build celeb_a --data_dir={data_dir} --file_format=array_record` '
      '(or train again with config.download=True); TFDS checks their '
      'checksums and prepares the data without downloading.'
    )
  return message


def builder(name: str, data_dir: str | None, download: bool):
  """The prepared builder of `name`: prepared here if it is not (the local
  data sets always; others when `download` and their hosts answer)."""
  lib = tfds()
  try:
    found = lib.builder(name, data_dir=data_dir)
  except (lib.core.registered.DatasetNotFoundError, ValueError, KeyError) as e:
    raise ValueError(
      f'Unknown data set {name!r}: config.dataset must be a TFDS name '
      "(e.g. 'mnist', 'cifar10', 'celeb_a', 'lsun/bedroom'), 'digits', "
      f"'folder:PATH' or 'idx:DIR'. TFDS said: {e}"
    ) from e
  if found.is_prepared():
    return found
  root = os.fspath(found.data_dir_root)
  local = found.name in LOCAL.values()
  if not download and not local:
    raise FileNotFoundError(
      not_prepared_message(name, root, 'config.download is False')
    )
  # tfds.testing.mock_data replaces download_and_prepare: nothing to reach.
  mocked = type(found).download_and_prepare.__module__.startswith(
    'tensorflow_datasets.testing'
  )
  if not local and not mocked:
    unreachable = _unreachable_hosts(found)
    if unreachable:
      raise RuntimeError(
        not_prepared_message(
          name, root, f'cannot download: no answer from {unreachable}'
        )
      )
  # Prepared as ArrayRecord files, which are read without TensorFlow.
  target = lib.builder(name, data_dir=data_dir, file_format='array_record')
  try:
    target.download_and_prepare()
  except ModuleNotFoundError as e:
    if e.name != 'tensorflow' and 'tensorflow' not in str(e):
      raise
    raise RuntimeError(
      f'Preparing TFDS data set {name!r} needs TensorFlow: {TF_EXTRA}, or '
      'prepare it on another machine (`tfds build`) and pass '
      '--config.data_dir.'
    ) from None
  except Exception as e:  # Network, quota, checksum, disk...
    raise RuntimeError(
      not_prepared_message(name, root, f'download_and_prepare failed: {e!r}')
    ) from e
  return target


def _unreachable_hosts(found) -> str:
  """', '-joined download hosts of `found`'s recorded URLs when none of them
  accepts a connection within _PROBE_SECONDS; '' when one does, or when
  the builder records no URLs (then its download is simply tried)."""
  try:
    urls = list(found.url_infos or ())
  except Exception:  # noqa: BLE001  No checksums recorded.
    urls = []
  hosts = sorted(
    {
      (parts.hostname, parts.port or (443 if parts.scheme == 'https' else 80))
      for parts in map(urllib.parse.urlsplit, urls)
      if parts.hostname and parts.scheme in ('http', 'https')
    }
  )
  if not hosts:
    return ''

  def answers(address: tuple[str, int]) -> bool:
    try:
      socket.create_connection(address, timeout=_PROBE_SECONDS).close()
      return True
    except OSError:
      return False

  with concurrent.futures.ThreadPoolExecutor(min(8, len(hosts))) as pool:
    if any(pool.map(answers, hosts)):
      return ''
  return ', '.join(host for host, _ in hosts)


def _keep_tensorflow_off_accelerators() -> None:
  """TensorFlow reads data on the host; JAX keeps the accelerators' memory."""
  import tensorflow as tf

  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # Devices already initialised: keep what is set.
    pass


def _split_error(found, name: str, split: str, error: Exception) -> ValueError:
  return ValueError(
    f'Cannot read split {split!r} of {name!r} (splits: '
    f'{list(found.info.splits.keys())}); set config.split. TFDS said: {error}'
  )


class Examples:
  """The examples of one split, in the files' order, as dicts of the asked
  keys: encoded images as bytes, other features as numpy values."""

  def __init__(self, found, name: str, split: str, keys: Sequence[str]):
    lib = tfds()
    self._keys = tuple(keys)
    features = found.info.features
    skip = {
      k: lib.decode.SkipDecoding()
      for k in self._keys
      if isinstance(features[k], lib.features.Image)
    }
    file_format = found.info.file_format
    array_record = file_format == lib.core.file_adapters.FileFormat.ARRAY_RECORD
    self._source = None
    self._dataset = None
    if array_record or not has_tensorflow():
      try:
        self._source = found.as_data_source(split=split, decoders=skip or None)
      except Exception as e:
        if array_record and isinstance(e, ValueError | KeyError):
          raise _split_error(found, name, split, e) from e
        if array_record:
          raise
        raise RuntimeError(
          f'TFDS data set {name!r} in {os.fspath(found.data_dir)} is stored as '
          f'{file_format.value} files, which are read through TensorFlow: '
          f'{TF_EXTRA}, or rebuild it as ArrayRecord files '
          f'(`tfds build {name} --file_format=array_record`).'
        ) from e
      self._length = len(self._source)
    else:
      _keep_tensorflow_off_accelerators()
      try:
        self._dataset = found.as_dataset(
          split=split,
          shuffle_files=False,
          decoders=skip or None,
          read_config=lib.ReadConfig(
            interleave_cycle_length=1,  # Files in order: a canonical order.
            try_autocache=False,
          ),
        )
      except (ValueError, KeyError) as e:
        raise _split_error(found, name, split, e) from e
      self._length = int(self._dataset.cardinality().numpy())
      if self._length < 0:  # Unknown: count.
        self._length = sum(1 for _ in self._dataset)

  def __len__(self) -> int:
    return self._length

  def __iter__(self) -> Iterator[dict[str, Any]]:
    if self._source is not None:
      for i in range(self._length):
        example = self._source[i]
        yield {k: example[k] for k in self._keys}
    else:
      lib = tfds()
      for example in lib.as_numpy(self._dataset):
        yield {k: example[k] for k in self._keys}
