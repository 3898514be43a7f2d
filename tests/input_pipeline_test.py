"""Tests of dcgan_jax.data.input_pipeline and the sklearn_digits TFDS builder."""

import gzip
import os
import shutil
import subprocess
import threading

import numpy as np
import pytest
from PIL import Image

from configs import mnist_files
from dcgan_jax.data import idx, loader
from dcgan_jax.data import input_pipeline as ip
from dcgan_jax.evaluation import digits_svm
from dcgan_jax.util import errors


@pytest.fixture(scope='module')
def digits_data_dir(data_dir):
  """The session's TFDS data_dir, with sklearn_digits prepared."""
  ip.load_images(dataset='digits', image_size=8, num_channels=1, data_dir=data_dir)
  return data_dir


def _save(path, array, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8)).save(path, **kwargs)


def _solid(height, width, colour):
  return np.broadcast_to(np.asarray(colour, np.uint8), (height, width, len(colour)))


def _mnist_test_images(count):
  return digits_svm.read_mnist()[0][:count]


# --------------------------------------------------------------------------
# digits (a real TFDS builder).


def test_digits_builder_matches_sklearn(digits_data_dir):
  import tensorflow_datasets as tfds
  from sklearn.datasets import load_digits

  from dcgan_jax.data import digits_dataset

  builder = tfds.builder(digits_dataset.NAME, data_dir=digits_data_dir)
  assert builder.is_prepared()
  assert str(builder.version) == '1.1.0'
  assert builder.info.file_format == tfds.core.file_adapters.FileFormat.ARRAY_RECORD
  source = builder.as_data_source(split='train')
  examples = [source[i] for i in range(len(source))]
  images = np.stack([e['image'] for e in examples])
  labels = np.array([e['label'] for e in examples])
  digits = load_digits()
  assert images.shape == (1797, 8, 8, 1)
  np.testing.assert_array_equal(
    images[..., 0], digits_dataset.scale_to_uint8(digits.images)
  )
  np.testing.assert_array_equal(labels, digits.target)
  assert digits_dataset.scale_to_uint8(np.array([0, 8, 16])).tolist() == [0, 128, 255]


def test_load_digits_and_batches(digits_data_dir):
  images = ip.load_images(
    dataset='digits', image_size=32, num_channels=1, data_dir=digits_data_dir
  )
  assert images.shape == (1797, 32, 32, 1) and images.dtype == np.uint8
  assert images.min() == 0 and images.max() == 255
  scaled = ip.scale_images(images)
  assert scaled.dtype == np.float32 and scaled.min() == -1.0 and scaled.max() == 1.0
  batches = ip.host_batches(images, seed=0, global_batch_size=64)
  for _ in range(3):
    batch = next(batches)
    assert batch.shape == (64, 32, 32, 1) and batch.dtype == np.float32
    assert -1.0 <= batch.min() and batch.max() <= 1.0
  batches.close()


def test_digits_resolution_and_channels(digits_data_dir):
  kwargs = dict(dataset='digits', data_dir=digits_data_dir, download=False)
  native = ip.load_images(image_size=8, num_channels=1, **kwargs)
  rgb = ip.load_images(image_size=16, num_channels=3, crop='none', **kwargs)
  grey = ip.load_images(image_size=16, num_channels=1, crop='none', **kwargs)
  from sklearn.datasets import load_digits

  from dcgan_jax.data import digits_dataset

  np.testing.assert_array_equal(
    native[..., 0], digits_dataset.scale_to_uint8(load_digits().images)
  )
  assert rgb.shape == (1797, 16, 16, 3)
  for c in range(3):
    np.testing.assert_array_equal(rgb[..., c], grey[..., 0])


# --------------------------------------------------------------------------
# Batch order.


def test_batch_indices_is_pure_and_permutes_each_epoch():
  n, g = 103, 10  # 10 steps per epoch, 3 examples dropped each epoch.
  kw = dict(seed=7, num_examples=n, global_batch_size=g)
  for step in (0, 5, 9, 10, 57):
    first = ip.batch_indices(step, **kw)
    assert first.dtype == np.int64 and first.shape == (g,)
    np.testing.assert_array_equal(first, ip.batch_indices(step, **kw))
  epochs = []
  for epoch in range(3):
    seen = np.concatenate([ip.batch_indices(epoch * 10 + s, **kw) for s in range(10)])
    assert len(np.unique(seen)) == 100 and seen.min() >= 0 and seen.max() < n
    epochs.append(seen)
  assert not np.array_equal(epochs[0], epochs[1])
  other_seed = ip.batch_indices(0, seed=8, num_examples=n, global_batch_size=g)
  assert not np.array_equal(other_seed, ip.batch_indices(0, **kw))


