"""Sample-quality statistics of the GAN literature: FID, KID and IS.

All three read a feature network's outputs, not images: FID and KID take
feature vectors (2048-d Inception-v3 pool3 features in the papers, or any
classifier's penultimate layer), IS takes class probabilities. Scores are
comparable only when they use the same feature network, the same reference
statistics and the same number of samples (FID and IS depend on it), which
is why saved statistics carry a caller-supplied fingerprint.

- FID (Heusel et al. 2017, the TTUR / pytorch-fid formula): the Frechet
  distance between Gaussians fit to the two feature sets.
- KID (Binkowski et al. 2018): the unbiased MMD^2 with the cubic polynomial
  kernel, averaged over random subsets.
- IS (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))) per split.

Feature statistics can be accumulated batch by batch on device
(`batch_moments`, `StatsAccumulator`); everything else runs on host in
float64.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from dcgan_jax.util import files


def _as_features(name: str, features, *, min_count: int = 1) -> np.ndarray:
  """float64 [N, d], checked: 2-D, at least `min_count` rows, all finite."""
  x = np.asarray(features, np.float64)
  if x.ndim != 2 or x.shape[1] == 0:
    raise ValueError(
      f'{name} must be a 2-D array [num_samples, feature_dim], got shape '
      f'{x.shape}: flatten each sample to one feature vector.'
    )
  if len(x) < min_count:
    raise ValueError(
      f'{name} has {len(x)} samples; at least {min_count} are needed: '
      'pass more samples.'
    )
  bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
  if bad.size:
    raise ValueError(
      f'{name} has non-finite values (NaN or inf) in {bad.size} rows, the '
      f'first is row {bad[0]}: check the generator and feature network outputs.'
    )
  return x


def _check_same_dim(name_a: str, dim_a: int, name_b: str, dim_b: int) -> None:
  if dim_a != dim_b:
    raise ValueError(
      f'{name_a} has feature dimension {dim_a} but {name_b} has {dim_b}: both '
      'must come from the same layer of the same feature network.'
    )


# ----------------------------------------------------------------------------
# Feature statistics: mean and covariance, saved with a fingerprint.


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureStats:
  """Mean and unbiased covariance of `count` feature vectors.

  cov = sum_i (x_i - mean)(x_i - mean)^T / (count - 1), i.e. ddof=1 as in
  numpy.cov and the TTUR / pytorch-fid reference code.
  """

  count: int
  mean: np.ndarray  # float64 [d]
  cov: np.ndarray  # float64 [d, d]

  def __post_init__(self):
    mean = np.asarray(self.mean, np.float64)
    cov = np.asarray(self.cov, np.float64)
    if mean.ndim != 1 or cov.shape != (mean.size, mean.size):
      raise ValueError(
        f'FeatureStats needs mean [d] and cov [d, d], got mean {mean.shape} '
        f'and cov {cov.shape}.'
      )
    if int(self.count) < 2:
      raise ValueError(
        f'FeatureStats.count is {self.count}; the covariance needs at least 2 samples.'
      )
    if not (np.isfinite(mean).all() and np.isfinite(cov).all()):
      raise ValueError('FeatureStats mean or cov has non-finite values.')
    object.__setattr__(self, 'count', int(self.count))
    object.__setattr__(self, 'mean', mean)
    object.__setattr__(self, 'cov', cov)

  @property
  def dim(self) -> int:
    return self.mean.size

  def save(self, path: str, *, fingerprint: str) -> None:
    """Writes .npz with count, mean, cov, fingerprint, atomically (a local
    path or a URL).

    `fingerprint` says what these are statistics of, e.g.
    'cifar10 train 32x32 inception-v3-tf pool3'; `load` checks it.
    """
    _check_fingerprint_arg(fingerprint)
    with files.atomic_write(path) as f:
      np.savez(
        f,
        count=np.int64(self.count),
        mean=self.mean,
        cov=self.cov,
        fingerprint=np.str_(fingerprint),
      )

  @classmethod
  def load(cls, path: str, *, fingerprint: str) -> FeatureStats:
    """Reads `save`'s .npz; ValueError if its fingerprint is not `fingerprint`."""
    _check_fingerprint_arg(fingerprint)
    with files.open(path) as f, np.load(f, allow_pickle=False) as data:
      missing = {'count', 'mean', 'cov', 'fingerprint'} - set(data.files)
      if missing:
        raise ValueError(
          f'{path} is not a FeatureStats file (missing {sorted(missing)}): '
          'delete it and recompute the statistics.'
        )
      stored = str(data['fingerprint'])
      if stored != fingerprint:
        raise ValueError(
          f'{path} holds statistics of {stored!r}, but {fingerprint!r} was '
          f'expected ({_describe_difference(stored, fingerprint)}). Delete the '
          'file and recompute the statistics, or pass its path for the '
          'intended data.'
        )
      return cls(int(data['count']), data['mean'], data['cov'])


