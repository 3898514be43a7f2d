"""FID, KID and IS match the literature's reference formulas."""

import jax
import numpy as np
import pytest
from scipy import linalg, stats

from dcgan_jax.evaluation import gan_metrics


def correlated_features(n, d, seed, *, offset=0.0):
  """[n, d] Gaussian features with a full-rank, non-diagonal covariance."""
  rng = np.random.default_rng(seed)
  mixing = np.eye(d) + rng.normal(size=(d, d)) / np.sqrt(d)
  return rng.normal(size=(n, d)) @ mixing + offset + rng.normal(size=d)


def reference_fid(mu1, sigma1, mu2, sigma2, eps=1e-6):
  """pytorch-fid's calculate_frechet_distance (the TTUR formula), verbatim."""
  diff = mu1 - mu2
  covmean, _ = linalg.sqrtm(sigma1.dot(sigma2), disp=False)
  if not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f'Imaginary component {np.max(np.abs(covmean.imag))}')
    covmean = covmean.real
  return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def reference_fid_of(x, y):
  return reference_fid(
    x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
  )


# ----------------------------------------------------------------------------
# FeatureStats and streaming accumulation.


def test_feature_stats_is_numpy_mean_and_unbiased_cov():
  x = correlated_features(50, 6, seed=0)
  s = gan_metrics.feature_stats(x)
  assert s.count == 50 and s.mean.dtype == np.float64
  np.testing.assert_allclose(s.mean, x.mean(0), rtol=1e-12)
  np.testing.assert_allclose(s.cov, np.cov(x, rowvar=False, ddof=1), rtol=1e-12)


def test_feature_stats_rejects_bad_input():
  with pytest.raises(ValueError, match='at least 2'):
    gan_metrics.feature_stats(np.ones((1, 4)))
  with pytest.raises(ValueError, match=r'2-D array.*\(3, 4, 5\)'):
    gan_metrics.feature_stats(np.ones((3, 4, 5)))
  bad = np.ones((5, 3))
  bad[3, 1] = np.nan
  with pytest.raises(ValueError, match='first is row 3'):
    gan_metrics.feature_stats(bad)


def test_save_load_round_trip_and_fingerprint_mismatch(tmp_path):
  s = gan_metrics.feature_stats(correlated_features(20, 4, seed=1))
  path = str(tmp_path / 'stats.npz')
  s.save(path, fingerprint='digits train 8x8 svm')
  loaded = gan_metrics.FeatureStats.load(path, fingerprint='digits train 8x8 svm')
  assert loaded.count == 20
  np.testing.assert_array_equal(loaded.mean, s.mean)
  np.testing.assert_array_equal(loaded.cov, s.cov)
  with pytest.raises(ValueError) as error:
    gan_metrics.FeatureStats.load(path, fingerprint='digits test 8x8 svm')
  message = str(error.value)
  assert "['train']" in message and "['test']" in message
  assert 'Delete the file' in message
  with pytest.raises(ValueError, match='non-empty str'):
    s.save(path, fingerprint='')


@pytest.mark.parametrize('shift', [None, 'zeros'])
def test_accumulator_with_padded_batches_matches_float64(shift):
  # Far from the origin: float32 x x^T sums about 0 lose the variance.
  x = correlated_features(1000, 16, seed=2, offset=1000.0)
  accumulator = gan_metrics.StatsAccumulator(
    shift=None if shift is None else np.zeros(16)
  )
  batch = 128
  for start in range(0, len(x), batch):
    chunk = x[start : start + batch]
    valid = len(chunk)
    padded = np.full((batch, 16), np.nan, np.float32)  # garbage in padding
    padded[:valid] = chunk
    accumulator.update(padded, mask=np.arange(batch) < valid)
  got, want = accumulator.stats(), gan_metrics.feature_stats(x)
  assert got.count == 1000
  np.testing.assert_allclose(got.mean, want.mean, rtol=0, atol=1e-4)  # std ~1
  cov_error = np.abs(got.cov - want.cov).max() / np.abs(want.cov).max()
  if shift is None:
    assert cov_error < 1e-5
  else:
    assert cov_error > 1e-2  # Why the accumulator shifts by the first batch.


