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

Memory does not grow with the training set: the search streams over it,
`chunk_rows` training rows at a time (uint8 images, possibly memory-mapped,
become floats a chunk at a time; features can be made a chunk at a time,
`Rows`), keeping only a running top k per query. `report_bytes` estimates
the peak.

- `nearest_neighbours`: exact k-NN, float32 on device chunk by chunk, the
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
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from dcgan_jax.util import figures, files, progress

# Candidates kept per query on device: k + max(k, _MIN_MARGIN).
_MIN_MARGIN = 16
# Multiplies the float32 round-off bound of a squared distance (tests raise
# it to send every query through the float64 host path).
_F32_ERROR_SAFETY = 2.0
_F32_UNIT_ROUNDOFF = 2.0**-24
# Elements of the [queries, candidates, dim] float64 block re-measured at once.
_HOST_BLOCK_ELEMENTS = 1 << 18
# References held at once by a search (default): it streams over the rest.
CHUNK_ROWS = 4096
# References centred in float64 at once.
_CENTRE_BLOCK = 1024
# The index of "no neighbour" (sorts after every real one).
_NO_INDEX = np.iinfo(np.int64).max
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
# Exact k nearest neighbours, streamed over the references.


class Rows:
  """Vectors [num_rows, dim] made on demand, a chunk at a time.

  `get(indices)` returns the rows of sorted int64 indices as a 2-D array of
  real numbers. For references too large to hold as floats: the training
  images as pixels (`pixel_rows`), or a network's features of them, made
  chunk by chunk while the search streams over them.
  """

  def __init__(
    self,
    num_rows: int,
    dim: int,
    get: Callable[[np.ndarray], Any],
    *,
    name: str = 'references',
    checked: bool = False,
  ):
    if num_rows < 1 or dim < 1:
      raise ValueError(
        f'{name} must hold at least one vector of at least one value, got '
        f'{num_rows} rows of {dim}.'
      )
    self.num_rows, self.dim, self.name = int(num_rows), int(dim), name
    self._get = get
    self._checked = checked  # Rows already known to be finite.

  @classmethod
  def of_array(cls, name: str, x: Any) -> Rows:
    """The rows of an array [N, ...] (each flattened), checked once."""
    x = _as_vectors(name, x)
    return cls(len(x), x.shape[1], x.__getitem__, name=name, checked=True)

  def __len__(self) -> int:
    return self.num_rows

  def take(self, indices: Any) -> np.ndarray:
    """Rows `indices` as an array [len(indices), dim], checked finite."""
    indices = np.asarray(indices, np.int64)
    x = np.asarray(self._get(indices))
    if x.shape != (len(indices), self.dim) or not (
      np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)
    ):
      raise ValueError(
        f'{self.name}: expected real rows [{len(indices)}, {self.dim}], got '
        f'{x.dtype} {x.shape}.'
      )
    if not self._checked and np.issubdtype(x.dtype, np.floating):
      bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
      if bad.size:
        raise ValueError(
          f'{self.name} has non-finite values (NaN or inf), first in row '
          f'{indices[bad[0]]}: check the generator and feature outputs.'
        )
    return x


def pixel_rows(images_uint8: np.ndarray) -> Rows:
  """uint8 images [N, H, W, C] (e.g. memory-mapped) as `Rows` of pixels on
  [-1, 1], converted to floats only a chunk at a time."""
  images = figures.check_images('train_uint8', images_uint8)
  return Rows(
    len(images),
    math.prod(images.shape[1:]),
    lambda indices: _pixels(images[indices]),
    name='training pixels',
    checked=True,
  )


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


def _centre(references: Rows, chunk_rows: int) -> np.ndarray:
  """The float64 mean of at most `chunk_rows` references spread evenly over
  them (all of them when they fit): distances are taken about it in float32,
  where large norms would cost precision. Any centre gives exact results."""
  n = len(references)
  if n <= chunk_rows:
    rows = np.arange(n)
  else:
    rows = np.unique(np.linspace(0, n - 1, chunk_rows).round().astype(np.int64))
  return _rows64(references.take(rows), slice(None)).mean(axis=0)


