"""Tests for dcgan_jax/evaluation/memorization.py: exact k-NN, summary, PNGs, real digits."""

import json
import os
import tracemalloc

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from dcgan_jax.data.digits_dataset import scale_to_uint8
from dcgan_jax.evaluation import memorization
from dcgan_jax.util import figures


def _brute_force(queries, references, k, self_ids=None):
  """float64 k-NN from all pairwise differences; ties to the lower index."""
  q = np.asarray(queries, np.float64).reshape(len(queries), -1)
  r = np.asarray(references, np.float64).reshape(len(references), -1)
  d = np.sqrt(((q[:, None, :] - r[None, :, :]) ** 2).sum(-1))
  if self_ids is not None:
    d[np.arange(len(q)), self_ids] = np.inf
  order = np.argsort(d, axis=1, kind='stable')[:, :k]
  return np.take_along_axis(d, order, axis=1), order


# ----------------------------------------------------------------------------
# nearest_neighbours


@pytest.mark.parametrize(
  'num_queries, num_refs, k',
  [(37, 53, 4), (37, 53, 1), (5, 12, 3)],  # (5, 12): every reference a candidate.
)
def test_knn_matches_brute_force_across_chunk_boundaries(num_queries, num_refs, k):
  rng = np.random.default_rng(num_queries + num_refs + k)
  refs = rng.normal(size=(num_refs, 2, 5))  # Rows are flattened.
  queries = rng.normal(size=(num_queries, 2, 5))
  distances, indices = memorization.nearest_neighbours(
    queries, refs, k, batch_size=8, reference_batch_size=16
  )
  want_d, want_i = _brute_force(queries, refs, k)
  assert distances.dtype == np.float64 and indices.dtype == np.int64
  assert distances.shape == indices.shape == (num_queries, k)
  np.testing.assert_array_equal(indices, want_i)
  np.testing.assert_allclose(distances, want_d, rtol=1e-12)


def test_knn_exclude_self_skips_the_query_itself():
  rng = np.random.default_rng(1)
  refs = rng.normal(size=(45, 7)).astype(np.float32)
  distances, indices = memorization.nearest_neighbours(
    refs[:30], refs, 3, exclude_self=True, batch_size=8, reference_batch_size=16
  )
  want_d, want_i = _brute_force(refs[:30], refs, 3, self_ids=np.arange(30))
  np.testing.assert_array_equal(indices, want_i)
  np.testing.assert_allclose(distances, want_d, rtol=1e-12)
  assert not (indices == np.arange(30)[:, None]).any()
  # A subset of the references, named by self_indices.
  subset = np.sort(rng.choice(45, size=11, replace=False))
  distances, indices = memorization.nearest_neighbours(
    refs[subset],
    refs,
    2,
    exclude_self=True,
    self_indices=subset,
    batch_size=4,
    reference_batch_size=16,
  )
  want_d, want_i = _brute_force(refs[subset], refs, 2, self_ids=subset)
  np.testing.assert_array_equal(indices, want_i)
  np.testing.assert_allclose(distances, want_d, rtol=1e-12)


def test_knn_is_exact_below_float32_resolution(monkeypatch):
  """100 references within 1e-2 of each other in distance, at norms of 1e3.

  float32 round-off of ||q||^2 - 2 q.r + ||r||^2 is about 1 here, so the
  device pass picks its 24 candidates among the 100 at random; the float64
  re-check must notice and recompute.
  """
  rng = np.random.default_rng(2)
  dim = 16
  base = rng.normal(size=dim) * 1000.0
  directions = rng.normal(size=(100, dim))
  directions /= np.linalg.norm(directions, axis=1, keepdims=True)
  radii = 1.0 + 1e-4 * rng.permutation(100)
  cluster = base + directions * radii[:, None]
  far = rng.normal(size=(200, dim)) * 1000.0
  refs = np.concatenate([far, cluster])
  queries = np.stack([base, far[3] + 1e-3])
  host_calls = []
  host_knn = memorization._host_knn
  monkeypatch.setattr(
    memorization,
    '_host_knn',
    lambda q, *args: host_calls.append(len(q)) or host_knn(q, *args),
  )
  distances, indices = memorization.nearest_neighbours(
    queries, refs, 4, reference_batch_size=64
  )
  want_d, want_i = _brute_force(queries, refs, 4)
  np.testing.assert_array_equal(indices, want_i)
  np.testing.assert_array_equal(indices[0], 200 + np.argsort(radii)[:4])
  np.testing.assert_allclose(distances, want_d, rtol=1e-12)
  assert host_calls == [1]  # Only the query inside the cluster needed it.


