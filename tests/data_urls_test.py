"""Data sets and caches given as gs:// URLs (on the test Cloud Storage server).

A 'folder:gs://...' data set and an 'idx:gs://...' directory load the very
arrays their local copies load; TFDS gets config.data_dir as given; the disk
cache stays local: a URL cache_dir is a one-line error, and a gs:// workdir
puts the cache under loader.LOCAL_CACHE_DIR, never in a local 'gs:' folder.
"""

import gzip
import os
import uuid

import numpy as np
import pytest
from PIL import Image

from configs import folder as folder_config
from dcgan_jax.data import input_pipeline as ip
from dcgan_jax.data import loader
from dcgan_jax.util import errors, files


def _save(path, array, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8)).save(path, **kwargs)


def _solid(height, width, colour):
  return np.broadcast_to(np.asarray(colour, np.uint8), (height, width, len(colour)))


def _upload(local_dir, url):
  """Copies every file below `local_dir` to the same names below `url`."""
  for root, _, names in os.walk(local_dir):
    for name in names:
      path = os.path.join(root, name)
      relative = os.path.relpath(path, local_dir)
      with open(path, 'rb') as f:
        files.write_atomic(files.join(url, relative), f.read())


@pytest.fixture
def bucket_dir(gcs_bucket):
  """A fresh gs:// directory for one test."""
  return f'{gcs_bucket}/{uuid.uuid4().hex[:8]}'


@pytest.fixture
def image_tree(tmp_path):
  """Mixed formats, sizes, modes and depths; a text file to leave out."""
  root = tmp_path / 'images'
  _save(root / 'a_rgb.png', _solid(30, 40, (255, 0, 0)))
  _save(root / 'b_rgba.png', _solid(50, 25, (0, 0, 255, 128)))
  _save(root / 'c_grey.png', _solid(64, 64, (200,))[..., 0])
  _save(root / 'd' / 'nested.JPG', _solid(80, 100, (0, 255, 0)), quality=95)
  _save(root / 'd' / 'e' / 'deep.jpeg', _solid(33, 17, (10, 20, 30)), quality=95)
  _save(root / 'd' / 'f.bmp', _solid(12, 12, (0, 0, 0)))
  _save(root / 'd' / 'g.gif', _solid(20, 10, (255, 255, 255)))
  noise = np.random.default_rng(0).integers(0, 256, (40, 40, 3))
  _save(root / 'd.png', noise)  # Sorted after d/..., component by component.
  (root / 'notes.txt').write_text('not an image')
  return root


def test_folder_on_cloud_storage_is_the_local_folder(tmp_path, bucket_dir, image_tree):
  url = f'{bucket_dir}/images'
  _upload(image_tree, url)
  kw = dict(image_size=16, num_channels=3)
  local = ip.load_images(dataset=f'folder:{image_tree}', **kw)
  remote = ip.load_images(dataset=f'folder:{url}', **kw)
  assert remote.shape == (8, 16, 16, 3)
  np.testing.assert_array_equal(remote, local)
  # The disk cache of a URL data set is local, keyed by its files.
  cache = dict(cache='disk', cache_dir=str(tmp_path / 'cache'))
  np.testing.assert_array_equal(
    ip.load_images(dataset=f'folder:{url}', **kw, **cache), local
  )
  (cached,) = os.listdir(tmp_path / 'cache')
  files.write_atomic(f'{url}/z.png', files.read_bytes(f'{url}/a_rgb.png'))
  assert ip.load_images(dataset=f'folder:{url}', **kw, **cache).shape[0] == 9
  assert len(os.listdir(tmp_path / 'cache')) == 2
  # Undecodable files are named by their URL folder, as local ones.
  files.write_atomic(f'{url}/d/broken.png', b'not really a png')
  with pytest.raises(ValueError, match=f'1 of 10 images in {url} .*d/broken.png'):
    ip.load_images(dataset=f'folder:{url}', **kw)
  skipped = ip.load_images(dataset=f'folder:{url}', bad_images='skip', **kw)
  assert skipped.shape[0] == 9


def _idx_bytes(array):
  header = bytes([0, 0, 0x08, array.ndim])
  header += b''.join(int(d).to_bytes(4, 'big') for d in array.shape)
  return header + array.tobytes()