def _self_indices(
  queries: np.ndarray,
  references: Rows,
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
      or (ids.size and (ids.min() < -1 or ids.max() >= num_refs))
    ):
      raise ValueError(
        f'self_indices must be {num_queries} integers in [-1, {num_refs}), one '
        f'reference index per query (-1: none); got shape {ids.shape}, dtype '
        f'{ids.dtype}.'
      )
    ids = ids.astype(np.int64)
  own = np.flatnonzero(ids >= 0)
  for start in range(0, len(own), 1024):
    chunk = own[start : start + 1024]
    equal = np.all(queries[chunk] == references.take(ids[chunk]), axis=1)
    if not equal.all():
      i = int(chunk[np.flatnonzero(~equal)[0]])
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
  [blocks, br, d]; ref_sq [blocks, br], +inf on padding rows. Returns
  ascending squared distances and reference indices, each [bq, m].
  """
  num_queries, block = queries.shape[0], refs.shape[1]
  query_sq = jnp.sum(queries * queries, axis=1)
  per_block = min(num_candidates, block)

  def merge(carry, xs):
    best_d2, best_ids = carry
    block_refs, block_sq, offset = xs
    dots = jnp.matmul(queries, block_refs.T, precision=jax.lax.Precision.HIGHEST)
    d2 = jnp.maximum(query_sq[:, None] - 2.0 * dots + block_sq[None, :], 0.0)
    ids = offset + jnp.arange(block, dtype=jnp.int32)
    d2 = jnp.where(ids[None, :] == self_ids[:, None], jnp.inf, d2)
    neg_d2, pos = jax.lax.top_k(-d2, per_block)
    all_d2 = jnp.concatenate([best_d2, -neg_d2], axis=1)
    all_ids = jnp.concatenate([best_ids, ids[pos]], axis=1)
    neg_d2, pos = jax.lax.top_k(-all_d2, num_candidates)
    return (-neg_d2, jnp.take_along_axis(all_ids, pos, axis=1)), None

  init = (
    jnp.full((num_queries, num_candidates), jnp.inf, jnp.float32),
    jnp.full((num_queries, num_candidates), -1, jnp.int32),
  )
  offsets = jnp.arange(refs.shape[0], dtype=jnp.int32) * block
  (d2, ids), _ = jax.lax.scan(merge, init, (refs, ref_sq, offsets))
  return d2, ids


def _exact_d2(
  queries: np.ndarray, rows: np.ndarray, candidates: np.ndarray, skip: np.ndarray
) -> np.ndarray:
  """sum((q - r)^2) in float64 from each query to its candidate rows [n, m]
  of `rows`, +inf where `skip`; only the pairs not skipped are measured."""
  d2 = np.full(candidates.shape, np.inf)
  query, slot = np.nonzero(~skip)
  step = max(1, _HOST_BLOCK_ELEMENTS // queries.shape[1])
  for start in range(0, len(query), step):
    q, c = query[start : start + step], slot[start : start + step]
    diff = _rows64(rows, candidates[q, c]) - _rows64(queries, q)
    d2[q, c] = np.einsum('nd,nd->n', diff, diff)
  return d2


def _merge(
  best_d2: np.ndarray, best_ids: np.ndarray, d2: np.ndarray, ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
  """The k smallest of both sets per row; ties go to the lower index."""
  all_d2 = np.concatenate([best_d2, d2], axis=1)
  all_ids = np.concatenate([best_ids, ids], axis=1)
  order = np.lexsort((all_ids, all_d2), axis=-1)[:, :k]
  return np.take_along_axis(all_d2, order, axis=1), np.take_along_axis(
    all_ids, order, axis=1
  )


def _host_knn(
  queries64: np.ndarray,
  references: Rows,
  self_ids: np.ndarray,
  centre: np.ndarray,
  k: int,
  num_candidates: int,
  chunk_rows: int,
) -> tuple[np.ndarray, np.ndarray]:
  """k-NN in float64 on host, streamed: the slow path for uncertified
  queries. Per block of references, the `num_candidates` nearest by float64
  distances about the centre are re-measured exactly and merged."""
  centred = queries64 - centre
  query_sq = np.einsum('nd,nd->n', centred, centred)
  best_d2 = np.full((len(centred), k), np.inf)
  best_ids = np.full((len(centred), k), _NO_INDEX)
  count = progress.Progress(
    f'Exact search (host), {references.name}', len(references), unit='rows'
  )
  for start in range(0, len(references), chunk_rows):
    chunk = references.take(np.arange(start, min(start + chunk_rows, len(references))))
    for offset in range(0, len(chunk), _CENTRE_BLOCK):
      native = chunk[offset : offset + _CENTRE_BLOCK]
      block = np.asarray(native, np.float64) - centre
      d2 = query_sq[:, None] - 2.0 * centred @ block.T
      d2 += np.einsum('nd,nd->n', block, block)[None, :]
      ids = start + offset + np.arange(len(block))
      d2[ids[None, :] == self_ids[:, None]] = np.inf
      keep = min(num_candidates, len(block))
      pos = np.argpartition(d2, keep - 1, axis=1)[:, :keep]
      invalid = np.take_along_axis(d2, pos, axis=1) == np.inf  # Self.
      exact = _exact_d2(queries64, native, pos, invalid)
      best_d2, best_ids = _merge(
        best_d2, best_ids, exact, np.where(invalid, _NO_INDEX, ids[pos]), k
      )
    count.update(len(chunk))
  count.close()
  return best_d2, best_ids


def nearest_neighbours(
  queries: Any,
  references: Any,
  k: int = 1,
  *,
  exclude_self: bool = False,
  self_indices: Any = None,
  batch_size: int = 1024,
  reference_batch_size: int = 4096,
  chunk_rows: int = CHUNK_ROWS,
) -> tuple[np.ndarray, np.ndarray]:
  """Exact Euclidean k nearest references of every query.

  Args:
    queries: [Nq, ...] numbers; each row is flattened to one vector.
    references: [Nr, ...] numbers of the same flattened size, or `Rows`
      (made a chunk at a time, e.g. `pixel_rows` of uint8 images).
    k: neighbours per query, at most Nr (Nr - 1 with exclude_self).
    exclude_self: skip one reference per query, the query itself: reference
      i for query i, or `self_indices[i]` (-1: none). The two must be
      equal (checked); for train-to-train distances.
    self_indices: [Nq] reference indices of the queries (with exclude_self).
    batch_size: queries per device call.
    reference_batch_size: references per device block; the device holds one
      [batch_size, reference_batch_size] block of distances at a time.
    chunk_rows: references held at once, on host and on device: the search
      streams over them, so memory does not grow with Nr.

  Returns:
    distances: float64 [Nq, k], ascending per row.
    indices: int64 [Nq, k] into references; ties go to the lower index.

  Squared distances ||q||^2 - 2 q.r + ||r||^2 (about a centre, the mean of
  up to chunk_rows references) are computed in float32 on the default
  device and only pick candidates, k + max(k, 16) per query in each chunk,
  re-measured as sum((q - r)^2) in float64 on host and merged into a running
  top k. A query is certified when its k-th exact distance lies below the
  smallest float32 distance left out in any chunk, minus a bound on float32
  round-off; the rest (rare: near-ties among many references) are redone in
  float64 on host, in one more pass over the references.
  """
  q = _as_vectors('queries', queries)
  r = (
    references
    if isinstance(references, Rows)
    else Rows.of_array('references', references)
  )
  if q.shape[1] != r.dim:
    raise ValueError(
      f'queries have {q.shape[1]} values per row but references have '
      f'{r.dim}: both must come from the same images or feature layer.'
    )
  for name, value in (
    ('batch_size', batch_size),
    ('reference_batch_size', reference_batch_size),
    ('chunk_rows', chunk_rows),
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
  centre = _centre(r, int(chunk_rows))
  distances2, indices, redo = _device_knn(
    q, r, self_ids, centre, k, num_candidates,
    batch_size=int(batch_size), block_rows=int(reference_batch_size),
    chunk_rows=int(chunk_rows),
  )  # fmt: skip
  if redo.size:
    logging.info(
      'nearest_neighbours: %d of %d queries have near-ties below float32 '
      'resolution; recomputing them in float64 on host.',
      redo.size,
      len(q),
    )
    distances2[redo], indices[redo] = _host_knn(
      _rows64(q, redo), r, self_ids[redo], centre, k, num_candidates, int(chunk_rows)
    )
  return np.sqrt(distances2), indices


def _chunking(num_refs: int, block_rows: int, chunk_rows: int) -> tuple[int, int]:
  """(device block rows, chunk rows): a chunk is a whole number of blocks,
  at most chunk_rows unless one chunk holds every reference."""
  block = min(block_rows, chunk_rows, num_refs)
  if num_refs <= chunk_rows:
    return block, block * -(-num_refs // block)
  return block, block * max(1, chunk_rows // block)


def _device_knn(
  q: np.ndarray,
  r: Rows,
  self_ids: np.ndarray,
  centre: np.ndarray,
  k: int,
  num_candidates: int,
  *,
  batch_size: int,
  block_rows: int,
  chunk_rows: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Float32 candidates on device, re-measured in float64 on host, one
  chunk of references at a time.

  Returns the squared distances [Nq, k], indices [Nq, k] and the queries
  whose result is not certified (to be redone on host).
  """
  block, chunk = _chunking(len(r), block_rows, chunk_rows)
  batch = min(batch_size, len(q))
  batches = [slice(s, min(s + batch, len(q))) for s in range(0, len(q), batch)]
  query_norm = np.empty(len(q))
  device_queries = []
  for rows in batches:  # Centred float32 on device, once.
    centred = _rows64(q, rows) - centre
    query_norm[rows] = np.linalg.norm(centred, axis=1)
    padded = np.zeros((batch, q.shape[1]), np.float32)
    padded[: len(centred)] = centred
    device_queries.append(jnp.asarray(padded))
  top = _RunningTopK(q, self_ids, k, num_candidates)
  bound_scale = _F32_ERROR_SAFETY * (q.shape[1] + 8) * _F32_UNIT_ROUNDOFF
  count = progress.Progress(f'Nearest neighbours, {r.name}', len(r), unit='rows')
  for start in range(0, len(r), chunk):
    native = r.take(np.arange(start, min(start + chunk, len(r))))
    refs, ref_sq, max_ref_norm = _device_references(native, centre, chunk, block)
    results = []
    for rows, device_q in zip(batches, device_queries, strict=True):
      local = np.full(batch, -1, np.int32)
      ids = self_ids[rows] - start
      local[: len(ids)] = np.where((ids >= 0) & (ids < len(native)), ids, -1)
      results.append(  # Dispatched for every batch before any is read back.
        _candidates(
          device_q, jnp.asarray(local), refs, ref_sq, num_candidates=num_candidates
        )
      )
    for rows, result in zip(batches, results, strict=True):
      d2_f32, cand = (np.asarray(a) for a in jax.device_get(result))
      bound = bound_scale * (query_norm[rows] + max_ref_norm) ** 2
      top.add(rows, native, start, d2_f32, cand, bound)
    count.update(len(native))
  count.close()
  certified = np.isfinite(top.d2[:, -1]) & (top.d2[:, -1] < top.threshold)
  return top.d2, top.ids, np.flatnonzero(~certified)


