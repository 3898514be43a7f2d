"""Peak-memory estimates of the evaluation metrics, checked before each runs.

Every metric streams over the training set (uint8, possibly memory-mapped)
in chunks, so what it allocates does not grow with the data set; it grows
with the number of samples, the image size and the chunk sizes. Before a
metric runs, the evaluator logs its estimated peak (one line, INFO, on this
module's logger; the report's details and summary repeat it) and compares
it with the memory available to this process: a metric that would not fit
stops with a one-line `MemoryLimitError` naming the metric and what to
change, instead of the process being killed by the kernel without a
message.

An estimate counts the arrays the metric allocates on host and (on CPU, the
same memory) on device, not the process's baseline (JAX, TensorFlow, the
compiled programs) nor the training images, which are already loaded.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from dcgan_jax.util.errors import ConfigError

GB = 1 << 30
# The estimate lines (INFO): training logs show them; a command shows them
# by handling this logger.
logger = logging.getLogger(__name__)


class MemoryLimitError(ConfigError):
  """A metric would not fit in the available memory; the message says what
  to change. A ConfigError (a ValueError), so a command, and launch.py for
  training's periodic evaluation, prints it as one line."""


def _read_int(path: str) -> int | None:
  try:
    with open(path) as f:
      text = f.read().strip()
  except OSError:
    return None
  return int(text) if text.isdigit() else None  # 'max': no limit.


def _cgroup_headroom() -> int | None:
  """Bytes left under this process's cgroup memory limit (v2 or v1), if any."""
  for limit_file, usage_file in (
    ('/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory.current'),
    (
      '/sys/fs/cgroup/memory/memory.limit_in_bytes',
      '/sys/fs/cgroup/memory/memory.usage_in_bytes',
    ),
  ):
    limit, usage = _read_int(limit_file), _read_int(usage_file)
    if limit is not None and usage is not None and limit < (1 << 60):
      return max(0, limit - usage)
  return None


def available_bytes() -> tuple[int, str]:
  """(bytes this process can still allocate, where the figure comes from):
  MemAvailable of /proc/meminfo (else the physical memory), lowered to the
  headroom under a cgroup memory limit when there is one."""
  available, source = None, 'MemAvailable'
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          available = int(line.split()[1]) * 1024
  except OSError:
    pass
  if available is None:
    available = os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    source = 'physical memory'
  headroom = _cgroup_headroom()
  if headroom is not None and headroom < available:
    available, source = headroom, 'cgroup memory limit'
  return available, source


@dataclasses.dataclass(frozen=True)
class Estimate:
  """A metric's estimated peak: `bytes`, `what` it is made of (for the log
  line) and the `remedy` the error names."""

  metric: str
  bytes: int
  what: str
  remedy: str


def gigabytes(num_bytes: float) -> str:
  return f'{num_bytes / GB:.2f} GB'


def resolve_limit(memory_limit: int | None = None) -> tuple[int, str]:
  """(bytes a metric may use, where the figure comes from): `memory_limit`
  if given, else `available_bytes()`."""
  if memory_limit is None:
    return available_bytes()
  return int(memory_limit), 'memory_limit'


def check(estimate: Estimate, limit: tuple[int, str]) -> dict[str, Any]:
  """Logs the estimate (one line); MemoryLimitError if it exceeds `limit`
  (`resolve_limit`'s bytes and source). Returns the estimate and the limit
  for the report."""
  limit_bytes, source = limit
  logger.info(
    'Memory: metric %r needs about %s at its peak (%s); %s available (%s).',
    estimate.metric,
    gigabytes(estimate.bytes),
    estimate.what,
    gigabytes(limit_bytes),
    source,
  )
  if estimate.bytes > limit_bytes:
    raise MemoryLimitError(
      f'metric {estimate.metric!r} needs about {gigabytes(estimate.bytes)} at '
      f'its peak ({estimate.what}) but {gigabytes(limit_bytes)} is available '
      f'({source}): {estimate.remedy}.'
    )
  return {
    'estimated_peak_bytes': int(estimate.bytes),
    'available_bytes': int(limit_bytes),
    'available_source': source,
    'what': estimate.what,
  }