def test_knn_float64_host_path_matches_brute_force(monkeypatch):
  monkeypatch.setattr(memorization, '_F32_ERROR_SAFETY', 1e30)  # Certify none.
  rng = np.random.default_rng(3)
  refs = rng.normal(size=(70, 9))
  for exclude_self, queries, self_ids in (
    (False, rng.normal(size=(20, 9)), None),
    (True, refs, np.arange(70)),
  ):
    distances, indices = memorization.nearest_neighbours(
      queries, refs, 5, exclude_self=exclude_self, reference_batch_size=16
    )
    want_d, want_i = _brute_force(queries, refs, 5, self_ids=self_ids)
    np.testing.assert_array_equal(indices, want_i)
    np.testing.assert_allclose(distances, want_d, rtol=1e-12)


def test_knn_rejects_bad_inputs():
  refs = np.zeros((10, 4))
  with pytest.raises(ValueError, match='values per row'):
    memorization.nearest_neighbours(np.zeros((2, 5)), refs)
  with pytest.raises(ValueError, match=r'k must be an integer in \[1, 9\]'):
    memorization.nearest_neighbours(refs, refs, 10, exclude_self=True)
  with pytest.raises(ValueError, match='query 1 differs from reference 1'):
    memorization.nearest_neighbours(
      refs[:3] + np.eye(3, 4, k=-1), refs, exclude_self=True
    )
  with pytest.raises(ValueError, match='non-finite'):
    memorization.nearest_neighbours(np.full((1, 4), np.nan), refs)
  with pytest.raises(ValueError, match='only used with exclude_self'):
    memorization.nearest_neighbours(refs, refs, self_indices=np.arange(10))


# ----------------------------------------------------------------------------
# distance_summary


def test_exact_copy_gets_distance_zero_and_is_counted_as_memorised():
  rng = np.random.default_rng(4)
  train = rng.normal(size=(300, 20))
  novel = rng.normal(size=(200, 20))
  samples = np.concatenate([novel[:199], train[117:118]])
  distances, indices = memorization.nearest_neighbours(samples, train, 2)
  assert distances[-1, 0] == 0.0 and indices[-1, 0] == 117
  train_d, _ = memorization.nearest_neighbours(train, train, exclude_self=True)
  summary = memorization.distance_summary(distances, train_d)
  assert summary['num_exact_copies'] == 1
  assert summary['num_below_train_p01'] >= 1
  assert summary['sample_to_train']['min'] == 0.0
  assert summary['memorisation_suspected']
  assert 'exact copies' in summary['verdict']
  json.dumps(summary)

  novel_d, _ = memorization.nearest_neighbours(novel, train)
  summary = memorization.distance_summary(novel_d, train_d)
  assert summary['num_exact_copies'] == 0
  assert summary['share_below_train_p01'] < summary['suspicious_share']
  assert not summary['memorisation_suspected']
  assert summary['verdict'].startswith('No sign of memorisation.')
  quantiles = [summary['train_to_train'][name] for name, _ in memorization.QUANTILES]
  assert quantiles == sorted(quantiles)
  assert summary['threshold_p01'] == summary['train_to_train']['p01']


# ----------------------------------------------------------------------------
# Pictures


def _upscaled_rgb(image, scale):
  x = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
  return np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x