def _check_fingerprint_arg(fingerprint: str) -> None:
  if not isinstance(fingerprint, str) or not fingerprint:
    raise ValueError(
      f'fingerprint must be a non-empty str naming the data set, split, '
      f'resolution and feature network, got {fingerprint!r}.'
    )


def _describe_difference(stored: str, expected: str) -> str:
  """Which whitespace-separated tokens only one fingerprint has."""
  stored_tokens, expected_tokens = stored.split(), expected.split()
  only_stored = [t for t in stored_tokens if t not in expected_tokens]
  only_expected = [t for t in expected_tokens if t not in stored_tokens]
  if not (only_stored or only_expected):
    return 'same words, different order or spacing'
  return f'file has {only_stored}, expected has {only_expected}'


def feature_stats(features: np.ndarray) -> FeatureStats:
  """FeatureStats of in-memory features [N, d], N >= 2, in float64."""
  x = _as_features('features', features, min_count=2)
  mean = x.mean(axis=0)
  centered = x - mean
  return FeatureStats(len(x), mean, centered.T @ centered / (len(x) - 1))


def streamed_feature_stats(batches: Iterable[np.ndarray]) -> FeatureStats:
  """FeatureStats of feature batches [n_i, d] (at least 2 rows in all),
  accumulated on host in float64 about the first batch's mean, so memory
  does not grow with the number of rows. Equal to `feature_stats` of the
  rows joined up to float64 round-off (for low-dimensional features; for
  2048-d ones `StatsAccumulator` sums on device)."""
  count, shift, total, total_outer = 0, None, None, None
  for batch in batches:
    x = np.asarray(batch, np.float64)
    if not len(x):
      continue
    x = _as_features('features', x)
    if shift is None:
      shift = x.mean(axis=0)
      total, total_outer = np.zeros_like(shift), np.zeros((len(shift),) * 2)
    _check_same_dim('features', x.shape[1], 'the first batch', len(shift))
    y = x - shift
    count += len(y)
    total += y.sum(axis=0)
    total_outer += y.T @ y
  if count < 2:
    raise ValueError(
      f'{count} feature rows; the covariance needs at least 2: pass more samples.'
    )
  centered_mean = total / count
  cov = (total_outer - count * np.outer(centered_mean, centered_mean)) / (count - 1)
  return FeatureStats(count, shift + centered_mean, 0.5 * (cov + cov.T))


# ----------------------------------------------------------------------------
# Streaming accumulation: per-batch float32 sums on device, float64 on host.


class Moments(NamedTuple):
  """Sums over the valid rows of a batch, about a fixed shift c (float32).

  With y = x - c: count = n, sum = sum_i y_i, sum_outer = sum_i y_i y_i^T.
  Leading axes (e.g. one per device under pmap) are summed by
  `StatsAccumulator.add`.
  """

  count: jax.Array  # int32 [...]
  sum: jax.Array  # float32 [..., d]
  sum_outer: jax.Array  # float32 [..., d, d]


