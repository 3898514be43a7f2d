"""The one file layer: local paths and `gs://` URLs alike, writes atomic.

Every file the project reads or writes (config, manifest, reports, caches,
figures, TensorBoard events, data sets) goes through this module, so a
`gs://` workdir is a URL here and nowhere else: no local path is ever
derived from one. Orbax writes checkpoint arrays through tensorstore and
its directories through `etils.epath`, which this module also uses.

URLs are served by `etils.epath` on its fsspec backend (gcsfs for `gs://`),
chosen over TensorFlow's gfile because the same client code runs against
the Cloud Storage API everywhere: on a TPU VM with the VM's default
credentials, and in the tests against a local emulator (gcsfs honours
`STORAGE_EMULATOR_HOST`, tensorstore `TENSORSTORE_GCS_HTTP_URL`). Listings
are not cached: other hosts and tensorstore write to the same bucket.

Writes are atomic: a reader never sees a half-written file. Locally the
bytes go to a temporary file beside the target, renamed onto it when
complete; a Cloud Storage object appears only once its upload completes,
so there it is written in place. A crash or a kill leaves the old file or
the new one, never a mixture.

Conditional writes (`create_new`, `replace_if`, `take_over`, `remove_if`)
change a small file only if it is as the caller last read it
(`read_versioned`), for a lock (core/run_lock.py). In Cloud Storage the
server enforces the condition (a generation precondition, through the
google-cloud-storage client, as gcsfs has none for replacing or deleting
one generation); locally a hard link creates a file that is not there yet,
and a rename moves a given file aside for one caller only.
"""

import builtins
import contextlib
import functools
import json
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from typing import IO, Any

# Before etils first looks: URLs go through fsspec (see above), even with
# TensorFlow installed.
os.environ.setdefault('EPATH_USE_TF', 'false')

import fsspec  # noqa: E402
import fsspec.core  # noqa: E402
from etils import epath  # noqa: E402
from google.api_core import exceptions as gcs_errors  # noqa: E402
from google.auth import exceptions as auth_errors  # noqa: E402
from google.cloud import storage  # noqa: E402

fsspec.config.conf.setdefault('gcs', {}).setdefault('use_listings_cache', False)

# URL schemes this layer serves.
SCHEMES = ('gs',)

_URL = re.compile(r'^([A-Za-z][A-Za-z0-9+.-]*)://')

PathLike = str | os.PathLike


def is_url(path: PathLike) -> bool:
  """Whether `path` is a URL (`scheme://...`) rather than a local path."""
  return bool(_URL.match(os.fspath(path)))


def check(path: PathLike, what: str = 'path') -> str:
  """`path` as a string; a URL of a scheme not served is a ValueError."""
  path = os.fspath(path)
  if m := _URL.match(path):
    if m.group(1) not in SCHEMES:
      served = ', '.join(f'{s}://' for s in SCHEMES)
      raise ValueError(
        f'{what} {path!r}: {m.group(1)}:// is not supported; use a local path '
        f'or a {served} URL.'
      )
  return path


def absolute(path: PathLike, what: str = 'path') -> str:
  """An absolute local path (`~` expanded), or the URL unchanged."""
  path = check(path, what)
  return path if is_url(path) else os.path.abspath(os.path.expanduser(path))


def local(path: PathLike, what: str, why: str) -> str:
  """`path` as an absolute local path; a URL is a ValueError saying `why`."""
  path = check(path, what)
  if is_url(path):
    raise ValueError(f'{what} {path!r} must be a local directory: {why}.')
  return os.path.abspath(os.path.expanduser(path))


def join(path: PathLike, *parts: str) -> str:
  """`os.path.join` for local paths and URLs."""
  return os.path.join(os.fspath(path), *parts)


def as_path(path: PathLike) -> epath.Path:
  """`path` as an `etils.epath.Path` (local or URL)."""
  return epath.Path(check(path))


def exists(path: PathLike) -> bool:
  return as_path(path).exists()


def isdir(path: PathLike) -> bool:
  return as_path(path).is_dir()


def isfile(path: PathLike) -> bool:
  return as_path(path).is_file()


