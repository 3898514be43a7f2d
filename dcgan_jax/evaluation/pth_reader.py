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
"""

from __future__ import annotations

import collections
import io
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


class _StorageType:
  """Stands in for a `torch.*Storage` class: only its element dtype matters."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = _STORAGE_DTYPES[name]


class _Storage:
  """A flat typed buffer; legacy files fill `data` after the object pickle."""

  def __init__(self, dtype: np.dtype, numel: int, data: np.ndarray | None = None):
    self.dtype = dtype
    self.numel = numel
    self.data = data

  def array(self) -> np.ndarray:
    if self.data is None:
      raise PthFormatError('a tensor refers to a storage the file never wrote')
    return self.data


class _StorageView(_Storage):
  """Part of another storage (legacy files only)."""

  def __init__(self, root: _Storage, offset: int, numel: int):
    super().__init__(root.dtype, numel)
    self.root, self.offset = root, offset

  def array(self) -> np.ndarray:
    data = self.root.array()[self.offset : self.offset + self.numel]
    if data.size != self.numel:
      raise PthFormatError('a storage view extends past its storage')
    return data


class _TensorRef:
  """A tensor to be cut out of its storage once all storages are read."""

  def __init__(self, storage, offset, size, stride):
    if not isinstance(storage, _Storage):
      raise PthFormatError(f'tensor storage of type {type(storage).__name__}')
    self.storage = storage
    self.offset, self.size, self.stride = int(offset), tuple(size), tuple(stride)

  def materialize(self) -> np.ndarray:
    flat = self.storage.array()
    if len(self.size) != len(self.stride) or any(s < 0 for s in self.size):
      raise PthFormatError(f'bad tensor size {self.size} / stride {self.stride}')
    if any(s == 0 for s in self.size):
      return np.zeros(self.size, flat.dtype)
    if self.offset < 0 or min(self.stride, default=0) < 0:
      raise PthFormatError('negative tensor offset or stride')
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


_ALLOWED_GLOBALS = {
  ('collections', 'OrderedDict'): collections.OrderedDict,
  ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
  ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
  ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
  **{('torch', name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only the globals a tensor state dict needs."""

  def __init__(self, file, persistent_load):
    super().__init__(file, encoding='utf-8')
    self._persistent_load = persistent_load

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED_GLOBALS[(module, name)]
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
    except (TypeError, ValueError) as e:  # wrong arity or types
      raise PthFormatError(f'malformed storage reference {pid!r}: {e}') from None


def _storage_type(value: Any) -> _StorageType:
  if not isinstance(value, _StorageType):
    raise PthFormatError(f'persistent id names {value!r}, not a storage type')
  return value


def _materialize(obj: Any) -> Any:
  """Replaces every _TensorRef in (nested) dicts, lists and tuples by an array."""
  if isinstance(obj, _TensorRef):
    return obj.materialize()
  if isinstance(obj, dict):
    return {k: _materialize(v) for k, v in obj.items()}
  if isinstance(obj, list | tuple):
    return type(obj)(_materialize(v) for v in obj)
  return obj


def _load_zip(archive: zipfile.ZipFile) -> Any:
  pickles = [n for n in archive.namelist() if n.endswith('data.pkl')]
  if len(pickles) != 1 or pickles[0].count('/') != 1:
    raise PthFormatError(
      f'expected one <dir>/data.pkl in the zip archive, found {pickles or "none"}'
    )
  prefix = pickles[0][: -len('data.pkl')]
  names = set(archive.namelist())
  big_endian = False
  if prefix + 'byteorder' in names:
    order = archive.read(prefix + 'byteorder').strip()
    if order not in (b'little', b'big'):
      raise PthFormatError(f'unknown byte order {order!r}')
    big_endian = order == b'big'
  storages = {}

  def persistent_load(data):
    storage_type, key, _location, numel = data
    dtype = _storage_type(storage_type).dtype
    if key not in storages:
      name = f'{prefix}data/{key}'
      if name not in names:
        raise PthFormatError(f'storage record {name} missing from the archive')
      raw = archive.read(name)
      if len(raw) < numel * dtype.itemsize:
        raise PthFormatError(f'storage record {name} is shorter than declared')
      array = np.frombuffer(raw, dtype, count=numel).copy()
      storages[key] = _Storage(dtype, numel, array.byteswap() if big_endian else array)
    return storages[key]

  with archive.open(pickles[0]) as f:
    return _materialize(
      _RestrictedUnpickler(io.BytesIO(f.read()), persistent_load).load()
    )


def _load_legacy(f: io.BytesIO) -> Any:
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
    root = storages.setdefault(root_key, _Storage(dtype, int(numel)))
    if view is None:
      return root
    view_key, offset, view_numel = view
    return storages.setdefault(
      view_key, _StorageView(root, int(offset), int(view_numel))
    )

  obj = _RestrictedUnpickler(f, persistent_load).load()
  keys = header('storage keys')
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
    storage.data = np.frombuffer(raw, storage.dtype).copy()
  return _materialize(obj)


def _no_persistent_ids(what: str):
  def refuse(pid):
    raise pickle.UnpicklingError(f'persistent id {pid!r} in the {what}')

  return refuse


def load(path: str | os.PathLike) -> Any:
  """The object `torch.save` wrote to `path` (a local path or a URL),
  tensors as numpy arrays."""
  blob = files.read_bytes(path)
  if blob.startswith(b'PK\x03\x04'):  # a zip archive's first local header
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
      return _load_zip(archive)
  return _load_legacy(io.BytesIO(blob))


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A state dict file as {name: array}, in the file's order."""
  obj = load(path)
  if not isinstance(obj, dict):
    raise PthFormatError(f'{path} holds a {type(obj).__name__}, not a state dict')
  not_arrays = [k for k, v in obj.items() if not isinstance(v, np.ndarray)]
  if not_arrays:
    raise PthFormatError(f'{path}: entries that are not tensors: {not_arrays[:5]}')
  return dict(obj)