def test_host_slices_concatenate_to_global_batch():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (50, 4, 4, 3), dtype=np.uint8)
  kw = dict(seed=3, global_batch_size=8)
  whole = ip.host_batches(images, **kw)
  hosts = [
    ip.host_batches(images, process_index=i, process_count=2, **kw) for i in (0, 1)
  ]
  for step in range(15):  # Crosses two epoch boundaries (6 steps per epoch).
    parts = [next(h) for h in hosts]
    assert parts[0].shape == (4, 4, 4, 3)
    expected = ip.scale_images(images[ip.batch_indices(step, num_examples=50, **kw)])
    np.testing.assert_array_equal(np.concatenate(parts), expected)
    np.testing.assert_array_equal(next(whole), expected)


def test_resume_reads_the_same_batches():
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (37, 3, 3, 1), dtype=np.uint8)
  kw = dict(seed=5, global_batch_size=6, process_index=1, process_count=3)
  full = ip.host_batches(images, **kw)
  run = [next(full) for _ in range(20)]
  for start in (0, 4, 11):
    resumed = ip.host_batches(images, start_step=start, **kw)
    for expected in run[start:]:
      got = next(resumed)
      assert got.tobytes() == expected.tobytes()
    resumed.close()
  sync = ip.host_batches(images, prefetch=0, **kw)
  for expected in run:
    np.testing.assert_array_equal(next(sync), expected)


def _live_prefetch_threads():
  return [t for t in threading.enumerate() if t.name == 'host_batches']


def test_prefetch_thread_stops():
  images = np.zeros((20, 2, 2, 1), np.uint8)
  before = len(_live_prefetch_threads())
  batches = ip.host_batches(images, seed=0, global_batch_size=4, prefetch=3)
  next(batches)
  assert len(_live_prefetch_threads()) == before + 1
  assert all(t.daemon for t in _live_prefetch_threads())
  batches.close()
  assert len(_live_prefetch_threads()) == before
  batches = ip.host_batches(images, seed=0, global_batch_size=4)
  next(batches)
  del batches  # Garbage collection closes the generator.
  assert len(_live_prefetch_threads()) == before


class _Exploding(np.ndarray):
  def __getitem__(self, index):
    raise RuntimeError('disk on fire')


def test_prefetch_thread_forwards_errors():
  images = np.zeros((20, 2, 2, 1), np.uint8).view(_Exploding)
  batches = ip.host_batches(images, seed=0, global_batch_size=4)
  with pytest.raises(RuntimeError, match='disk on fire'):
    next(batches)
  assert not _live_prefetch_threads()


# --------------------------------------------------------------------------
# folder:


@pytest.fixture
def image_tree(tmp_path):
  """Mixed formats, sizes and modes; colours identify files and their order."""
  root = tmp_path / 'images'
  _save(root / 'a_rgb.png', _solid(30, 40, (255, 0, 0)))
  _save(root / 'b_rgba.png', _solid(50, 25, (0, 0, 255, 128)))
  _save(root / 'c_grey.png', _solid(64, 64, (200,))[..., 0])
  _save(root / 'd' / 'nested.JPG', _solid(80, 100, (0, 255, 0)), quality=95)
  _save(root / 'd' / 'e' / 'deep.jpeg', _solid(33, 17, (10, 20, 30)), quality=95)
  _save(root / 'd' / 'f.bmp', _solid(12, 12, (0, 0, 0)))
  _save(root / 'd' / 'g.gif', _solid(20, 10, (255, 255, 255)))
  (root / 'notes.txt').write_text('not an image')
  return root