def makedirs(path: PathLike) -> None:
  """Creates a directory and its parents (a no-op for Cloud Storage
  prefixes, which exist once an object is under them)."""
  as_path(path).mkdir(parents=True, exist_ok=True)


def listdir(path: PathLike) -> list[str]:
  """Names (not paths) of the entries of a directory, sorted."""
  return sorted(p.name for p in as_path(path).iterdir())


def walk_files(path: PathLike) -> list[str]:
  """Paths, relative to `path` and sorted, of every file below it."""
  return [name for name, _ in walk_file_sizes(path)]


def walk_file_sizes(path: PathLike) -> list[tuple[str, int]]:
  """(path relative to `path`, size in bytes) of every file below it,
  sorted by path. Symbolic links to directories are not followed; a link
  to no file has size -1. A URL takes one recursive listing (a request per
  1,000 objects), not a request per file."""
  path = check(path)
  if is_url(path):
    fs, root = fsspec.core.url_to_fs(path)
    root = root.rstrip('/')
    found = [
      (name[len(root) + 1 :], int(info['size']))
      for name, info in fs.find(root, detail=True).items()
      if info.get('type') == 'file' and not name.endswith('/')
    ]
    return sorted(found)
  found = []
  for directory, _, names in os.walk(path):
    for name in names:
      file = os.path.join(directory, name)
      try:
        size = os.path.getsize(file)
      except OSError:  # A dangling link: left to the reader to report.
        size = -1
      found.append((os.path.relpath(file, path), size))
  return sorted(found)


def size(path: PathLike) -> int:
  return as_path(path).stat().length


def open(path: PathLike, mode: str = 'rb') -> IO:  # noqa: A001
  """Opens a local file or a URL (`rb`, `r`, `wb`, `w`)."""
  return as_path(path).open(mode)


def read_bytes(path: PathLike) -> bytes:
  return as_path(path).read_bytes()


def read_text(path: PathLike) -> str:
  return as_path(path).read_text()


def read_json(path: PathLike) -> Any:
  return json.loads(read_text(path))