class _RunningTopK:
  """The exact k nearest references found so far per query, and per query
  the float64 distance below which a reference not re-measured may lie
  (`threshold`): the k found are the true ones where the k-th is below it."""

  def __init__(self, q: np.ndarray, self_ids: np.ndarray, k: int, num_candidates: int):
    self.q, self.self_ids, self.k, self.m = q, self_ids, k, num_candidates
    self.d2 = np.full((len(q), k), np.inf)
    self.ids = np.full((len(q), k), _NO_INDEX)
    self.threshold = np.full(len(q), np.inf)

  def add(
    self,
    rows: slice,
    native: np.ndarray,
    start: int,
    d2_f32: np.ndarray,
    cand: np.ndarray,
    bound: np.ndarray,
  ) -> None:
    """Merges a chunk's float32 candidates [>= n, m] (local indices into
    `native`, the chunk's rows from `start`) for queries `rows`; `bound`
    [n] bounds the float32 round-off of their squared distances."""
    n = rows.stop - rows.start
    d2_f32, cand = d2_f32[:n], cand[:n].astype(np.int64)
    own = self.self_ids[rows, None] - start
    invalid = (cand < 0) | (cand >= len(native)) | (cand == own)
    # A reference's exact d2 is at least its float32 d2 minus the bound:
    # candidates above the k-th exact d2 so far cannot enter the top k, and
    # neither can the references left out, whose float32 d2 is at least the
    # last candidate's.
    lower = d2_f32.astype(np.float64) - bound[:, None]
    skip = invalid | (lower > self.d2[rows, -1:])
    exact = _exact_d2(self.q[rows], native, cand, skip)
    self.d2[rows], self.ids[rows] = _merge(
      self.d2[rows], self.ids[rows], exact,
      np.where(skip, _NO_INDEX, start + cand), self.k,
    )  # fmt: skip
    has_self = (own[:, 0] >= 0) & (own[:, 0] < len(native))
    left_out = len(native) - has_self - self.m > 0
    last = np.where(np.isfinite(lower[:, -1]), lower[:, -1], -np.inf)
    self.threshold[rows] = np.minimum(
      self.threshold[rows], np.where(left_out, last, np.inf)
    )


