"""Reads PyTorch `.pth` state dicts into numpy arrays, without torch.

Two layouts of `torch.save` are understood:

- zip (PyTorch >= 1.6): `<dir>/data.pkl` is the pickled object; tensor data
  lives in `<dir>/data/<key>`, raw little-endian bytes unless
  `<dir>/byteorder` says 'big'.
- legacy (PyTorch < 1.6): five pickles in a row (magic number, protocol
  version, system info, the object, the list of storage keys), then each
  storage in that order as an int64 element count and its raw bytes.

In both, the object pickle refers to storages by persistent id and rebuilds
tensors with `torch._utils._rebuild_tensor_v2`. The unpickler here resolves
only those names, the storage types and `collections.OrderedDict`; any other
global (the way a hostile pickle runs code) is refused before it is looked up.
The older tar layout (PyTorch < 0.4) is not supported.

A hostile file cannot do more than be refused, with a one-line ValueError
naming the file and what is wrong:
- every object the pickle can reach (the allowed globals, storage types,
  storages, tensors) is made for this load alone and cannot be modified, so
  no load changes what another one reads;
- the file, the sum of the zip entries' declared sizes and the bytes read
  from them, and the tensors' total size are each at most `max_bytes`
  (MAX_BYTES by default), checked before anything of that size is
  allocated; a tensor may not hold more elements than its storage (a
  stride-0 tensor cannot expand a few bytes into terabytes).
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

from dcgan_jax.util import files

_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001
# The default cap on the file, on what is decompressed from it and on the
# tensors made from it: 40 times the FID Inception weights' 95 MB.
MAX_BYTES = 4 << 30

# `torch.<Name>Storage` -> element dtype (little-endian).
_STORAGE_DTYPES = {
  'DoubleStorage': np.dtype('<f8'),
  'FloatStorage': np.dtype('<f4'),
  'HalfStorage': np.dtype('<f2'),
  'BFloat16Storage': np.dtype(ml_dtypes.bfloat16),
  'LongStorage': np.dtype('<i8'),
  'IntStorage': np.dtype('<i4'),
  'ShortStorage': np.dtype('<i2'),
  'CharStorage': np.dtype('i1'),
  'ByteStorage': np.dtype('u1'),
  'BoolStorage': np.dtype('?'),
  'UntypedStorage': np.dtype('u1'),
}


class PthFormatError(ValueError):
  """The file is not a PyTorch state dict this reader understands."""


class _Sealed:
  """An object the pickle may reach but not modify (BUILD, SETITEM...)."""

  __slots__ = ()

  def _init(self, **values: Any) -> None:
    for name, value in values.items():
      object.__setattr__(self, name, value)

  def __setattr__(self, name: str, value: Any) -> None:
    raise PthFormatError(f'the pickle tries to set {name!r} of a {type(self).__name__}')

  def __delattr__(self, name: str) -> None:
    raise PthFormatError(
      f'the pickle tries to delete {name!r} of a {type(self).__name__}'
    )

  def __setstate__(self, state: Any) -> None:
    raise PthFormatError(
      f'the pickle tries to set the state of a {type(self).__name__}'
    )


class _Global(_Sealed):
  """An allowed global as the unpickler sees it: a callable, new each load."""

  __slots__ = ('_fn', '_name')

  def __init__(self, fn, name: str):
    self._init(_fn=fn, _name=name)

  def __call__(self, *args: Any) -> Any:
    return self._fn(*args)


class _StorageType(_Sealed):
  """Stands in for a `torch.*Storage` class: only its element dtype matters."""

  __slots__ = ('name', 'dtype')

  def __init__(self, name: str):
    self._init(name=name, dtype=_STORAGE_DTYPES[name])


def _count(value: Any, what: str) -> int:
  """`value` as a non-negative int (not bool, float or anything else)."""
  if type(value) is not int or value < 0:
    raise PthFormatError(f'{what} is {value!r}, not a non-negative integer')
  return value


class _Storage(_Sealed):
  """A flat typed buffer; legacy files fill `data` after the object pickle."""

  __slots__ = ('dtype', 'numel', 'data', 'root', 'offset')

  def __init__(self, dtype: np.dtype, numel: int, data: np.ndarray | None = None):
    self._init(dtype=dtype, numel=_count(numel, 'a storage size'), data=data)

  def fill(self, data: np.ndarray) -> None:
    object.__setattr__(self, 'data', data)

  def array(self) -> np.ndarray:
    if self.data is None:
      raise PthFormatError('a tensor refers to a storage the file never wrote')
    return self.data


class _StorageView(_Storage):
  """Part of another storage (legacy files only)."""

  __slots__ = ()

  def __init__(self, root: _Storage, offset: int, numel: int):
    super().__init__(root.dtype, numel)
    self._init(root=root, offset=_count(offset, 'a storage view offset'))

  def array(self) -> np.ndarray:
    data = self.root.array()[self.offset : self.offset + self.numel]
    if data.size != self.numel:
      raise PthFormatError('a storage view extends past its storage')
    return data


class _TensorRef(_Sealed):
  """A tensor to be cut out of its storage once all storages are read."""

  __slots__ = ('storage', 'offset', 'size', 'stride')

  def __init__(self, storage, offset, size, stride):
    if not isinstance(storage, _Storage):
      raise PthFormatError(f'tensor storage of type {type(storage).__name__}')
    if not isinstance(size, tuple | list) or not isinstance(stride, tuple | list):
      raise PthFormatError(f'tensor size {size!r} / stride {stride!r}: not tuples')
    size = tuple(_count(n, 'a tensor dimension') for n in size)
    stride = tuple(_count(n, 'a tensor stride') for n in stride)
    if len(size) != len(stride):
      raise PthFormatError(f'bad tensor size {size} / stride {stride}')
    numel = math.prod(size)
    if numel > storage.numel:  # Before anything is allocated.
      raise PthFormatError(
        f'tensor of size {size} has {numel:,} elements, more than its storage '
        f'of {storage.numel:,} (stride {stride})'
      )
    self._init(
      storage=storage,
      offset=_count(offset, 'a tensor offset'),
      size=size,
      stride=stride,
    )

  @property
  def nbytes(self) -> int:
    return math.prod(self.size) * self.storage.dtype.itemsize

  def materialize(self) -> np.ndarray:
    flat = self.storage.array()
    if any(s == 0 for s in self.size):
      return np.zeros(self.size, flat.dtype)
    last = self.offset + sum(
      (n - 1) * st for n, st in zip(self.size, self.stride, strict=True)
    )
    if last >= flat.size:
      raise PthFormatError(
        f'tensor of size {self.size} at offset {self.offset} reads past its '
        f'storage of {flat.size} elements'
      )
    strides = tuple(st * flat.itemsize for st in self.stride)
    view = np.lib.stride_tricks.as_strided(
      flat[self.offset :], self.size, strides, writeable=False
    )
    return np.array(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  """`torch._utils._rebuild_tensor` and `_rebuild_tensor_v2` (extra args unused)."""
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks, *unused):
  """`torch._utils._rebuild_parameter`: a Parameter is just its data here."""
  return data


def _allowed_globals() -> dict[tuple[str, str], Any]:
  """The globals a state dict may name, as new sealed objects: nothing the
  pickle reaches is shared with another load or with this module."""
  functions = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
  }
  allowed = {key: _Global(fn, '.'.join(key)) for key, fn in functions.items()}
  return allowed | {('torch', name): _StorageType(name) for name in _STORAGE_DTYPES}


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only the globals a tensor state dict needs."""

  def __init__(self, file, persistent_load):
    super().__init__(file, encoding='utf-8')
    self._persistent_load = persistent_load
    self._allowed = _allowed_globals()

  def find_class(self, module: str, name: str) -> Any:
    try:
      return self._allowed[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(
        f'refusing to load global {module}.{name}: only tensors, storages and '
        'OrderedDict may appear in a state dict read by dcgan_jax.evaluation.pth_reader'
      ) from None

  def persistent_load(self, pid: Any) -> Any:
    if not isinstance(pid, tuple) or not pid:
      raise pickle.UnpicklingError(f'unknown persistent id {pid!r}')
    typename = pid[0].decode('ascii') if isinstance(pid[0], bytes) else pid[0]
    if typename != 'storage':
      raise pickle.UnpicklingError(f'unsupported persistent id type {typename!r}')
    try:
      return self._persistent_load(pid[1:])
    except PthFormatError:
      raise
    except (TypeError, ValueError) as e:  # wrong arity or types
      raise PthFormatError(f'malformed storage reference {pid!r}: {e}') from None


def _storage_type(value: Any) -> _StorageType:
  if not isinstance(value, _StorageType):
    raise PthFormatError(f'persistent id names {value!r}, not a storage type')
  return value


def _tensor_refs(obj: Any) -> list[_TensorRef]:
  """Every _TensorRef in (nested) dicts, lists and tuples."""
  if isinstance(obj, _TensorRef):
    return [obj]
  if isinstance(obj, dict):
    obj = list(obj.values())
  if isinstance(obj, list | tuple):
    return [ref for v in obj for ref in _tensor_refs(v)]
  return []


def _materialize(obj: Any, max_bytes: int) -> Any:
  """`obj` with every _TensorRef replaced by an array, if they total at most
  `max_bytes` (checked before any is made)."""
  total = sum(ref.nbytes for ref in _tensor_refs(obj))
  if total > max_bytes:
    raise PthFormatError(
      f'its tensors need {total:,} bytes, over the limit {max_bytes:,}'
    )
  return _replace_refs(obj)


def _replace_refs(obj: Any) -> Any:
  if isinstance(obj, _TensorRef):
    return obj.materialize()
  if isinstance(obj, dict):
    return {k: _replace_refs(v) for k, v in obj.items()}
  if isinstance(obj, list | tuple):
    return type(obj)(_replace_refs(v) for v in obj)
  return obj


def _read_entry(archive: zipfile.ZipFile, name: str, max_bytes: int) -> bytes:
  """An entry's bytes, refused if more than `max_bytes` come out of it."""
  with archive.open(name) as f:
    data = f.read(max_bytes + 1)
  if len(data) > max_bytes:
    raise PthFormatError(f'zip entry {name} decompresses to over {max_bytes:,} bytes')
  return data


def _load_zip(archive: zipfile.ZipFile, max_bytes: int) -> Any:
  declared = sum(info.file_size for info in archive.infolist())
  if declared > max_bytes:
    raise PthFormatError(
      f'its zip entries declare {declared:,} bytes uncompressed, over the limit '
      f'{max_bytes:,}'
    )
  budget = [max_bytes]  # What may still be decompressed (sizes can lie).

  def read(name: str) -> bytes:
    data = _read_entry(archive, name, budget[0])
    budget[0] -= len(data)
    return data

  pickles = [n for n in archive.namelist() if n.endswith('data.pkl')]
  if len(pickles) != 1 or pickles[0].count('/') != 1:
    raise PthFormatError(
      f'expected one <dir>/data.pkl in the zip archive, found {pickles or "none"}'
    )
  prefix = pickles[0][: -len('data.pkl')]
  names = set(archive.namelist())
  big_endian = False
  if prefix + 'byteorder' in names:
    order = read(prefix + 'byteorder').strip()
    if order not in (b'little', b'big'):
      raise PthFormatError(f'unknown byte order {order!r}')
    big_endian = order == b'big'
  storages = {}

  def persistent_load(data):
    storage_type, key, _location, numel = data
    dtype = _storage_type(storage_type).dtype
    numel = _count(numel, 'a storage size')
    if not isinstance(key, str):
      raise PthFormatError(f'storage key {key!r} is not a string')
    if key not in storages:
      name = f'{prefix}data/{key}'
      if name not in names:
        raise PthFormatError(f'storage record {name} missing from the archive')
      raw = read(name)
      if len(raw) < numel * dtype.itemsize:
        raise PthFormatError(f'storage record {name} is shorter than declared')
      array = np.frombuffer(raw, dtype, count=numel).copy()
      storages[key] = _Storage(dtype, numel, array.byteswap() if big_endian else array)
    return storages[key]

  pickled = read(pickles[0])
  return _materialize(
    _RestrictedUnpickler(io.BytesIO(pickled), persistent_load).load(), max_bytes
  )


def _load_legacy(f: io.BytesIO, max_bytes: int) -> Any:
  def header(what):
    return _RestrictedUnpickler(f, _no_persistent_ids(what)).load()

  try:
    magic = header('magic number')
  except (pickle.UnpicklingError, EOFError, ValueError) as e:
    raise PthFormatError(f'neither a zip nor a legacy PyTorch file ({e})') from None
  if magic != _LEGACY_MAGIC_NUMBER:
    raise PthFormatError(
      'neither a zip nor a legacy PyTorch file (bad magic number; the tar '
      'layout of PyTorch < 0.4 is not supported)'
    )
  protocol = header('protocol version')
  if protocol != _LEGACY_PROTOCOL_VERSION:
    raise PthFormatError(f'unsupported legacy protocol version {protocol}')
  sys_info = header('system info')
  if isinstance(sys_info, dict) and not sys_info.get('little_endian', True):
    raise PthFormatError('big-endian legacy files are not supported')
  storages = {}

  def persistent_load(data):
    storage_type, root_key, _location, numel, view = data
    dtype = _storage_type(storage_type).dtype
    root = storages.setdefault(root_key, _Storage(dtype, numel))
    if view is None:
      return root
    view_key, offset, view_numel = view
    return storages.setdefault(view_key, _StorageView(root, offset, view_numel))

  obj = _RestrictedUnpickler(f, persistent_load).load()
  keys = header('storage keys')
  if not isinstance(keys, list):
    raise PthFormatError(f'the storage list is a {type(keys).__name__}')
  for key in keys:
    storage = storages.get(key)
    if storage is None or isinstance(storage, _StorageView):
      raise PthFormatError(f'unknown storage key {key!r} in the storage list')
    (numel,) = struct.unpack('<q', f.read(8))
    if numel != storage.numel:
      raise PthFormatError(f'storage {key}: {numel} elements, declared {storage.numel}')
    raw = f.read(numel * storage.dtype.itemsize)
    if len(raw) != numel * storage.dtype.itemsize:
      raise PthFormatError(f'storage {key} is cut short: truncated file?')
    storage.fill(np.frombuffer(raw, storage.dtype).copy())
  return _materialize(obj, max_bytes)


def _no_persistent_ids(what: str):
  def refuse(pid):
    raise pickle.UnpicklingError(f'persistent id {pid!r} in the {what}')

  return refuse


def load(path: str | os.PathLike, *, max_bytes: int = MAX_BYTES) -> Any:
  """The object `torch.save` wrote to `path` (a local path or a URL),
  tensors as numpy arrays. Raises PthFormatError (a ValueError), one line
  naming the file, for anything this reader refuses: see the module doc."""
  try:
    size = files.size(path)
    if size > max_bytes:
      raise PthFormatError(f'the file has {size:,} bytes, over the limit {max_bytes:,}')
    blob = files.read_bytes(path)
    if blob.startswith(b'PK\x03\x04'):  # a zip archive's first local header
      with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        return _load_zip(archive, max_bytes)
    return _load_legacy(io.BytesIO(blob), max_bytes)
  except (
    PthFormatError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError,
    RecursionError, struct.error, TypeError, ValueError, KeyError, IndexError,
    AttributeError,
  ) as e:  # fmt: skip
    message = ' '.join(str(e).split()) or type(e).__name__
    raise PthFormatError(f'{os.fspath(path)}: {message}') from None


def load_state_dict(
  path: str | os.PathLike, *, max_bytes: int = MAX_BYTES
) -> dict[str, np.ndarray]:
  """A state dict file as {name: array}, in the file's order."""
  obj = load(path, max_bytes=max_bytes)
  if not isinstance(obj, dict):
    raise PthFormatError(f'{path} holds a {type(obj).__name__}, not a state dict')
  not_arrays = [k for k, v in obj.items() if not isinstance(v, np.ndarray)]
  if not_arrays:
    raise PthFormatError(f'{path}: entries that are not tensors: {not_arrays[:5]}')
  return dict(obj)