def remove(path: PathLike) -> None:
  as_path(path).unlink()


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = 'wb') -> Iterator[IO]:
  """Opens `path` for writing so that it appears only if the block ends
  without an exception. Creates the parent directory.

  Locally: a temporary file beside `path`, renamed onto it at the end and
  removed on an exception. A URL: a local temporary file, uploaded at the
  end in one request (the object appears when the upload completes; on an
  exception nothing is uploaded and the old object, if any, stays).
  """
  path = check(path)
  if is_url(path):
    with tempfile.TemporaryDirectory(prefix='dcgan_jax-upload-') as directory:
      tmp = os.path.join(directory, os.path.basename(path) or 'object')
      with builtins.open(tmp, mode) as f:
        yield f
      fs, remote = fsspec.core.url_to_fs(path)
      fs.put_file(tmp, remote)
    return
  directory = os.path.dirname(path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  tmp = f'{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}'
  try:
    with builtins.open(tmp, mode) as f:
      yield f
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_atomic(path: PathLike, data: bytes | str) -> str:
  """Writes `data` to `path` atomically; returns `path`."""
  with atomic_write(path, 'w' if isinstance(data, str) else 'wb') as f:
    f.write(data)
  return os.fspath(path)


def write_json(path: PathLike, value: Any, **dump_kwargs: Any) -> str:
  """Writes `value` as indented JSON to `path` atomically; returns `path`."""
  return write_atomic(path, json.dumps(value, indent=2, **dump_kwargs))


# --------------------------------------------------------------------------
# Conditional writes: a version is the file's generation in Cloud Storage,
# its bytes locally (so no writer may write the same bytes twice: a lock
# holds a unique id).

Version = bytes | int


def read_versioned(path: PathLike) -> tuple[bytes, Version] | None:
  """(contents, version) of a small file, or None where there is none."""
  path = check(path)
  if is_url(path):
    blob = _blob(path)
    with _gcs_as_os_errors(path):
      blob = blob.bucket.get_blob(blob.name)
      if blob is None:
        return None
      try:
        data = blob.download_as_bytes(if_generation_match=blob.generation)
      except (gcs_errors.PreconditionFailed, gcs_errors.NotFound):
        return read_versioned(path)  # Replaced or removed since: read again.
      return data, blob.generation
  try:
    with builtins.open(path, 'rb') as f:
      data = f.read()
  except FileNotFoundError:
    return None
  return data, data


def create_new(path: PathLike, data: bytes) -> Version:
  """Writes `data` to `path` unless a file is there (FileExistsError). Of
  concurrent creators exactly one succeeds; readers see all of `data` or no
  file. Creates the parent directory."""
  path = check(path)
  if is_url(path):
    blob = _blob(path)
    with _gcs_as_os_errors(path):
      try:
        blob.upload_from_string(data, if_generation_match=0)
      except gcs_errors.PreconditionFailed as e:
        raise FileExistsError(f'{path} exists') from e
    return blob.generation
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = f'{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}'
  try:
    with builtins.open(tmp, 'wb') as f:
      f.write(data)
    try:
      os.link(tmp, path)  # Fails if `path` exists, whoever made it.
    except FileExistsError:
      raise
    except OSError:  # No hard links (some FUSE file systems): O_EXCL.
      with builtins.open(path, 'xb') as f:
        f.write(data)
  finally:
    os.remove(tmp)
  return data


def replace_if(path: PathLike, data: bytes, version: Version) -> Version | None:
  """Replaces `path` with `data` if it is still at `version`; the new
  version, or None where it changed or is gone. For the file's owner:
  locally the check and the rename are two steps (others use `take_over`)."""
  path = check(path)
  if is_url(path):
    blob = _blob(path)
    with _gcs_as_os_errors(path):
      try:
        blob.upload_from_string(data, if_generation_match=version)
      except (gcs_errors.PreconditionFailed, gcs_errors.NotFound):
        return None
    return blob.generation
  found = read_versioned(path)
  if found is None or found[1] != version:
    return None
  write_atomic(path, data)
  return data


def take_over(path: PathLike, data: bytes, version: Version) -> Version | None:
  """Replaces the file at `version` with `data`; the new version, or None
  where it changed or is gone. Of concurrent takers of one version at most
  one succeeds: locally the file is renamed aside (a given file moves once),
  checked and removed, and `data` created; a newer file moved aside by
  mistake is put back."""
  path = check(path)
  if is_url(path):
    return replace_if(path, data, version)
  aside = f'{path}.aside-{os.getpid()}-{uuid.uuid4().hex[:8]}'
  try:
    os.rename(path, aside)
  except FileNotFoundError:
    return None
  try:
    with builtins.open(aside, 'rb') as f:
      if f.read() != version:
        with contextlib.suppress(FileExistsError):
          os.link(aside, path)
        return None
  finally:
    os.remove(aside)
  try:
    return create_new(path, data)
  except FileExistsError:
    return None


def remove_if(path: PathLike, version: Version) -> bool:
  """Removes `path` if it is at `version`; whether it did. (The emulator of
  the tests ignores a precondition on deletes: the generation is compared
  first, and Cloud Storage enforces it too.)"""
  path = check(path)
  found = read_versioned(path)
  if found is None or found[1] != version:
    return False
  if is_url(path):
    with _gcs_as_os_errors(path):
      try:
        _blob(path).delete(if_generation_match=version)
      except (gcs_errors.PreconditionFailed, gcs_errors.NotFound):
        return False
    return True
  os.remove(path)
  return True


def _blob(url: str) -> storage.Blob:
  bucket, _, name = url.removeprefix('gs://').partition('/')
  return _gcs_client(os.environ.get('STORAGE_EMULATOR_HOST')).bucket(bucket).blob(name)


@functools.cache
def _gcs_client(emulator: str | None) -> storage.Client:
  """A client with the default credentials, or of the server at
  STORAGE_EMULATOR_HOST (`emulator`, the cache key); no project is needed."""
  del emulator  # The client reads it.
  return storage.Client(project=None)


@contextlib.contextmanager
def _gcs_as_os_errors(url: str) -> Iterator[None]:
  """Cloud Storage errors (no bucket, no permission, no credentials) as
  OSError, as gcsfs raises them."""
  try:
    yield
  except (gcs_errors.GoogleAPIError, auth_errors.GoogleAuthError) as e:
    raise OSError(f'{url}: {" ".join(str(e).split())[:300]}') from e