def test_idx_on_cloud_storage_is_the_local_directory(tmp_path, bucket_dir):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
  labels = rng.integers(0, 10, 30, dtype=np.uint8)
  local = tmp_path / 'mnist'
  local.mkdir()
  (local / 'train-images-idx3-ubyte').write_bytes(_idx_bytes(images[:20]))
  (local / 'train-labels-idx1-ubyte').write_bytes(_idx_bytes(labels[:20]))
  (local / 't10k-images-idx3-ubyte.gz').write_bytes(
    gzip.compress(_idx_bytes(images[20:]))
  )
  (local / 't10k-labels-idx1-ubyte.gz').write_bytes(
    gzip.compress(_idx_bytes(labels[20:]))
  )
  url = f'{bucket_dir}/mnist'
  _upload(local, url)
  for split, rows in (('train', slice(0, 20)), ('test', slice(20, 30))):
    kw = dict(split=split, image_size=28, num_channels=1)
    remote = ip.load_images(dataset=f'idx:{url}', **kw)
    np.testing.assert_array_equal(remote[..., 0], images[rows])
    np.testing.assert_array_equal(remote, ip.load_images(dataset=f'idx:{local}', **kw))
    got, num_classes = ip.load_labels(dataset=f'idx:{url}', split=split)
    np.testing.assert_array_equal(got, labels[rows])
    assert num_classes == 10
  disk = dict(cache='disk', cache_dir=str(tmp_path / 'cache'), image_size=28)
  cached = ip.load_images(dataset=f'idx:{url}', split='test', num_channels=1, **disk)
  np.testing.assert_array_equal(cached[..., 0], images[20:])
  with pytest.raises(FileNotFoundError, match=f'{url}/nowhere does not exist'):
    ip.load_images(dataset=f'idx:{url}/nowhere', image_size=28, num_channels=1)


def test_tfds_gets_the_data_dir_url_as_given(monkeypatch):
  import tensorflow_datasets as tfds

  seen = []

  def builder(name, data_dir=None):
    seen.append(data_dir)
    raise ValueError('stop here')

  monkeypatch.setattr(tfds, 'builder', builder)
  config = folder_config.get_config()
  config.dataset = 'mnist'
  config.data_dir = 'gs://bucket/tensorflow_datasets'
  with pytest.raises(errors.ConfigError, match='stop here'):
    loader.load_data(config, 'gs://bucket/run')
  assert seen == ['gs://bucket/tensorflow_datasets']


@pytest.mark.parametrize(
  'key, value, match',
  [
    ('dataset', 'folder:s3://bucket/images', 'The folder of config.dataset'),
    ('dataset', 'idx:http://example.com/mnist', 'The IDX directory of config.dataset'),
    ('data_dir', 's3://bucket/tfds', 'config.data_dir'),
    ('cache_dir', 'gs://bucket/cache', 'config.cache_dir .* must be a local'),
  ],
)
def test_unusable_urls_are_one_line_errors(tmp_path, image_tree, key, value, match):
  config = folder_config.get_config()
  config.dataset = f'folder:{image_tree}'
  config.cache = 'disk'
  config[key] = value
  with pytest.raises(errors.ConfigError, match=match) as error:
    loader.load_data(config, str(tmp_path / 'run'))
  message = str(error.value)
  assert '\n' not in message and value in message
  if key == 'cache_dir':
    assert 'memory-mapped' in message  # Says why.
  else:
    assert 'is not supported; use a local path or a gs:// URL' in message


def test_url_workdir_caches_locally_and_never_in_a_gs_folder(
  tmp_path, image_tree, monkeypatch
):
  """With a gs:// workdir, the disk cache goes to LOCAL_CACHE_DIR: nothing
  named after the URL appears in the working directory (or anywhere local)."""
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  monkeypatch.setattr(loader, 'LOCAL_CACHE_DIR', str(tmp_path / 'home_cache'))
  config = folder_config.get_config()
  config.dataset = f'folder:{image_tree}'
  config.cache = 'disk'
  images = loader.load_data(config, 'gs://dcgan-test/url_workdir_run')
  assert isinstance(images, np.memmap) and images.shape == (8, 32, 32, 3)
  assert os.path.dirname(images.filename) == str(tmp_path / 'home_cache')
  assert os.listdir(cwd) == []
  for root, dirs, names in os.walk(tmp_path):
    assert not [n for n in dirs + names if n.startswith('gs:')], root
  assert loader.cache_dir(config, 'gs://b/run') == str(tmp_path / 'home_cache')
  assert loader.cache_dir(config, 'run') == str(cwd / 'run' / 'data_cache')