def test_folder_shapes_channels_and_order(image_tree):
  for channels in (1, 3):
    for crop in ip.CROPS:
      images = ip.load_images(
        dataset=f'folder:{image_tree}', image_size=16, num_channels=channels, crop=crop
      )
      assert images.shape == (7, 16, 16, channels) and images.dtype == np.uint8
  rgb = ip.load_images(dataset=f'folder:{image_tree}', image_size=8, num_channels=3)
  grey = ip.load_images(dataset=f'folder:{image_tree}', image_size=8, num_channels=1)
  # Sorted by relative path: a, b, c, d/e/deep, d/f, d/g, d/nested.
  expected_rgb = [
    (255, 0, 0),
    (0, 0, 255),  # Alpha dropped.
    (200, 200, 200),  # Grey repeated.
    (10, 20, 30),
    (0, 0, 0),
    (255, 255, 255),
    (0, 255, 0),
  ]
  means = rgb.reshape(7, -1, 3).mean(axis=1)
  np.testing.assert_allclose(means, expected_rgb, atol=3)
  luminance = np.asarray(expected_rgb) @ np.array([0.299, 0.587, 0.114])
  np.testing.assert_allclose(grey.reshape(7, -1).mean(axis=1), luminance, atol=3)


def test_celeba_crop(tmp_path):
  face = np.zeros((218, 178, 3), np.uint8)
  face[55:163, 35:143] = 255  # The centred 108x108 square.
  _save(tmp_path / 'faces' / 'face.png', face)
  small = np.random.default_rng(0).integers(0, 256, (70, 50, 3), dtype=np.uint8)
  _save(tmp_path / 'faces' / 'small.png', small)
  kw = dict(dataset=f'folder:{tmp_path / "faces"}', image_size=64, num_channels=3)
  celeba = ip.load_images(crop='celeba', **kw)
  center = ip.load_images(crop='center', **kw)
  assert celeba.shape == (2, 64, 64, 3)
  assert (celeba[0] == 255).all()
  assert center[0].min() == 0  # The 178x178 square still shows the border.
  np.testing.assert_array_equal(celeba[1], center[1])  # Fallback: small image.


def test_folder_of_real_mnist_digits(tmp_path):
  digits = _mnist_test_images(200)
  for i, digit in enumerate(digits):
    _save(tmp_path / 'mnist' / f'{i // 100}' / f'{i:03d}.png', digit)
  dataset = f'folder:{tmp_path / "mnist"}'
  same = ip.load_images(dataset=dataset, image_size=28, num_channels=1)
  np.testing.assert_array_equal(same[..., 0], digits)
  images = ip.load_images(dataset=dataset, image_size=32, num_channels=1)
  assert images.shape == (200, 32, 32, 1) and images.dtype == np.uint8
  for got, digit in zip(images[..., 0], digits, strict=True):
    reference = np.asarray(
      Image.fromarray(digit).resize((32, 32), Image.Resampling.BILINEAR)
    )
    corr = np.corrcoef(got.ravel(), reference.ravel())[0, 1]
    assert corr > 0.95


# --------------------------------------------------------------------------
# TFDS data sets (mocked: they cannot be downloaded here).


@pytest.mark.parametrize(
  'name, size, channels, crop',
  [
    ('mnist', 32, 1, 'center'),
    ('mnist', 28, 3, 'none'),
    ('cifar10', 64, 3, 'center'),
    ('celeb_a', 64, 3, 'celeba'),
  ],
)
def test_mocked_tfds(tmp_path, name, size, channels, crop):
  pytest.importorskip('tensorflow')  # TFDS's mock encodes its images with it.
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=12):
    images = ip.load_images(
      dataset=name,
      image_size=size,
      num_channels=channels,
      crop=crop,
      data_dir=str(tmp_path),
    )
  assert images.shape == (12, size, size, channels) and images.dtype == np.uint8
  assert images.std() > 10  # Mocked examples are random noise.
  if channels == 3 and name == 'mnist':
    np.testing.assert_array_equal(images[..., 0], images[..., 2])


# --------------------------------------------------------------------------
# Errors that say what to change.