def test_streamed_stats_equal_the_in_memory_ones():
  """float64 host sums about the first batch's mean: the same statistics as
  all rows at once, far from the origin too, whatever the batch sizes."""
  x = correlated_features(1000, 16, seed=4, offset=1000.0)
  want = gan_metrics.feature_stats(x)
  cuts = [0, 1, 130, 130, 700, 1000]  # Sizes 1, 129, 0, 570, 300.
  got = gan_metrics.streamed_feature_stats(
    x[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)
  )
  assert got.count == 1000
  np.testing.assert_allclose(got.mean, want.mean, rtol=1e-13)
  np.testing.assert_allclose(got.cov, want.cov, rtol=1e-9, atol=1e-12)
  with pytest.raises(ValueError, match='at least 2'):
    gan_metrics.streamed_feature_stats([x[:1]])
  with pytest.raises(ValueError, match='dimension'):
    gan_metrics.streamed_feature_stats([x[:5], x[:5, :3]])


def test_accumulator_takes_per_device_moments_from_pmap():
  n_dev = jax.local_device_count()
  x = correlated_features(6 * n_dev * 10, 8, seed=3, offset=5.0).astype(np.float32)
  shift = x[:10].mean(0)
  p_moments = jax.pmap(gan_metrics.batch_moments, in_axes=(0, None, 0))
  accumulator = gan_metrics.StatsAccumulator(shift=shift)
  for batch in np.split(x, 6):
    mask = np.ones((n_dev, 10), bool)
    mask[-1, 7:] = False  # Drops 3 rows per batch.
    accumulator.add(p_moments(batch.reshape(n_dev, 10, 8), shift, mask))
  keep = np.ones((6, n_dev, 10), bool)
  keep[:, -1, 7:] = False
  want = gan_metrics.feature_stats(x[keep.reshape(-1)])
  got = accumulator.stats()
  assert got.count == want.count == 6 * (n_dev * 10 - 3)
  np.testing.assert_allclose(got.mean, want.mean, rtol=1e-6)
  np.testing.assert_allclose(got.cov, want.cov, rtol=1e-4, atol=1e-5)


def test_accumulator_errors():
  accumulator = gan_metrics.StatsAccumulator()
  accumulator.update(np.zeros((4, 3)), mask=np.zeros(4, bool))
  assert accumulator.shift is None and accumulator.count == 0
  accumulator.update(np.ones((4, 3)), mask=np.array([True, False, False, False]))
  with pytest.raises(ValueError, match='1 valid samples'):
    accumulator.stats()
  bad = np.ones((4, 3))
  bad[0, 0] = np.inf
  with pytest.raises(ValueError, match='non-finite'):
    accumulator.update(bad)
  with pytest.raises(ValueError, match=r'mask must have shape \(4,\)'):
    accumulator.update(np.ones((4, 3)), mask=np.ones(5, bool))
  with pytest.raises(
    ValueError, match='features has feature dimension 5 but the shift has 3'
  ):
    accumulator.update(np.ones((4, 5)))
  with pytest.raises(ValueError, match='shift='):
    gan_metrics.StatsAccumulator().add(
      gan_metrics.batch_moments(np.ones((2, 3)), np.zeros(3))
    )


# ----------------------------------------------------------------------------
# FID.


@pytest.mark.parametrize('d', [64, 256])
def test_fid_matches_sqrtm_reference(d):
  x = correlated_features(2000, d, seed=10)
  y = correlated_features(2000, d, seed=11)
  sx, sy = gan_metrics.feature_stats(x), gan_metrics.feature_stats(y)
  got = gan_metrics.frechet_distance(sx, sy)
  want = reference_fid_of(x, y)
  assert want > 1.0
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Two halves of one sample: a small FID, i.e. heavy cancellation.
  sa, sb = gan_metrics.feature_stats(x[::2]), gan_metrics.feature_stats(x[1::2])
  small = gan_metrics.frechet_distance(sa, sb)
  assert small < 0.2 * np.trace(sx.cov)
  np.testing.assert_allclose(small, reference_fid_of(x[::2], x[1::2]), rtol=1e-6)