@pytest.mark.parametrize('size, channels, scale', [(8, 1, 8), (28, 3, 3), (64, 3, 1)])
def test_neighbour_grid_shows_samples_and_their_neighbours(
  tmp_path, size, channels, scale
):
  rng = np.random.default_rng(size)
  samples = rng.integers(0, 256, (6, size, size, channels), dtype=np.uint8)
  train = rng.integers(0, 256, (20, size, size, channels), dtype=np.uint8)
  k, rows = 3, [4, 0, 2]
  indices = rng.integers(0, 20, (6, k))
  distances = np.sort(rng.uniform(0, 10, (6, k)), axis=1)
  path = str(tmp_path / 'grid.png')
  layout = figures.neighbour_grid(
    samples, train, indices, distances, path=path, rows=rows, title='pixel space'
  )
  tile = size * scale
  assert layout.scale == scale and tile >= 64
  assert len(layout.boxes) == len(rows) and all(len(b) == k + 1 for b in layout.boxes)
  with Image.open(path) as image:
    assert image.size == (layout.width, layout.height)
    picture = np.asarray(image.convert('RGB'))
  # Rows x columns of tiles plus a separator column and captions.
  assert (k + 1) * tile + figures.GRID_SEPARATOR <= layout.width
  assert layout.width <= (k + 1) * tile + figures.GRID_SEPARATOR + 60
  assert len(rows) * tile < layout.height < len(rows) * (tile + 60) + 100
  for r, sample in enumerate(rows):
    expected = [samples[sample]] + [train[j] for j in indices[sample]]
    for (left, top, right, bottom), want in zip(layout.boxes[r], expected, strict=True):
      assert (right - left, bottom - top) == (tile, tile)
      np.testing.assert_array_equal(
        picture[top:bottom, left:right], _upscaled_rgb(want, scale)
      )
    # The separator: red pixels strictly between the sample and its neighbours.
    (_, top, sample_right, bottom), (neighbour_left, *_) = layout.boxes[r][:2]
    gap = picture[top:bottom, sample_right:neighbour_left].reshape(-1, 3)
    assert ((gap == figures._SEPARATOR_COLOUR).all(axis=1)).sum() >= 2 * tile
  untitled = figures.neighbour_grid(
    samples, train, indices, distances, path=str(tmp_path / 'plain.png'), num_rows=2
  )
  assert untitled.width == layout.width and len(untitled.boxes) == 2
  assert untitled.boxes[0][0][1] < layout.boxes[0][0][1]  # No title strip.


def test_distance_histogram_draws_both_distributions(tmp_path):
  rng = np.random.default_rng(5)
  path = figures.distance_histogram(
    rng.normal(5, 1, 400).clip(0),
    rng.normal(8, 1, 90),
    path=str(tmp_path / 'h' / 'd.png'),
  )
  with Image.open(path) as image:
    assert image.size == (760, 440)
    pixels = np.asarray(image.convert('RGB')).reshape(-1, 3)
  for colour in (figures._SAMPLE_COLOUR, figures._TRAIN_COLOUR):
    assert (pixels == colour).all(axis=1).sum() > 100
  assert not [f for f in os.listdir(tmp_path / 'h') if '.tmp-' in f]


# ----------------------------------------------------------------------------
# Real data: scikit-learn's digits.


@pytest.fixture(scope='module')
def digits():
  images = scale_to_uint8(load_digits().images)[..., None]
  order = np.random.default_rng(0).permutation(len(images))
  half = len(images) // 2
  return images[order[:half]], images[order[half:]]  # train, held out