def test_tfds_errors(tmp_path):
  with pytest.raises(ValueError, match='Unknown data set'):
    ip.load_images(dataset='no_such_dataset', image_size=8, num_channels=1)
  with pytest.raises(FileNotFoundError, match='tfds build mnist') as error:
    ip.load_images(
      dataset='mnist',
      image_size=8,
      num_channels=1,
      data_dir=str(tmp_path),
      download=False,
    )
  assert str(tmp_path) in str(error.value) and 'config.data_dir' in str(error.value)
  with pytest.raises(FileNotFoundError, match='tfds build celeb_a') as error:
    ip.load_images(
      dataset='celeb_a',
      image_size=8,
      num_channels=3,
      data_dir=str(tmp_path),
      download=False,
    )
  message = str(error.value)
  assert os.path.join(str(tmp_path), 'downloads', 'manual') in message
  assert 'img_align_celeba.zip' in message and 'list_eval_partition.txt' in message


def test_option_errors(tmp_path, image_tree):
  ok = dict(dataset=f'folder:{image_tree}', image_size=8, num_channels=1)
  for bad, match in [
    (dict(num_channels=2), 'num_channels'),
    (dict(crop='square'), 'config.crop'),
    (dict(cache='redis'), 'config.cache'),
    (dict(bad_images='ignore'), r"config.bad_images to one of \('error', 'skip'\)"),
    (dict(cache='disk'), 'config.cache_dir'),
    (dict(cache='disk', cache_dir='gs://bucket/x'), 'local'),
    (dict(dataset=''), 'config.dataset'),
    (dict(dataset='folder:'), 'folder'),
    (dict(dataset=f'folder:{tmp_path / "missing"}'), 'does not exist'),
  ]:
    with pytest.raises(ValueError, match=match):
      ip.load_images(**{**ok, **bad})
  (tmp_path / 'empty' / 'sub').mkdir(parents=True)
  (tmp_path / 'empty' / 'readme.txt').write_text('no images here')
  with pytest.raises(ValueError, match='No images'):
    ip.load_images(**{**ok, 'dataset': f'folder:{tmp_path / "empty"}'})


def test_undecodable_file_is_named(tmp_path, image_tree):
  (image_tree / 'd' / 'broken.png').write_bytes(b'not really a png')
  cache_dir = tmp_path / 'cache'
  with pytest.raises(ValueError, match='broken.png'):
    ip.load_images(
      dataset=f'folder:{image_tree}',
      image_size=8,
      num_channels=1,
      cache='disk',
      cache_dir=str(cache_dir),
    )
  assert os.listdir(cache_dir) == []  # No partial cache left behind.


def test_batching_errors():
  images = np.zeros((10, 2, 2, 1), np.uint8)
  with pytest.raises(ValueError, match='fewer than one global batch'):
    ip.host_batches(images, seed=0, global_batch_size=16)
  with pytest.raises(ValueError, match='fewer than one global batch'):
    ip.batch_indices(0, seed=0, num_examples=10, global_batch_size=16)
  with pytest.raises(ValueError, match='multiple of the number of processes'):
    ip.host_batches(images, seed=0, global_batch_size=8, process_count=3)
  with pytest.raises(ValueError, match='process_index'):
    ip.host_batches(
      images, seed=0, global_batch_size=8, process_index=2, process_count=2
    )


# --------------------------------------------------------------------------
# Disk cache.


def test_disk_cache(tmp_path, digits_data_dir, monkeypatch):
  kw = dict(
    dataset='digits',
    image_size=16,
    num_channels=1,
    data_dir=digits_data_dir,
    cache='disk',
    cache_dir=str(tmp_path / 'cache'),
  )
  first = ip.load_images(**kw)
  assert isinstance(first, np.memmap) and first.shape == (1797, 16, 16, 1)
  files = os.listdir(tmp_path / 'cache')
  assert len(files) == 1 and files[0].endswith('.npy')
  assert 'sklearn_digits' in files[0] and '16x16x1' in files[0]
  np.testing.assert_array_equal(first, ip.load_images(**{**kw, 'cache': 'memory'}))

  def fail(**kwargs):
    raise AssertionError('the cache should have been used')

  monkeypatch.setattr(ip, '_build_array', fail)
  second = ip.load_images(**kw)
  assert isinstance(second, np.memmap)
  np.testing.assert_array_equal(second, first)
  assert os.listdir(tmp_path / 'cache') == files
  with pytest.raises(AssertionError, match='cache should'):
    ip.load_images(**{**kw, 'crop': 'none'})  # Another cache key: rebuilds.