def test_fid_of_identical_stats_is_zero_and_symmetric():
  x = correlated_features(500, 32, seed=13)
  y = correlated_features(500, 32, seed=14)
  sx, sy = gan_metrics.feature_stats(x), gan_metrics.feature_stats(y)
  assert abs(gan_metrics.frechet_distance(sx, sx)) < 1e-9 * np.trace(sx.cov)
  assert gan_metrics.frechet_distance(sx, sy) == pytest.approx(
    gan_metrics.frechet_distance(sy, sx), rel=1e-10
  )


def test_fid_closed_form_for_diagonal_and_singular_covariances():
  # Diagonal: FID = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2, zeros included.
  a, b = np.array([4.0, 1.0, 0.0, 9.0]), np.array([1.0, 1.0, 2.0, 0.0])
  mu1, mu2 = np.array([1.0, 0, 0, 0]), np.array([0.0, 0, 3, 0])
  got = gan_metrics.frechet_distance(
    gan_metrics.FeatureStats(10, mu1, np.diag(a)),
    gan_metrics.FeatureStats(10, mu2, np.diag(b)),
  )
  assert got == pytest.approx(10.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
  # Commuting covariances in a random basis: the same formula holds.
  q, _ = np.linalg.qr(np.random.default_rng(15).normal(size=(4, 4)))
  rotated = gan_metrics.frechet_distance(
    gan_metrics.FeatureStats(10, q @ mu1, q @ np.diag(a) @ q.T),
    gan_metrics.FeatureStats(10, q @ mu2, q @ np.diag(b) @ q.T),
  )
  assert rotated == pytest.approx(got, rel=1e-7)


def test_fid_rejects_mismatched_dimensions():
  s64 = gan_metrics.feature_stats(correlated_features(10, 64, seed=0))
  s32 = gan_metrics.feature_stats(correlated_features(10, 32, seed=0))
  with pytest.raises(ValueError, match='dimension 64 but b has 32'):
    gan_metrics.frechet_distance(s64, s32)


# ----------------------------------------------------------------------------
# KID.


def naive_mmd2_unbiased(x, y):
  """The unbiased MMD^2 formula, one kernel evaluation at a time."""

  def k(u, v):
    return (sum(ui * vi for ui, vi in zip(u, v, strict=True)) / len(u) + 1) ** 3

  m, n = len(x), len(y)
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
  yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j)
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n))
  return xx / (m * (m - 1)) + yy / (n * (n - 1)) - 2 * xy / (m * n)


def test_mmd2_polynomial_matches_naive_formula():
  rng = np.random.default_rng(20)
  x, y = rng.normal(size=(12, 5)), rng.normal(0.5, 1.5, size=(9, 5))
  want = naive_mmd2_unbiased(x.tolist(), y.tolist())
  assert gan_metrics.mmd2_polynomial(x, y) == pytest.approx(want, rel=1e-10)
  assert gan_metrics.mmd2_polynomial(y, x) == pytest.approx(want, rel=1e-10)


def test_kid_uses_documented_subsets_and_is_deterministic():
  rng = np.random.default_rng(21)
  a, b = rng.normal(size=(60, 6)), rng.normal(0.3, 1.0, size=(45, 6))
  for subset_size, m in [(20, 20), (1000, 45)]:  # 1000 is capped at 45.
    got = gan_metrics.kernel_inception_distance(
      a, b, num_subsets=4, subset_size=subset_size, rng=np.random.default_rng(7)
    )
    replay = np.random.default_rng(7)
    mmds = []
    for _ in range(4):
      ia = replay.choice(60, m, replace=False)
      ib = replay.choice(45, m, replace=False)
      mmds.append(naive_mmd2_unbiased(a[ia].tolist(), b[ib].tolist()))
    assert got[0] == pytest.approx(np.mean(mmds), rel=1e-9)
    assert got[1] == pytest.approx(np.std(mmds), rel=1e-7)
  runs = [
    gan_metrics.kernel_inception_distance(
      a, b, num_subsets=4, subset_size=20, rng=np.random.default_rng(seed)
    )
    for seed in (7, 7, 8)
  ]
  assert runs[0] == runs[1] and runs[2] != runs[0]