def test_report_on_real_digits(tmp_path, digits):
  train, held_out = digits
  projection = np.random.default_rng(6).normal(size=(64, 24))

  def features(images):
    return memorization._pixels(images) @ projection

  report = memorization.memorization_report(
    held_out,
    train,
    sample_features=features(held_out),
    train_features=features(train),
    out_dir=str(tmp_path),
    prefix='real',
    k=4,
    num_train_pairs=600,
    seed=1,
  )
  json.dumps(report)
  assert report['num_train_pairs'] == 600
  for space in ('pixels', 'dfeatures'):
    summary = report[space]
    # Held-out real digits are as far from the training set as training
    # digits are from each other: not memorised.
    assert not summary['memorisation_suspected'], summary['verdict']
    assert summary['share_below_train_p01'] < 0.03
    assert 0.85 < summary['median_ratio'] < 1.15
    for key, kind in (('neighbours_png', 'neighbours'), ('distances_png', 'distances')):
      assert summary[key] == os.path.join(str(tmp_path), f'real_{kind}_{space}.png')
      with Image.open(summary[key]) as image:
        image.load()
  with Image.open(report['pixels']['neighbours_png']) as image:
    assert image.width >= 5 * 64 and image.height >= 8 * 64  # k + 1 tiles, 8 rows.

  # Slightly noised copies of training digits are flagged, and found.
  rng = np.random.default_rng(7)
  copied = rng.choice(len(train), size=150, replace=False)
  noise = rng.normal(0, 12, train[copied].shape)
  noisy = np.clip(np.round(train[copied] + noise), 0, 255).astype(np.uint8)
  report = memorization.memorization_report(
    noisy, train, out_dir=str(tmp_path), prefix='copies', k=2, seed=1
  )
  summary = report['pixels']
  assert summary['memorisation_suspected']
  assert summary['share_below_train_p01'] > 0.9
  assert summary['median_ratio'] < 0.5
  assert summary['verdict'].startswith('Memorisation suspected.')
  for near in summary['nearest']:
    assert near['train'] == copied[near['sample']]
  assert 'dfeatures' not in report
  assert sorted(os.listdir(tmp_path)) == sorted(
    f'{prefix}_{kind}_{space}.png'
    for prefix, spaces in (('real', ('pixels', 'dfeatures')), ('copies', ('pixels',)))
    for kind in ('neighbours', 'distances')
    for space in spaces
  )


def test_report_is_deterministic_given_seed(tmp_path, digits):
  train, held_out = digits
  runs = [
    memorization.memorization_report(
      held_out[:100],
      train,
      out_dir=str(tmp_path / name),
      k=2,
      num_train_pairs=200,
      seed=seed,
    )
    for name, seed in (('a', 3), ('b', 3), ('c', 4))
  ]

  def png(run):
    with open(run['pixels']['neighbours_png'], 'rb') as f:
      return f.read()

  def strip(run):
    return {k: v for k, v in run['pixels'].items() if not k.endswith('_png')}

  assert strip(runs[0]) == strip(runs[1]) and png(runs[0]) == png(runs[1])
  # Another seed: another training subset and other random rows.
  assert strip(runs[0])['train_to_train'] != strip(runs[2])['train_to_train']
  assert png(runs[0]) != png(runs[2])


def test_report_rejects_mismatched_inputs(tmp_path, digits):
  train, held_out = digits
  with pytest.raises(ValueError, match='both sample_features and train_features'):
    memorization.memorization_report(
      held_out,
      train,
      sample_features=np.zeros((len(held_out), 3)),
      out_dir=str(tmp_path),
    )
  with pytest.raises(ValueError, match='training resolution'):
    memorization.memorization_report(held_out[:, :4], train, out_dir=str(tmp_path))


# ----------------------------------------------------------------------------
# Bounded memory: the training set is streamed, never held as floats.


def _brute_force_some_self(queries, references, k, own):
  """`_brute_force` where own[i] = -1 excludes nothing for query i."""
  q = np.asarray(queries, np.float64)
  r = np.asarray(references, np.float64)
  d = np.sqrt(((q[:, None, :] - r[None, :, :]) ** 2).sum(-1))
  mine = own >= 0
  d[np.flatnonzero(mine), own[mine]] = np.inf
  order = np.argsort(d, axis=1, kind='stable')[:, :k]
  return np.take_along_axis(d, order, axis=1), order