def test_disk_cache_never_trusts_partial_files(tmp_path, image_tree):
  cache_dir = tmp_path / 'cache'
  kw = dict(
    dataset=f'folder:{image_tree}',
    image_size=8,
    num_channels=3,
    cache='disk',
    cache_dir=str(cache_dir),
  )
  expected = ip.load_images(**{**kw, 'cache': 'memory'})
  first = ip.load_images(**kw)
  (path,) = cache_dir.iterdir()
  np.testing.assert_array_equal(first, expected)
  del first
  # A writer killed mid-way (pid that no longer exists) leaves only a temp
  # file; a truncated file under the final name (e.g. a full disk) is rebuilt.
  dead = subprocess.Popen(['true'])
  dead.wait()
  stale = cache_dir / f'{path.name}.tmp-{dead.pid}-0badc0de'
  stale.write_bytes(b'partial')
  path.write_bytes(path.read_bytes()[:200])
  rebuilt = ip.load_images(**kw)
  np.testing.assert_array_equal(rebuilt, expected)
  assert sorted(cache_dir.iterdir()) == [path]
  # A new file in the folder is a different data set: a new cache file.
  _save(image_tree / 'z.png', _solid(9, 9, (1, 2, 3)))
  assert ip.load_images(**kw).shape[0] == 8
  assert len(list(cache_dir.iterdir())) == 2


def test_disk_cache_on_a_full_disk_is_one_line_and_leaves_nothing(
  tmp_path, image_tree, monkeypatch
):
  cache_dir = tmp_path / 'cache'
  kw = dict(
    dataset=f'folder:{image_tree}',
    image_size=8,
    num_channels=3,
    cache='disk',
    cache_dir=str(cache_dir),
  )
  needed = ip.load_images(**{**kw, 'cache': 'memory'}).nbytes
  usage = shutil.disk_usage(tmp_path)
  monkeypatch.setattr(
    ip.shutil, 'disk_usage', lambda _: usage._replace(free=100)
  )  # The disk as it would be with 100 bytes left: less than 7 8x8 RGB images.
  with pytest.raises(ValueError) as e:
    ip.load_images(**kw)
  assert str(e.value) == (
    f'The disk cache needs {needed:,} bytes in {cache_dir}, but only 100 bytes '
    'is free; '
    'free space there, set config.cache_dir to a local disk with room, or use '
    "config.cache='memory'."
  )
  assert list(cache_dir.iterdir()) == []


# --------------------------------------------------------------------------
# Undecodable files in folder: (config.bad_images).