def test_kid_is_unbiased_near_zero_for_one_distribution_positive_for_shifted():
  both = correlated_features(4000, 32, seed=22)  # One law, disjoint draws.
  x, y = both[:2000], both[2000:]
  kwargs = dict(num_subsets=50, subset_size=200)
  same_mean, same_std = gan_metrics.kernel_inception_distance(
    x, y, rng=np.random.default_rng(0), **kwargs
  )
  shifted_mean, _ = gan_metrics.kernel_inception_distance(
    x, y + 0.5, rng=np.random.default_rng(0), **kwargs
  )
  # The biased (V-statistic) estimate is ~0.7 here, well above this bound.
  assert abs(same_mean) < 3 * same_std / np.sqrt(50)
  assert shifted_mean > 20 * same_std


def test_kid_errors():
  x = np.zeros((10, 4))
  with pytest.raises(ValueError, match='feats_a has feature dimension 4 but'):
    gan_metrics.kernel_inception_distance(
      x, np.zeros((10, 3)), rng=np.random.default_rng(0)
    )
  with pytest.raises(ValueError, match='feats_b has 1 samples'):
    gan_metrics.kernel_inception_distance(
      x, np.zeros((1, 4)), rng=np.random.default_rng(0)
    )
  with pytest.raises(ValueError, match='numpy.random.Generator'):
    gan_metrics.kernel_inception_distance(x, x, rng=0)


# ----------------------------------------------------------------------------
# IS.


def reference_inception_score(probs, num_splits):
  scores = []
  n = len(probs)
  for i in range(num_splits):
    part = probs[i * n // num_splits : (i + 1) * n // num_splits]
    py = part.mean(axis=0)
    kls = [stats.entropy(pyx, py) for pyx in part]
    scores.append(np.exp(np.mean(kls)))
  return np.mean(scores), np.std(scores)


def test_inception_score_matches_reference():
  rng = np.random.default_rng(30)
  probs = rng.dirichlet(np.full(10, 0.3), size=503)  # Uneven splits.
  probs[0] = np.eye(10)[3]  # Exact zeros: 0 log 0 = 0.
  got = gan_metrics.inception_score(probs, num_splits=7)
  want = reference_inception_score(probs, 7)
  np.testing.assert_allclose(got, want, rtol=1e-10)
  assert 1.0 < got[0] < 10.0 and got[1] > 0.0


def test_inception_score_extremes():
  uniform = np.full((100, 7), 1 / 7)
  assert gan_metrics.inception_score(uniform) == pytest.approx((1.0, 0.0))
  one_hot = np.eye(5)[np.arange(100) % 5]  # Each split of 10: two per class.
  assert gan_metrics.inception_score(one_hot) == pytest.approx((5.0, 0.0))
  collapsed = np.eye(5)[np.zeros(100, int)]
  assert gan_metrics.inception_score(collapsed) == pytest.approx((1.0, 0.0))


def test_inception_score_errors():
  with pytest.raises(ValueError, match='not logits'):
    gan_metrics.inception_score(np.full((20, 4), 2.0))
  with pytest.raises(ValueError, match='num_splits must be between 1 and'):
    gan_metrics.inception_score(np.full((5, 4), 0.25), num_splits=10)
  with pytest.raises(ValueError, match=r'2-D array.*\(20,\)'):
    gan_metrics.inception_score(np.full(20, 0.05))
  with pytest.raises(ValueError, match='finite and non-negative'):
    gan_metrics.inception_score(np.array([[1.5, -0.5], [0.5, 0.5]]))
