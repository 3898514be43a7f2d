"""Functions of image batches, spread over every local device."""

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from dcgan_jax.data import input_pipeline


def batched_apply(
  fn: Callable[[Any, jax.Array], Any],
  variables: Any,
  images: np.ndarray,
  batch_size: int,
) -> Any:
  """fn(variables, x) over uint8 images, x on [-1, 1] floats.

  Fixed-size batches (the last one padded; batch_size rounded up to a
  multiple of the local devices) are split across all local devices, the
  variables replicated on them; the outputs' rows are concatenated on host,
  padding dropped.
  """
  devices = jax.local_devices()
  mesh = jax.sharding.Mesh(np.array(devices), ('batch',))
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('batch'))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  batch_size = -(-batch_size // len(devices)) * len(devices)
  variables = jax.device_put(variables, replicated)
  outputs = []
  for start in range(0, len(images), batch_size):
    batch = input_pipeline.scale_images(images[start : start + batch_size])
    n = len(batch)
    if n < batch_size:
      batch = np.concatenate([batch, np.zeros((batch_size - n, *batch.shape[1:]))])
    x = jax.device_put(np.asarray(batch, np.float32), rows)
    out = jax.device_get(fn(variables, x))
    outputs.append(jax.tree.map(lambda x, n=n: np.asarray(x[:n]), out))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)