@pytest.fixture
def bad_tree(tmp_path):
  """(folder with good and bad images, folder with only the good ones)."""
  good = tmp_path / 'good'
  _save(good / 'a.png', _solid(20, 30, (255, 0, 0)))
  _save(good / 'c.jpg', _solid(40, 40, (0, 255, 0)), quality=95)
  _save(good / 'd' / 'f.png', np.random.default_rng(0).integers(0, 256, (9, 9)))
  _save(good / 'h.jpeg', _solid(16, 24, (0, 0, 255)), quality=95)
  mixed = tmp_path / 'mixed'
  shutil.copytree(good, mixed)
  png = (good / 'a.png').read_bytes()
  (mixed / 'b_truncated.png').write_bytes(png[: len(png) // 2])
  (mixed / 'd' / 'e_random.jpg').write_bytes(np.random.default_rng(1).bytes(300))
  (mixed / 'g_empty.png').write_bytes(b'')
  return mixed, good


_BAD_NAMES = ('b_truncated.png', os.path.join('d', 'e_random.jpg'), 'g_empty.png')


def test_bad_images_error_names_them(tmp_path, bad_tree):
  mixed, _ = bad_tree
  for cache in ('memory', 'disk'):
    with pytest.raises(ValueError, match='3 of 7 images in ') as error:
      ip.load_images(
        dataset=f'folder:{mixed}',
        image_size=8,
        num_channels=3,
        cache=cache,
        cache_dir=str(tmp_path / 'cache'),
      )
    message = str(error.value)
    assert str(mixed) in message and "config.bad_images='skip'" in message
    assert f'e.g. {", ".join(_BAD_NAMES)} (first 5 listed)' in message
  assert os.listdir(tmp_path / 'cache') == []  # No partial cache left behind.


def test_bad_images_skip_keeps_the_good_ones(tmp_path, bad_tree, caplog):
  mixed, good = bad_tree
  kw = dict(image_size=8, num_channels=3, bad_images='skip')
  expected = ip.load_images(dataset=f'folder:{good}', **kw)
  assert expected.shape == (4, 8, 8, 3)
  with caplog.at_level('WARNING'):
    np.testing.assert_array_equal(
      ip.load_images(dataset=f'folder:{mixed}', **kw), expected
    )
  assert '3 of 7 images' in caplog.text
  assert all(name in caplog.text for name in _BAD_NAMES)
  # The disk cache holds the same; 'error' does not reuse it silently.
  disk = dict(dataset=f'folder:{mixed}', cache='disk', cache_dir=str(tmp_path / 'c'))
  np.testing.assert_array_equal(ip.load_images(**disk, **kw), expected)
  (cache_file,) = os.listdir(tmp_path / 'c')  # The temporary files are gone.
  with pytest.raises(ValueError, match='3 of 7 images'):
    ip.load_images(**disk, **{**kw, 'bad_images': 'error'})
  assert os.listdir(tmp_path / 'c') == [cache_file]
  caplog.clear()
  with caplog.at_level('WARNING'):
    np.testing.assert_array_equal(ip.load_images(**disk, **kw), expected)
  assert 'leaves out 3 of the 7 images' in caplog.text


def test_bad_images_skip_with_nothing_left(tmp_path):
  root = tmp_path / 'bad'
  root.mkdir()
  (root / 'empty.png').write_bytes(b'')
  (root / 'dangling.jpg').symlink_to(tmp_path / 'missing.jpg')  # Unreadable.
  with pytest.raises(ValueError, match='no readable images.*2 of 2'):
    ip.load_images(
      dataset=f'folder:{root}', image_size=8, num_channels=1, bad_images='skip'
    )


# --------------------------------------------------------------------------
# idx:DIR (MNIST's own file format).


def _idx_bytes(array, type_byte=0x08):
  """An IDX file's bytes: 00 00 TYPE NDIM, big-endian uint32 dims, the data."""
  array = np.asarray(array)
  header = bytes([0, 0, type_byte, array.ndim])
  header += b''.join(int(d).to_bytes(4, 'big') for d in array.shape)
  return header + array.astype(array.dtype.newbyteorder('>')).tobytes()


def _write_idx(path, array, *, compress=False, type_byte=0x08):
  data = _idx_bytes(array, type_byte)
  path.write_bytes(gzip.compress(data) if compress else data)


@pytest.fixture(scope='module')
def mnist_test_set():
  return digits_svm.read_mnist()


def test_idx_reads_the_real_mnist_files(mnist_test_set):
  digits, labels = mnist_test_set
  dataset = f'idx:{digits_svm.MNIST_DIR}'
  same = ip.load_images(dataset=dataset, split='test', image_size=28, num_channels=1)
  assert same.shape == (10_000, 28, 28, 1) and same.dtype == np.uint8
  np.testing.assert_array_equal(same[..., 0], digits)
  got, num_classes = ip.load_labels(dataset=dataset, split='test')
  assert got.dtype == np.int32 and num_classes == 10
  np.testing.assert_array_equal(got, labels)
  # At 32x32 RGB: the same preprocessing as every other source.
  rgb = ip.load_images(dataset=dataset, split='test', image_size=32, num_channels=3)
  assert rgb.shape == (10_000, 32, 32, 3)
  np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
  pixels = ip.load_images(dataset=dataset, split='test', image_size=32, num_channels=1)
  np.testing.assert_array_equal(pixels[..., 0], rgb[..., 0])
  reference = np.asarray(
    Image.fromarray(digits[0]).resize((32, 32), Image.Resampling.BILINEAR)
  )
  assert np.corrcoef(pixels[0, ..., 0].ravel(), reference.ravel())[0, 1] > 0.95


def test_idx_plain_and_gzipped_files_and_both_splits(tmp_path, mnist_test_set):
  digits, labels = mnist_test_set
  _write_idx(tmp_path / 'train-images-idx3-ubyte', digits[:50])
  _write_idx(tmp_path / 'train-labels-idx1-ubyte', labels[:50])
  _write_idx(tmp_path / 't10k-images-idx3-ubyte.gz', digits[50:70], compress=True)
  _write_idx(tmp_path / 't10k-labels-idx1-ubyte.gz', labels[50:70], compress=True)
  kw = dict(dataset=f'idx:{tmp_path}', image_size=28, num_channels=1)
  for split, rows in (('train', slice(0, 50)), ('test', slice(50, 70))):
    np.testing.assert_array_equal(
      ip.load_images(split=split, **kw)[..., 0], digits[rows]
    )
    got, _ = ip.load_labels(dataset=kw['dataset'], split=split)
    np.testing.assert_array_equal(got, labels[rows])
  # The disk cache is keyed by split (and the files).
  disk = dict(kw, cache='disk', cache_dir=str(tmp_path / 'cache'))
  np.testing.assert_array_equal(
    ip.load_images(split='test', **disk)[..., 0], digits[50:70]
  )
  np.testing.assert_array_equal(
    ip.load_images(split='train', **disk)[..., 0], digits[:50]
  )
  assert len(os.listdir(tmp_path / 'cache')) == 2
  # Other element types parse too (here int32 labels).
  _write_idx(tmp_path / 'x', np.array([3, -1, 70000], np.int32), type_byte=0x0C)
  assert idx.read_idx(str(tmp_path / 'x')).tolist() == [3, -1, 70000]


def test_idx_missing_files_and_splits_are_named(tmp_path, mnist_test_set):
  digits, labels = mnist_test_set
  _write_idx(tmp_path / 't10k-images-idx3-ubyte.gz', digits[:10], compress=True)
  kw = dict(dataset=f'idx:{tmp_path}', image_size=28, num_channels=1)
  with pytest.raises(FileNotFoundError) as error:
    ip.load_images(split='train', **kw)
  message = str(error.value)
  assert 'train-images-idx3-ubyte' in message and str(tmp_path) in message
  assert 'config.split' in message and "['test']" in message
  with pytest.raises(FileNotFoundError, match='t10k-labels-idx1-ubyte'):
    ip.load_labels(dataset=kw['dataset'], split='test')
  with pytest.raises(ValueError, match=r"splits \['train', 'test'\]"):
    ip.load_images(split='validation', **kw)
  with pytest.raises(FileNotFoundError, match='does not exist'):
    ip.load_images(**{**kw, 'dataset': f'idx:{tmp_path / "nowhere"}'}, split='test')
  with pytest.raises(ValueError, match='idx:DIR'):
    ip.load_images(**{**kw, 'dataset': 'idx:'}, split='test')
  # Training reports it in one line that says what to change.
  config = mnist_files.get_config()
  config.dataset = f'idx:{tmp_path}'
  config.split = 'train'
  with pytest.raises(errors.ConfigError, match='train-images-idx3-ubyte'):
    loader.load_data(config, str(tmp_path / 'workdir'))


def test_idx_corrupt_files_are_named(tmp_path, mnist_test_set):
  digits, labels = mnist_test_set
  images = tmp_path / 't10k-images-idx3-ubyte'
  labels_file = tmp_path / 't10k-labels-idx1-ubyte'
  _write_idx(labels_file, labels[:10])
  kw = dict(dataset=f'idx:{tmp_path}', split='test', image_size=28, num_channels=1)
  good = _idx_bytes(digits[:10])
  for data, match in [
    (b'\x89PNG' + good[4:], 'is not an IDX file: it starts with bytes 89 50 4e 47'),
    (b'', r'not an IDX file: it starts with bytes \(none\)'),
    (good[:-5], r'shape \(10, 28, 28\) \(7840 bytes\).*7835 bytes.*truncated'),
    (good + b'\0', 'holds 7841 bytes'),
    (good[:10], 'announces 3 dimensions, which the file cannot hold'),
    (_idx_bytes(digits[:10].astype(np.int32), 0x0C), 'holds int32 data'),
    (gzip.compress(good)[:-20], 'Cannot read the IDX file'),
  ]:
    images.write_bytes(data)
    with pytest.raises(ValueError, match=match) as error:
      ip.load_images(**kw)
    assert str(images) in str(error.value)
  images.write_bytes(good)
  _write_idx(labels_file, labels[:9])
  with pytest.raises(ValueError, match='has 9 labels but .* 10 images'):
    ip.load_labels(dataset=kw['dataset'], split='test')