def batch_moments(
  features: jax.Array, shift: jax.Array, mask: jax.Array | None = None
) -> Moments:
  """Moments of features [..., d] about `shift` [d]; rows where mask is False
  (padding, mask shape [...]) count for nothing, whatever their values.

  Pure jax.numpy: call it inside a jitted or pmapped step. The outer product
  uses Precision.HIGHEST so TPUs and GPUs do not round inputs to bf16/TF32.
  """
  d = features.shape[-1]
  if jnp.shape(shift) != (d,):
    raise ValueError(
      f'shift must have shape ({d},) to match features {features.shape}, got '
      f'{jnp.shape(shift)}.'
    )
  x = jnp.asarray(features, jnp.float32).reshape(-1, d)
  if mask is None:
    valid = jnp.ones(len(x), bool)
  else:
    if jnp.shape(mask) != features.shape[:-1]:
      raise ValueError(
        f'mask must have shape {features.shape[:-1]} (features without the '
        f'feature axis), got {jnp.shape(mask)}.'
      )
    valid = jnp.asarray(mask, bool).reshape(-1)
  y = jnp.where(valid[:, None], x - jnp.asarray(shift, jnp.float32), 0.0)
  return Moments(
    count=jnp.sum(valid, dtype=jnp.int32),
    sum=jnp.sum(y, axis=0),
    sum_outer=jnp.matmul(y.T, y, precision=jax.lax.Precision.HIGHEST),
  )


@jax.jit
def _masked_mean(features: jax.Array, mask: jax.Array | None):
  d = features.shape[-1]
  x = jnp.asarray(features, jnp.float32).reshape(-1, d)
  valid = jnp.ones(len(x), bool) if mask is None else mask.reshape(-1)
  count = jnp.sum(valid)
  total = jnp.sum(jnp.where(valid[:, None], x, 0.0), axis=0)
  return total / jnp.maximum(count, 1), count


_jit_batch_moments = jax.jit(batch_moments)


class StatsAccumulator:
  """Streams feature batches into FeatureStats.

  Each batch's sums are taken on device in float32 (`batch_moments`) and
  added on host in float64. The sums are about a fixed shift c, by default
  the mean of the first batch with a valid row: the covariance
  (sum y y^T - n ybar ybar^T) / (n - 1) is the same for any c, but with
  c = 0 the two terms are ~(mean/std)^2 times the result, and float32
  rounding of them is amplified as much (mean 1000, std 1: 5% error in
  the covariance). With c near the mean, ybar is small and nothing cancels.

  Under pmap, fix the shift first (`StatsAccumulator(shift=...)`, e.g. the
  reference statistics' mean), call `batch_moments(feats, shift, mask)` in
  the pmapped step and `add` the per-device moments it returns.
  """

  def __init__(self, shift: np.ndarray | None = None):
    self._shift = None if shift is None else np.asarray(shift, np.float32)
    self._count = 0
    self._sum = None
    self._sum_outer = None

  @property
  def shift(self) -> np.ndarray | None:
    """The float32 [d] shift, None until a batch with a valid row arrived."""
    return self._shift

  @property
  def count(self) -> int:
    return self._count

  def update(self, features: jax.Array, mask: jax.Array | None = None) -> None:
    """Adds features [..., d]; rows where mask [...] is False are skipped."""
    features = jnp.asarray(features)
    if features.ndim < 2:
      raise ValueError(
        f'features must have shape [..., num_samples, d], got {features.shape}.'
      )
    if mask is not None:
      mask = jnp.asarray(mask, bool)
    if self._shift is None:
      if mask is not None and jnp.shape(mask) != features.shape[:-1]:
        raise ValueError(
          f'mask must have shape {features.shape[:-1]}, got {jnp.shape(mask)}.'
        )
      shift, count = _masked_mean(features, mask)
      if int(count) == 0:
        return
      self._shift = np.asarray(shift)
    _check_same_dim('features', features.shape[-1], 'the shift', self._shift.size)
    self.add(_jit_batch_moments(features, self._shift, mask))

  def add(self, moments: Moments) -> None:
    """Adds `batch_moments` output, summing any leading (device) axes."""
    if self._shift is None:
      raise ValueError(
        'StatsAccumulator.add needs the shift the moments were taken about: '
        'construct it with shift=... or call update() first.'
      )
    d = self._shift.size
    s1 = np.asarray(moments.sum, np.float64)
    s2 = np.asarray(moments.sum_outer, np.float64)
    if s1.shape[-1:] != (d,) or s2.shape[-2:] != (d, d):
      raise ValueError(
        f'moments have feature dimension {s1.shape[-1:]}, but the shift has '
        f'{d}: use one accumulator per feature network.'
      )
    s1 = s1.reshape(-1, d).sum(axis=0)
    s2 = s2.reshape(-1, d, d).sum(axis=0)
    if not (np.isfinite(s1).all() and np.isfinite(s2).all()):
      raise ValueError(
        'features have non-finite values (NaN or inf) in valid rows, or values '
        'too large for float32 sums: check the feature network outputs and '
        'the mask.'
      )
    self._count += int(np.asarray(moments.count).sum())
    self._sum = s1 if self._sum is None else self._sum + s1
    self._sum_outer = s2 if self._sum_outer is None else self._sum_outer + s2

  def stats(self) -> FeatureStats:
    """FeatureStats of everything added so far (at least 2 valid rows)."""
    if self._count < 2:
      raise ValueError(
        f'StatsAccumulator has {self._count} valid samples; the covariance '
        'needs at least 2: update it with more features (check the mask).'
      )
    n = self._count
    centered_mean = self._sum / n
    cov = (self._sum_outer - n * np.outer(centered_mean, centered_mean)) / (n - 1)
    return FeatureStats(
      n, self._shift.astype(np.float64) + centered_mean, 0.5 * (cov + cov.T)
    )