@pytest.mark.parametrize('host_path', [False, True])
def test_search_streams_over_references_in_chunks(monkeypatch, host_path):
  """References made on demand are asked for at most chunk_rows at a time
  (also on the float64 host path), and the result is the brute force's."""
  if host_path:
    monkeypatch.setattr(memorization, '_F32_ERROR_SAFETY', 1e30)  # Certify none.
  rng = np.random.default_rng(8)
  refs = rng.normal(size=(500, 12))
  own = np.concatenate([np.full(30, -1), [3, 250, 499]])
  queries = np.concatenate([rng.normal(size=(30, 12)), refs[own[30:]]])
  requests = []

  def get(indices):
    requests.append(indices)
    return refs[indices]

  rows = memorization.Rows(len(refs), 12, get)
  distances, indices = memorization.nearest_neighbours(
    queries,
    rows,
    4,
    exclude_self=True,
    self_indices=own,
    batch_size=8,
    reference_batch_size=16,
    chunk_rows=64,
  )
  want_d, want_i = _brute_force_some_self(queries, refs, 4, own)
  np.testing.assert_array_equal(indices, want_i)
  np.testing.assert_allclose(distances, want_d, rtol=1e-12)
  assert max(len(r) for r in requests) <= 64
  streamed = np.concatenate([r for r in requests if len(r) and np.all(np.diff(r) == 1)])
  assert np.bincount(streamed, minlength=500).min() >= 1  # Every row, in chunks.
  # Chunks of any size give the same answer as one chunk of everything.
  whole = memorization.nearest_neighbours(
    queries, refs, 4, exclude_self=True, self_indices=own, chunk_rows=10_000
  )
  np.testing.assert_array_equal(whole[1], indices)
  np.testing.assert_array_equal(whole[0], distances)


def test_report_holds_a_chunk_of_the_training_set_not_all_of_it(tmp_path):
  """60,000 memory-mapped 16x16x3 training images: as float32 pixels they
  would take 184 MB; the report's numpy allocations peak far below that, and
  its results do not depend on the chunk size."""
  rng = np.random.default_rng(9)
  train = np.lib.format.open_memmap(
    tmp_path / 'train.npy', 'w+', np.uint8, (60_000, 16, 16, 3)
  )
  for start in range(0, len(train), 5000):
    train[start : start + 5000] = rng.integers(0, 256, (5000, 16, 16, 3), np.uint8)
  train.flush()
  train = np.load(tmp_path / 'train.npy', mmap_mode='r')
  samples = rng.integers(0, 256, (100, 16, 16, 3), np.uint8)
  samples[:5] = train[[7, 70, 700, 7000, 59_999]]  # Copies.
  as_floats = train.size * 4
  kwargs = dict(k=2, num_train_pairs=300, seed=0)
  tracemalloc.start()
  try:
    report = memorization.memorization_report(
      samples, train, out_dir=str(tmp_path / 'a'), chunk_rows=1024, **kwargs
    )
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  print(f'peak numpy/Python allocations {peak / 2**20:.1f} MB, float32 set '
        f'{as_floats / 2**20:.1f} MB')  # fmt: skip
  assert peak < as_floats / 3
  estimate = memorization.report_bytes(
    100, (16, 16, 3), num_train=len(train), num_train_pairs=300, chunk_rows=1024
  )
  assert peak < estimate < as_floats  # The estimate covers what was allocated.
  assert report['pixels']['num_exact_copies'] == 5
  assert {n['train'] for n in report['pixels']['nearest'][:5]} == {
    7,
    70,
    700,
    7000,
    59_999,
  }
  other = memorization.memorization_report(
    samples, train, out_dir=str(tmp_path / 'b'), chunk_rows=4096, **kwargs
  )

  def strip(run):
    return {k: v for k, v in run['pixels'].items() if not k.endswith('_png')}

  assert strip(report) == strip(other)