def _device_references(
  references: np.ndarray, centre: np.ndarray, chunk: int, block: int
) -> tuple[jax.Array, jax.Array, float]:
  """Centred float32 references [chunk // block, block, d] on device (zero
  padding rows), their squared norms (+inf on padding rows) and the largest
  float64 centred norm."""
  host = np.zeros((chunk, references.shape[1]), np.float32)
  max_sq = 0.0
  for start in range(0, len(references), _CENTRE_BLOCK):
    rows = np.array(references[start : start + _CENTRE_BLOCK], np.float64)  # A copy.
    rows -= centre
    max_sq = max(max_sq, float(np.einsum('nd,nd->n', rows, rows).max()))
    host[start : start + len(rows)] = rows
  refs = jnp.asarray(host).reshape(chunk // block, block, -1)
  del host
  valid = np.arange(chunk).reshape(chunk // block, block) < len(references)
  ref_sq = jnp.where(jnp.asarray(valid), jnp.sum(refs * refs, axis=2), jnp.inf)
  return refs, ref_sq, math.sqrt(max_sq)


def search_bytes(
  num_queries: int,
  dim: int,
  *,
  chunk_rows: int = CHUNK_ROWS,
  chunk_value_bytes: int = 4,
  batch_size: int = 1024,
  reference_batch_size: int = 4096,
) -> int:
  """Bytes `nearest_neighbours` allocates (an estimate) for `num_queries`
  queries of `dim` values, references streamed `chunk_rows` at a time, each
  value of a chunk taking `chunk_value_bytes` as made (pixels: 1 uint8 + 4
  float32; float32 features: 4): the centred queries on device, a batch of
  them in float64, the chunk as made, centred on host and on device (and
  its squares, for the norms), the float64 block being centred, the
  batches' distances and re-measured candidates."""
  batch = min(batch_size, num_queries)
  block = min(reference_batch_size, chunk_rows)
  return (
    num_queries * dim * 4
    + 2 * batch * dim * 8
    + chunk_rows * dim * (chunk_value_bytes + 4 + 4 + 4)
    + _CENTRE_BLOCK * dim * 8
    + -(-num_queries // batch) * batch * block * 4 * 3
    + 4 * _HOST_BLOCK_ELEMENTS * 8
  )


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
  x = images.reshape(len(images), -1).astype(np.float32)
  x /= np.float32(127.5)
  x -= np.float32(1.0)
  return x


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
  chunk_rows: int = CHUNK_ROWS,
) -> dict[str, Any]:
  """Nearest-neighbour memorisation check in pixel and (optionally) feature space.

  Args:
    samples_uint8: [N, H, W, C] uint8 generated images.
    train_uint8: [M, H, W, C] uint8 training images (M >= 2), possibly
      memory-mapped: they are converted to floats `chunk_rows` at a time.
    out_dir: where the PNGs go (a local directory or a URL).
    sample_features, train_features: [N, F] and [M, F] features of the same
      images (e.g. the discriminator's), row for row; both or neither.
      train_features may be `Rows`, made a chunk at a time.
    k: training neighbours per sample (shown in the grids).
    num_train_pairs: training images (a random subset, at most M) whose
      distance to their nearest other training image is the reference.
    num_rows: rows of each grid: the first half are the samples nearest to
      the training set, the rest random samples.
    prefix: file names are `<prefix>_neighbours_<space>.png` and
      `<prefix>_distances_<space>.png`, space `pixels` or `dfeatures`.
    seed: picks the training subset and the random rows.
    batch_size: queries per device call of `nearest_neighbours`.
    chunk_rows: training rows held at once (see `report_bytes`).

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
  spaces = {'pixels': (_pixels(samples), pixel_rows(train))}
  if sample_features is not None:
    sf = _as_vectors('sample_features', sample_features)
    tf = (
      train_features
      if isinstance(train_features, Rows)
      else Rows.of_array('train_features', train_features)
    )
    if len(sf) != len(samples) or len(tf) != len(train) or sf.shape[1] != tf.dim:
      raise ValueError(
        f'sample_features has {len(sf)} rows of {sf.shape[1]} and '
        f'train_features {len(tf)} of {tf.dim}, but there are {len(samples)} '
        f'samples and {len(train)} training images: one feature row per image.'
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
  search = dict(batch_size=batch_size, chunk_rows=chunk_rows)
  for space, (sample_x, train_x) in spaces.items():
    with progress.timed(f'Memorisation search in {space}'):
      distances, indices, train_d = _search(sample_x, train_x, subset, int(k), search)
    report[space] = _report_space(
      space, samples, train, distances, indices, train_d, random_order,
      k=k, num_rows=int(num_rows), out_dir=out_dir, prefix=prefix,
    )  # fmt: skip
  return report


def _search(
  sample_x: np.ndarray, train_x: Rows, subset: np.ndarray, k: int, search: dict
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(distances, indices) of the samples' k nearest training rows, and the
  distance of each training row in `subset` to its nearest other one: one
  pass over the training rows for both (two when k leaves no other row)."""
  train_q = train_x.take(subset)
  if k > len(train_x) - 1:
    distances, indices = nearest_neighbours(sample_x, train_x, k, **search)
    train_d, _ = nearest_neighbours(
      train_q, train_x, 1, exclude_self=True, self_indices=subset, **search
    )
    return distances, indices, train_d
  queries = np.concatenate([sample_x, train_q])
  own = np.concatenate([np.full(len(sample_x), -1), subset])
  distances, indices = nearest_neighbours(
    queries, train_x, k, exclude_self=True, self_indices=own, **search
  )
  n = len(sample_x)
  return distances[:n], indices[:n], distances[n:, :1]


def report_bytes(
  num_samples: int,
  image_shape: tuple[int, ...],
  *,
  num_train: int,
  num_features: int | None = None,
  feature_workspace: int = 0,
  num_train_pairs: int = 1000,
  chunk_rows: int = CHUNK_ROWS,
) -> int:
  """Bytes `memorization_report` allocates at its peak (an estimate),
  whatever the number of training images: the samples as float pixels and
  features, then per space the queries (samples and train pairs) and the
  search (`search_bytes`) over training rows made `chunk_rows` at a time
  (features: plus `feature_workspace`, what making a chunk of them takes)."""
  dim = math.prod(image_shape)
  queries = num_samples + min(num_train_pairs, num_train)
  kept = num_samples * dim * 4 + num_samples * (num_features or 0) * 4
  pixels = queries * dim * 4 + search_bytes(
    queries, dim, chunk_rows=chunk_rows, chunk_value_bytes=5
  )
  peak = pixels
  if num_features:
    peak = max(
      pixels,
      queries * num_features * 4
      + search_bytes(queries, num_features, chunk_rows=chunk_rows)
      + feature_workspace,
    )
  return kept + peak


def _report_space(
  space: str,
  samples: np.ndarray,
  train: np.ndarray,
  distances: np.ndarray,
  indices: np.ndarray,
  train_d: np.ndarray,
  random_order: np.ndarray,
  *,
  k: int,
  num_rows: int,
  out_dir: str,
  prefix: str,
) -> dict[str, Any]:
  """`memorization_report` for one space: summary and the two PNGs."""
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
    path=files.join(out_dir, f'{prefix}_neighbours_{space}.png'),
  )  # fmt: skip
  histogram = figures.distance_histogram(
    _nearest('sample_to_train', distances), _nearest('train_to_train', train_d),
    title=f'Nearest-neighbour distances, {name}',
    path=files.join(out_dir, f'{prefix}_distances_{space}.png'),
  )  # fmt: skip
  summary['neighbours_png'] = grid.path
  summary['distances_png'] = histogram
  summary['nearest'] = [
    {'sample': int(i), 'train': int(indices[i, 0]), 'distance': float(distances[i, 0])}
    for i in closest[:10]
  ]
  return summary