# ----------------------------------------------------------------------------
# The scores.


def _psd_factor(cov: np.ndarray) -> np.ndarray:
  """L with L L^T = cov: eigenvectors scaled by sqrt(eigenvalues >= 0)."""
  eigenvalues, eigenvectors = np.linalg.eigh(cov)
  return eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
  """FID = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

  The Frechet (2-Wasserstein) distance between N(mu_a, S_a) and
  N(mu_b, S_b), Heusel et al. 2017. Instead of scipy.linalg.sqrtm of the
  non-symmetric S_a S_b (the TTUR / pytorch-fid code, which needs an eps
  offset when that fails), with S = L L^T:
  Tr (S_a S_b)^(1/2) = sum sqrt(eig(L_a^T S_b L_a)) = sum of the singular
  values of L_a^T L_b, the nuclear norm. One eigh per covariance and one SVD,
  all float64, stable for singular covariances. Tiny negative results from
  rounding are returned as 0.
  """
  _check_same_dim('a', a.dim, 'b', b.dim)
  cov_a, cov_b = 0.5 * (a.cov + a.cov.T), 0.5 * (b.cov + b.cov.T)
  factor_a, factor_b = _psd_factor(cov_a), _psd_factor(cov_b)
  trace_sqrt = np.linalg.svd(factor_a.T @ factor_b, compute_uv=False).sum()
  diff = a.mean - b.mean
  fid = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt
  return float(max(fid, 0.0))


