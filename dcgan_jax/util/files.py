"""Atomic file writes: a reader never sees a half-written file.

Every file the project writes that another command or a resumed run reads
(config, manifest, reports, caches, figures) goes through `atomic_write`:
the bytes go to a temporary file beside the target, which is renamed onto
it once complete, so a crash or a kill leaves the old file or the new one,
never a mixture.
"""

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from typing import IO, Any


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = 'wb') -> Iterator[IO]:
  """Opens a temporary file beside `path`; renames it onto `path` when the
  block ends without an exception, removes it otherwise. Creates the parent
  directory."""
  path = os.fspath(path)
  directory = os.path.dirname(path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  tmp = f'{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}'
  try:
    with open(tmp, mode) as f:
      yield f
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> str:
  """Writes `data` to `path` atomically; returns `path`."""
  with atomic_write(path, 'w' if isinstance(data, str) else 'wb') as f:
    f.write(data)
  return os.fspath(path)


def write_json(path: str | os.PathLike, value: Any, **dump_kwargs: Any) -> str:
  """Writes `value` as indented JSON to `path` atomically; returns `path`."""
  return write_atomic(path, json.dumps(value, indent=2, **dump_kwargs))
