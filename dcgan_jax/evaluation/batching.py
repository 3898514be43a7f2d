"""Functions of image batches, spread over every local device."""

from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from dcgan_jax.data import input_pipeline
from dcgan_jax.util import progress


def batched_outputs(
  fn: Callable[[Any, jax.Array], Any],
  variables: Any,
  images: np.ndarray,
  batch_size: int,
  indices: np.ndarray | None = None,
  what: str = 'Batched pass',
) -> Iterator[Any]:
  """fn(variables, x) over uint8 images, x on [-1, 1] floats, batch by batch:
  yields each batch's outputs (numpy, padding dropped), in order.

  Only one batch of images is converted to floats at a time, so `images`
  may be a memory-mapped data set of any size; `indices` (rows of `images`)
  restricts the pass to those rows. Fixed-size batches (the last one padded;
  batch_size rounded up to a multiple of the local devices) are split
  across all local devices, the variables replicated on them once.
  `what` names the pass in progress lines (util.progress) of a slow pass.
  """
  devices = jax.local_devices()
  mesh = jax.sharding.Mesh(np.array(devices), ('batch',))
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('batch'))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  batch_size = -(-batch_size // len(devices)) * len(devices)
  variables = jax.device_put(variables, replicated)
  num = len(images) if indices is None else len(indices)
  count = progress.Progress(what, num, unit='images')
  for start in range(0, num, batch_size):
    stop = min(start + batch_size, num)
    chosen = images[start:stop] if indices is None else images[indices[start:stop]]
    batch = input_pipeline.scale_images(chosen)
    n = len(batch)
    if n < batch_size:
      batch = np.concatenate([batch, np.zeros((batch_size - n, *batch.shape[1:]))])
    x = jax.device_put(np.asarray(batch, np.float32), rows)
    out = jax.device_get(fn(variables, x))
    yield jax.tree.map(lambda x, n=n: np.asarray(x[:n]), out)
    count.update(n)
  count.close()


def batched_apply(
  fn: Callable[[Any, jax.Array], Any],
  variables: Any,
  images: np.ndarray,
  batch_size: int,
  indices: np.ndarray | None = None,
  what: str = 'Batched pass',
) -> Any:
  """`batched_outputs` with the rows of every batch concatenated on host."""
  outputs = list(batched_outputs(fn, variables, images, batch_size, indices, what))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)
