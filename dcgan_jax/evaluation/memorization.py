"""Does the generator copy its training images? Nearest-neighbour checks.

The DCGAN paper argues that its generator does not memorise training
images. The direct check: for every generated sample, the distance to its
nearest training image, compared with the distance of a training image to
its nearest *other* training image. A generator that copies puts samples
much closer to the training set than training images sit to each other; one
that does not gives the two distributions a similar shape (a held-out real
image is the ideal sample).

Distances are Euclidean, in pixel space (pixels on [-1, 1], flattened) or
in any feature space (e.g. discriminator features, which ignore small
shifts that pixel distances punish). Everything here is a pure function of
arrays; the evaluation command wires it to checkpoints and data sets.

- `nearest_neighbours`: exact k-NN, float32 on device in chunks, the
  candidates re-measured in float64 on host and certified against a
  float32 round-off bound (queries that cannot be certified are redone in
  float64 on host).
- `distance_summary`: quantiles of both distributions, the share of samples
  closer to the training set than 99% of training images are, a verdict.
- `figures.neighbour_grid`, `figures.distance_histogram`: PNGs for a person
  to look at.
- `memorization_report`: all of the above in pixel and feature space.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from dcgan_jax.util import figures

# Candidates kept per query on device: k + max(k, _MIN_MARGIN).
_MIN_MARGIN = 16
# Multiplies the float32 round-off bound of a squared distance (tests raise
# it to send every query through the float64 host path).
_F32_ERROR_SAFETY = 2.0
_F32_UNIT_ROUNDOFF = 2.0**-24
# Elements of the [queries, candidates, dim] float64 block re-measured at once.
_HOST_BLOCK_ELEMENTS = 1 << 22
# Quantiles reported by `distance_summary`, by name.
QUANTILES = (
  ('min', 0.0),
  ('p01', 0.01),
  ('p05', 0.05),
  ('p25', 0.25),
  ('p50', 0.5),
  ('p75', 0.75),
  ('p95', 0.95),
  ('p99', 0.99),
  ('max', 1.0),
)

# ----------------------------------------------------------------------------
# Exact k nearest neighbours.


def _as_vectors(name: str, x: Any) -> np.ndarray:
  """[N, ...] numbers -> a 2-D [N, d] view (no copy, dtype kept), checked."""
  x = np.asarray(x)
  if x.ndim < 2 or x.shape[0] == 0 or math.prod(x.shape[1:]) == 0:
    raise ValueError(
      f'{name} must be an array [num_vectors, ...] with at least one vector '
      f'of at least one value, got shape {x.shape}: pass x[None] for a single '
      'vector.'
    )
  if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
    raise ValueError(f'{name} must hold real numbers, got dtype {x.dtype}.')
  x = x.reshape(x.shape[0], -1)
  if np.issubdtype(x.dtype, np.floating):
    for start in range(0, len(x), 4096):
      bad = np.flatnonzero(~np.isfinite(x[start : start + 4096]).all(axis=1))
      if bad.size:
        raise ValueError(
          f'{name} has non-finite values (NaN or inf), first in row '
          f'{start + bad[0]}: check the generator and feature outputs.'
        )
  return x


def _rows64(x: np.ndarray, rows: Any) -> np.ndarray:
  return np.asarray(x[rows], np.float64)


def _column_mean(x: np.ndarray) -> np.ndarray:
  total = np.zeros(x.shape[1], np.float64)
  for start in range(0, len(x), 4096):
    total += _rows64(x, slice(start, start + 4096)).sum(axis=0)
  return total / len(x)


def _self_indices(
  queries: np.ndarray,
  references: np.ndarray,
  exclude_self: bool,
  self_indices: Any,
) -> np.ndarray:
  """Per query, the reference index to skip (-1: none), checked."""
  num_queries, num_refs = len(queries), len(references)
  if not exclude_self:
    if self_indices is not None:
      raise ValueError('self_indices is only used with exclude_self=True.')
    return np.full(num_queries, -1, np.int64)
  if self_indices is None:
    if num_queries > num_refs:
      raise ValueError(
        f'exclude_self=True with {num_queries} queries but {num_refs} '
        'references: query i must be reference i; pass self_indices for a '
        'subset of the references.'
      )
    ids = np.arange(num_queries)
  else:
    ids = np.asarray(self_indices)
    if (
      ids.shape != (num_queries,)
      or not np.issubdtype(ids.dtype, np.integer)
      or (ids.size and (ids.min() < 0 or ids.max() >= num_refs))
    ):
      raise ValueError(
        f'self_indices must be {num_queries} integers in [0, {num_refs}), one '
        f'reference index per query; got shape {ids.shape}, dtype {ids.dtype}.'
      )
    ids = ids.astype(np.int64)
  for start in range(0, num_queries, 1024):
    chunk = slice(start, start + 1024)
    equal = np.all(queries[chunk] == references[ids[chunk]], axis=1)
    if not equal.all():
      i = start + int(np.flatnonzero(~equal)[0])
      raise ValueError(
        f'exclude_self=True but query {i} differs from reference {ids[i]}: '
        'query i must be the reference it excludes (self_indices[i], or i).'
      )
  return ids


@functools.partial(jax.jit, static_argnames=('num_candidates',))
def _candidates(
  queries: jax.Array,
  self_ids: jax.Array,
  refs: jax.Array,
  ref_sq: jax.Array,
  *,
  num_candidates: int,
) -> tuple[jax.Array, jax.Array]:
  """The `num_candidates` smallest float32 squared distances per query.

  queries [bq, d]; self_ids [bq] (reference to skip, -1: none); refs
  [chunks, br, d]; ref_sq [chunks, br], +inf on padding rows. Returns
  ascending squared distances and reference indices, each [bq, m].
  """
  num_queries, chunk = queries.shape[0], refs.shape[1]
  query_sq = jnp.sum(queries * queries, axis=1)
  per_chunk = min(num_candidates, chunk)

  def merge(carry, xs):
    best_d2, best_ids = carry
    block, block_sq, offset = xs
    dots = jnp.matmul(queries, block.T, precision=jax.lax.Precision.HIGHEST)
    d2 = jnp.maximum(query_sq[:, None] - 2.0 * dots + block_sq[None, :], 0.0)
    ids = offset + jnp.arange(chunk, dtype=jnp.int32)
    d2 = jnp.where(ids[None, :] == self_ids[:, None], jnp.inf, d2)
    neg_d2, pos = jax.lax.top_k(-d2, per_chunk)
    all_d2 = jnp.concatenate([best_d2, -neg_d2], axis=1)
    all_ids = jnp.concatenate([best_ids, ids[pos]], axis=1)
    neg_d2, pos = jax.lax.top_k(-all_d2, num_candidates)
    return (-neg_d2, jnp.take_along_axis(all_ids, pos, axis=1)), None

  init = (
    jnp.full((num_queries, num_candidates), jnp.inf, jnp.float32),
    jnp.full((num_queries, num_candidates), -1, jnp.int32),
  )
  offsets = jnp.arange(refs.shape[0], dtype=jnp.int32) * chunk
  (d2, ids), _ = jax.lax.scan(merge, init, (refs, ref_sq, offsets))
  return d2, ids


def _exact_sorted(
  queries64: np.ndarray, references: np.ndarray, candidates: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
  """Float64 squared distances to the candidates; the k smallest, sorted.

  Ties are broken by the lower reference index.
  """
  n, m = candidates.shape
  d2 = np.empty((n, m), np.float64)
  step = max(1, _HOST_BLOCK_ELEMENTS // (m * queries64.shape[1]))
  for start in range(0, n, step):
    rows = slice(start, start + step)
    diff = _rows64(references, candidates[rows]) - queries64[rows, None, :]
    d2[rows] = np.einsum('nmd,nmd->nm', diff, diff)
  order = np.lexsort((candidates, d2), axis=-1)[:, :k]
  return (
    np.take_along_axis(d2, order, axis=1),
    np.take_along_axis(candidates, order, axis=1),
  )


def _host_knn(
  queries64: np.ndarray,
  references: np.ndarray,
  self_ids: np.ndarray,
  mean: np.ndarray,
  k: int,
  num_candidates: int,
  reference_batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
  """k-NN in float64 on host: the slow path for uncertified queries."""
  centred = queries64 - mean
  query_sq = np.einsum('nd,nd->n', centred, centred)
  best_d2 = np.full((len(centred), 0), np.inf)
  best_ids = np.zeros((len(centred), 0), np.int64)
  for start in range(0, len(references), reference_batch_size):
    block = _rows64(references, slice(start, start + reference_batch_size)) - mean
    d2 = query_sq[:, None] - 2.0 * centred @ block.T
    d2 += np.einsum('nd,nd->n', block, block)[None, :]
    ids = np.arange(start, start + len(block))
    d2[ids[None, :] == self_ids[:, None]] = np.inf
    all_d2 = np.concatenate([best_d2, d2], axis=1)
    all_ids = np.concatenate([best_ids, np.broadcast_to(ids, d2.shape)], axis=1)
    keep = min(num_candidates, all_d2.shape[1])
    pos = np.argpartition(all_d2, keep - 1, axis=1)[:, :keep]
    best_d2 = np.take_along_axis(all_d2, pos, axis=1)
    best_ids = np.take_along_axis(all_ids, pos, axis=1)
  # The excluded reference sits at +inf: with num_candidates <= the references
  # left, it is never kept.
  return _exact_sorted(queries64, references, best_ids, k)


def nearest_neighbours(
  queries: Any,
  references: Any,
  k: int = 1,
  *,
  exclude_self: bool = False,
  self_indices: Any = None,
  batch_size: int = 1024,
  reference_batch_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
  """Exact Euclidean k nearest references of every query.

  Args:
    queries: [Nq, ...] numbers; each row is flattened to one vector.
    references: [Nr, ...] numbers of the same flattened size.
    k: neighbours per query, at most Nr (Nr - 1 with exclude_self).
    exclude_self: skip one reference per query, the query itself: reference
      i for query i, or `self_indices[i]`. The two must be equal (checked);
      for train-to-train distances.
    self_indices: [Nq] reference indices of the queries (with exclude_self).
    batch_size: queries per device call.
    reference_batch_size: references per block; the device holds one
      [batch_size, reference_batch_size] block of distances at a time.

  Returns:
    distances: float64 [Nq, k], ascending per row.
    indices: int64 [Nq, k] into references; ties go to the lower index.

  Squared distances ||q||^2 - 2 q.r + ||r||^2 (about the references' mean)
  are computed in float32 on the default device and only pick candidates:
  k + max(k, 16) per query, re-measured as sum((q - r)^2) in float64 on host.
  A query is certified when its k-th exact distance lies below the smallest
  float32 distance left out, minus a bound on float32 round-off; the rest
  (rare: near-ties among many references) are redone in float64 on host.
  """
  q = _as_vectors('queries', queries)
  r = _as_vectors('references', references)
  if q.shape[1] != r.shape[1]:
    raise ValueError(
      f'queries have {q.shape[1]} values per row but references have '
      f'{r.shape[1]}: both must come from the same images or feature layer.'
    )
  for name, value in (
    ('batch_size', batch_size),
    ('reference_batch_size', reference_batch_size),
  ):
    if int(value) != value or value < 1:
      raise ValueError(f'{name} must be a positive integer, got {value!r}.')
  self_ids = _self_indices(q, r, exclude_self, self_indices)
  available = len(r) - (1 if exclude_self else 0)
  if int(k) != k or not 1 <= k <= available:
    raise ValueError(
      f'k must be an integer in [1, {available}] ({len(r)} references'
      f'{", one excluded per query" if exclude_self else ""}), got {k!r}.'
    )
  k = int(k)
  num_candidates = min(available, k + max(k, _MIN_MARGIN))
  mean = _column_mean(r)
  distances2, indices, redo = _device_knn(
    q, r, self_ids, mean, k, num_candidates, batch_size, reference_batch_size
  )
  if redo.size:
    logging.info(
      'nearest_neighbours: %d of %d queries have near-ties below float32 '
      'resolution; recomputing them in float64 on host.',
      redo.size,
      len(q),
    )
  for start in range(0, redo.size, 256):
    rows = redo[start : start + 256]
    distances2[rows], indices[rows] = _host_knn(
      _rows64(q, rows), r, self_ids[rows], mean, k, num_candidates, reference_batch_size
    )
  return np.sqrt(distances2), indices


def _device_knn(
  q: np.ndarray,
  r: np.ndarray,
  self_ids: np.ndarray,
  mean: np.ndarray,
  k: int,
  num_candidates: int,
  batch_size: int,
  reference_batch_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Float32 candidates on device, re-measured in float64 on host.

  Returns the squared distances [Nq, k], indices [Nq, k] and the queries
  whose result is not certified (to be redone on host).
  """
  refs, ref_sq, max_ref_norm = _device_references(r, mean, reference_batch_size)
  distances2 = np.empty((len(q), k), np.float64)
  indices = np.empty((len(q), k), np.int64)
  uncertified: list[np.ndarray] = []
  chunk = min(batch_size, len(q))
  exhaustive = num_candidates >= len(r) - int((self_ids >= 0).any())

  def finish(rows: slice, q64: np.ndarray, result: tuple[jax.Array, jax.Array]) -> None:
    d2_f32, cand = (np.asarray(a)[: len(q64)] for a in jax.device_get(result))
    valid = ((cand >= 0) & (cand < len(r))).all(axis=1)
    d2, ids = _exact_sorted(q64, r, np.maximum(cand, 0).astype(np.int64), k)
    distances2[rows], indices[rows] = d2, ids
    if exhaustive:  # Every reference is a candidate.
      ok = valid
    else:
      # A reference left out has float32 d2 >= the last candidate's, so its
      # exact d2 is at least that minus the float32 round-off bound.
      query_norm = np.linalg.norm(q64 - mean, axis=1)
      bound = (
        _F32_ERROR_SAFETY
        * (q.shape[1] + 8)
        * _F32_UNIT_ROUNDOFF
        * (query_norm + max_ref_norm) ** 2
      )
      ok = valid & (d2[:, -1] < d2_f32[:, -1].astype(np.float64) - bound)
    uncertified.append(rows.start + np.flatnonzero(~ok))

  pending = None
  for start in range(0, len(q), chunk):
    rows = slice(start, min(start + chunk, len(q)))
    q64 = _rows64(q, rows)
    padded = np.zeros((chunk, q.shape[1]), np.float32)
    padded[: len(q64)] = q64 - mean
    ids = np.full(chunk, -1, np.int32)
    ids[: len(q64)] = self_ids[rows]
    result = _candidates(
      jnp.asarray(padded), jnp.asarray(ids), refs, ref_sq, num_candidates=num_candidates
    )
    if pending is not None:
      finish(*pending)  # While the device works on the next chunk.
    pending = (rows, q64, result)
  finish(*pending)
  return distances2, indices, np.concatenate(uncertified)


def _device_references(
  references: np.ndarray, mean: np.ndarray, chunk: int
) -> tuple[jax.Array, jax.Array, float]:
  """Centred float32 references [chunks, chunk, d] on device, their squared
  norms (+inf on padding rows) and the largest float64 centred norm."""
  chunk = min(chunk, len(references))
  num_chunks = -(-len(references) // chunk)
  host = np.zeros((num_chunks * chunk, references.shape[1]), np.float32)
  max_sq = 0.0
  for start in range(0, len(references), 4096):
    block = _rows64(references, slice(start, start + 4096)) - mean
    max_sq = max(max_sq, float(np.einsum('nd,nd->n', block, block).max()))
    host[start : start + len(block)] = block
  refs = jnp.asarray(host).reshape(num_chunks, chunk, -1)
  valid = np.arange(num_chunks * chunk).reshape(num_chunks, chunk) < len(references)
  ref_sq = jnp.where(jnp.asarray(valid), jnp.sum(refs * refs, axis=2), jnp.inf)
  return refs, ref_sq, math.sqrt(max_sq)


# ----------------------------------------------------------------------------
# Summary and verdict.


def _nearest(name: str, distances: Any) -> np.ndarray:
  """[N] or [N, k] distances -> float64 [N] nearest ones, checked."""
  d = np.asarray(distances, np.float64)
  if d.ndim == 2:
    d = d[:, 0] if d.shape[1] else d.reshape(-1)
  if d.ndim != 1 or d.size == 0:
    raise ValueError(
      f'{name} must be non-empty nearest-neighbour distances [N] or [N, k], '
      f'got shape {np.shape(distances)}.'
    )
  if not np.isfinite(d).all() or (d < 0).any():
    raise ValueError(f'{name} must be finite and non-negative.')
  return d


def _quantiles(d: np.ndarray) -> dict[str, float]:
  values = np.quantile(d, [p for _, p in QUANTILES])
  stats = {'count': int(d.size), 'mean': float(d.mean())}
  stats.update({name: float(v) for (name, _), v in zip(QUANTILES, values, strict=True)})
  return stats


def distance_summary(sample_to_train: Any, train_to_train: Any) -> dict[str, Any]:
  """Compares samples' nearest-training-image distances with the training set's own.

  Args:
    sample_to_train: [N] (or [N, k], first column used) distance of each
      generated sample to its nearest training image.
    train_to_train: [M] (or [M, k]) distance of each of a subset of
      training images to its nearest *other* training image.

  Returns:
    A JSON-serialisable dict: `sample_to_train` and `train_to_train`
    (count, mean and the `QUANTILES`), `threshold_p01` / `threshold_min`
    (1st percentile and minimum of train-to-train), `num_below_train_p01` /
    `share_below_train_p01` (samples strictly below it: memorised-looking;
    about 1% expected when samples are as novel as held-out real images),
    `share_below_train_min`, `num_exact_copies` / `share_exact_copies`
    (distance below 1e-6 of the train-to-train median), `suspicious_share`
    (the share above which `share_below_train_p01` exceeds 1% by 3 standard
    errors), `median_ratio` (median sample-to-train / median
    train-to-train), `memorisation_suspected` and a `verdict` sentence.
  """
  s = _nearest('sample_to_train', sample_to_train)
  t = _nearest('train_to_train', train_to_train)
  p01, t_min, t_median = (float(v) for v in np.quantile(t, [0.01, 0.0, 0.5]))
  below = int(np.sum(s < p01))
  copies = int(np.sum(s <= 1e-6 * t_median))
  # Sampling error of the share below p01 under "samples are like held-out
  # data": binomial over the samples plus the error of p01 itself.
  suspicious = 0.01 + 3.0 * math.sqrt(0.01 * 0.99 * (1.0 / s.size + 1.0 / t.size))
  share = below / s.size
  median_ratio = float(np.median(s) / t_median) if t_median > 0 else math.inf
  suspected = share > suspicious or copies > 0
  summary: dict[str, Any] = {
    'sample_to_train': _quantiles(s),
    'train_to_train': _quantiles(t),
    'threshold_p01': p01,
    'threshold_min': t_min,
    'num_below_train_p01': below,
    'share_below_train_p01': share,
    'share_below_train_min': float(np.mean(s < t_min)),
    'num_exact_copies': copies,
    'share_exact_copies': copies / s.size,
    'expected_share_below_p01': 0.01,
    'suspicious_share': suspicious,
    'median_ratio': median_ratio,
    'memorisation_suspected': bool(suspected),
  }
  summary['verdict'] = _verdict(summary)
  return summary


def _verdict(summary: dict[str, Any]) -> str:
  s, t = summary['sample_to_train'], summary['train_to_train']
  share, ratio = summary['share_below_train_p01'], summary['median_ratio']
  parts = [
    'Memorisation suspected.'
    if summary['memorisation_suspected']
    else 'No sign of memorisation.',
    f'{100 * share:.1f}% of {s["count"]} samples are closer to their nearest '
    f'training image than 99% of {t["count"]} training images are to their '
    f'nearest other one (distance < {summary["threshold_p01"]:.4g}); about 1% '
    f'is expected for novel images, over {100 * summary["suspicious_share"]:.1f}% '
    'is suspicious.',
  ]
  if summary['num_exact_copies']:
    parts.append(
      f'{summary["num_exact_copies"]} samples are exact copies of training images.'
    )
  parts.append(
    f'Median nearest-neighbour distance: {s["p50"]:.4g} for samples, '
    f'{t["p50"]:.4g} within the training set ({ratio:.2f}x).'
  )
  if ratio < 0.8:
    parts.append(
      'Samples sit closer to the training set than training images sit to each other.'
    )
  elif ratio > 1.5:
    parts.append(
      'Samples are much farther from the training set than training images '
      'are from each other: not copies, but possibly off the data distribution.'
    )
  return ' '.join(parts)


# ----------------------------------------------------------------------------
# The whole check.


def _pixels(images: np.ndarray) -> np.ndarray:
  """uint8 [N, H, W, C] -> float32 [N, H*W*C] on [-1, 1] (as training sees them)."""
  return images.reshape(len(images), -1).astype(np.float32) / 127.5 - 1.0


_SPACES = {
  'pixels': 'pixel space (pixels on [-1, 1])',
  'dfeatures': 'discriminator-feature space',
}


def memorization_report(
  samples_uint8: Any,
  train_uint8: Any,
  *,
  out_dir: str,
  sample_features: Any = None,
  train_features: Any = None,
  k: int = 5,
  num_train_pairs: int = 1000,
  num_rows: int = 8,
  prefix: str = 'memorization',
  seed: int = 0,
  batch_size: int = 1024,
) -> dict[str, Any]:
  """Nearest-neighbour memorisation check in pixel and (optionally) feature space.

  Args:
    samples_uint8: [N, H, W, C] uint8 generated images.
    train_uint8: [M, H, W, C] uint8 training images (M >= 2).
    out_dir: where the PNGs go (created).
    sample_features, train_features: [N, F] and [M, F] features of the same
      images (e.g. the discriminator's), row for row; both or neither.
    k: training neighbours per sample (shown in the grids).
    num_train_pairs: training images (a random subset, at most M) whose
      distance to their nearest other training image is the reference.
    num_rows: rows of each grid: the first half are the samples nearest to
      the training set, the rest random samples.
    prefix: file names are `<prefix>_neighbours_<space>.png` and
      `<prefix>_distances_<space>.png`, space `pixels` or `dfeatures`.
    seed: picks the training subset and the random rows.
    batch_size: queries per device call of `nearest_neighbours`.

  Returns:
    A JSON-serialisable dict: the settings and, per space (`pixels`,
    `dfeatures` when features are given), the `distance_summary` plus
    `neighbours_png`, `distances_png` and `nearest` (the closest samples:
    sample index, training index, distance).
  """
  samples = figures.check_images('samples_uint8', samples_uint8)
  train = figures.check_images('train_uint8', train_uint8)
  if samples.shape[1:] != train.shape[1:]:
    raise ValueError(
      f'samples are {samples.shape[1:]} but training images are '
      f'{train.shape[1:]}: generate at the training resolution.'
    )
  if (sample_features is None) != (train_features is None):
    raise ValueError('Pass both sample_features and train_features, or neither.')
  if len(train) < 2:
    raise ValueError(
      'At least 2 training images are needed for train-to-train distances.'
    )
  if int(num_train_pairs) != num_train_pairs or num_train_pairs < 1:
    raise ValueError(
      f'num_train_pairs must be a positive integer, got {num_train_pairs!r}.'
    )
  if int(num_rows) != num_rows or num_rows < 1:
    raise ValueError(f'num_rows must be a positive integer, got {num_rows!r}.')
  spaces = {'pixels': (_pixels(samples), _pixels(train))}
  if sample_features is not None:
    sf = _as_vectors('sample_features', sample_features)
    tf = _as_vectors('train_features', train_features)
    if len(sf) != len(samples) or len(tf) != len(train):
      raise ValueError(
        f'sample_features has {len(sf)} rows and train_features {len(tf)}, '
        f'but there are {len(samples)} samples and {len(train)} training '
        'images: one feature row per image.'
      )
    spaces['dfeatures'] = (sf, tf)

  rng = np.random.default_rng(seed)
  num_pairs = min(int(num_train_pairs), len(train))
  subset = np.sort(rng.choice(len(train), size=num_pairs, replace=False))
  random_order = rng.permutation(len(samples))
  report: dict[str, Any] = {
    'num_samples': len(samples),
    'num_train': len(train),
    'num_train_pairs': num_pairs,
    'k': int(k),
    'seed': int(seed),
  }
  os.makedirs(out_dir, exist_ok=True)
  for space, (sample_x, train_x) in spaces.items():
    report[space] = _report_space(
      space, samples, train, sample_x, train_x, subset, random_order,
      k=k, num_rows=int(num_rows), out_dir=out_dir, prefix=prefix, batch_size=batch_size,
    )  # fmt: skip
  return report


def _report_space(
  space: str,
  samples: np.ndarray,
  train: np.ndarray,
  sample_x: np.ndarray,
  train_x: np.ndarray,
  subset: np.ndarray,
  random_order: np.ndarray,
  *,
  k: int,
  num_rows: int,
  out_dir: str,
  prefix: str,
  batch_size: int,
) -> dict[str, Any]:
  """`memorization_report` for one space: distances, summary, the two PNGs."""
  distances, indices = nearest_neighbours(sample_x, train_x, k, batch_size=batch_size)
  train_d, _ = nearest_neighbours(
    train_x[subset],
    train_x,
    1,
    exclude_self=True,
    self_indices=subset,
    batch_size=batch_size,
  )
  summary = distance_summary(distances, train_d)
  closest = np.argsort(distances[:, 0], kind='stable')
  num_close = min(len(samples), max(1, num_rows // 2))
  shown = set(closest[:num_close].tolist())
  others = [int(i) for i in random_order if int(i) not in shown]
  rows = closest[:num_close].tolist() + others[: num_rows - num_close]
  name = _SPACES[space]
  title = (
    f'{name}: each row is a generated sample, then (right of the red bar) its '
    f'{k} nearest training images, nearest first; d = Euclidean distance. '
    f'Rows 1-{num_close}: the samples nearest to the training set'
    + (
      f'; rows {num_close + 1}-{len(rows)}: random samples.'
      if len(rows) > num_close
      else '.'
    )
  )
  grid = figures.neighbour_grid(
    samples, train, indices, distances, rows=rows, title=title,
    path=os.path.join(out_dir, f'{prefix}_neighbours_{space}.png'),
  )  # fmt: skip
  histogram = figures.distance_histogram(
    _nearest('sample_to_train', distances), _nearest('train_to_train', train_d),
    title=f'Nearest-neighbour distances, {name}',
    path=os.path.join(out_dir, f'{prefix}_distances_{space}.png'),
  )  # fmt: skip
  summary['neighbours_png'] = grid.path
  summary['distances_png'] = histogram
  summary['nearest'] = [
    {'sample': int(i), 'train': int(indices[i, 0]), 'distance': float(distances[i, 0])}
    for i in closest[:10]
  ]
  return summary