def mmd2_polynomial(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 of samples x [m, d], y [n, d], k(u, v) = (u.v/d + 1)^3.

  MMD^2_u = sum_{i!=j} k(x_i, x_j) / (m (m-1)) + sum_{i!=j} k(y_i, y_j) /
  (n (n-1)) - 2 sum_{i,j} k(x_i, y_j) / (m n), as `_mmd2_and_variance(...,
  mmd_est='unbiased')` in the KID reference code. It can be negative.
  """
  x = _as_features('x', x, min_count=2)
  y = _as_features('y', y, min_count=2)
  _check_same_dim('x', x.shape[1], 'y', y.shape[1])
  d, m, n = x.shape[1], len(x), len(y)
  k_xx = (x @ x.T / d + 1.0) ** 3
  k_yy = (y @ y.T / d + 1.0) ** 3
  k_xy = (x @ y.T / d + 1.0) ** 3
  within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
  within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
  return float(within_x + within_y - 2.0 * k_xy.sum() / (m * n))


def kernel_inception_distance(
  feats_a: np.ndarray,
  feats_b: np.ndarray,
  *,
  num_subsets: int = 100,
  subset_size: int = 1000,
  rng: np.random.Generator,
) -> tuple[float, float]:
  """KID: mean and std (ddof=0) of `mmd2_polynomial` over random subsets.

  Binkowski et al. 2018, as their reference code and torch-fidelity: for
  each subset, in this order, a = rng.choice(len(feats_a), m,
  replace=False), then b = rng.choice(len(feats_b), m, replace=False), with
  m = min(subset_size, len(feats_a), len(feats_b)) (capped as clean-fid).
  """
  feats_a = _as_features('feats_a', feats_a, min_count=2)
  feats_b = _as_features('feats_b', feats_b, min_count=2)
  _check_same_dim('feats_a', feats_a.shape[1], 'feats_b', feats_b.shape[1])
  if num_subsets < 1:
    raise ValueError(f'num_subsets must be >= 1, got {num_subsets}.')
  if subset_size < 2:
    raise ValueError(f'subset_size must be >= 2, got {subset_size}.')
  if not isinstance(rng, np.random.Generator):
    raise ValueError(
      f'rng must be a numpy.random.Generator, e.g. np.random.default_rng(0), '
      f'got {type(rng).__name__}.'
    )
  m = min(subset_size, len(feats_a), len(feats_b))
  mmds = []
  for _ in range(num_subsets):
    a = feats_a[rng.choice(len(feats_a), m, replace=False)]
    b = feats_b[rng.choice(len(feats_b), m, replace=False)]
    mmds.append(mmd2_polynomial(a, b))
  return float(np.mean(mmds)), float(np.std(mmds))


def inception_score(probs: np.ndarray, *, num_splits: int = 10) -> tuple[float, float]:
  """IS: mean and std (ddof=0) over splits of exp(E_x KL(p(y|x) || p(y))).

  Salimans et al. 2016, as their reference code: split i is the
  consecutive rows [i N // num_splits, (i + 1) N // num_splits), p(y) is the
  mean of p(y|x) over the split, and 0 log 0 = 0. Ranges from 1 to the
  number of classes.
  """
  p = np.asarray(probs, np.float64)
  if p.ndim != 2 or p.shape[1] < 2:
    raise ValueError(
      f'probs must be a 2-D array [num_samples, num_classes >= 2], got shape {p.shape}.'
    )
  if not np.isfinite(p).all() or (p < 0).any():
    raise ValueError('probs must be finite and non-negative: pass softmax outputs.')
  row_sums = p.sum(axis=1)
  if not np.allclose(row_sums, 1.0, atol=1e-3):
    worst = int(np.argmax(np.abs(row_sums - 1.0)))
    raise ValueError(
      f'probs rows must sum to 1, row {worst} sums to {row_sums[worst]:.6g}: '
      'pass softmax probabilities, not logits.'
    )
  if not 1 <= num_splits <= len(p):
    raise ValueError(
      f'num_splits must be between 1 and the number of samples ({len(p)}), '
      f'got {num_splits}.'
    )
  scores = []
  for i in range(num_splits):
    part = p[i * len(p) // num_splits : (i + 1) * len(p) // num_splits]
    marginal = part.mean(axis=0, keepdims=True)
    kl = special.xlogy(part, part) - special.xlogy(part, marginal)
    scores.append(np.exp(kl.sum(axis=1).mean()))
  return float(np.mean(scores)), float(np.std(scores))
