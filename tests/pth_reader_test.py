"""Hostile `.pth` files: dcgan_jax.evaluation.pth_reader refuses each one with a
one-line ValueError naming the file, before allocating what they ask for.

The files are written by hand here: pickle protocol 2 opcodes and torch's zip
layout (archive/data.pkl, archive/data/<key>), no torch needed.
"""

import io
import struct
import zipfile

import numpy as np
import pytest

from dcgan_jax.evaluation import pth_reader

# ----------------------------------------------------------------------------
# Pickle opcodes (protocol 2).

PROTO, STOP, MARK, TUPLE, EMPTY_TUPLE = b'\x80\x02', b'.', b'(', b't', b')'
EMPTY_DICT, SETITEM, REDUCE, BUILD, BINPERSID = b'}', b's', b'R', b'b', b'Q'
NEWFALSE = b'\x89'


def _global(module, name):
  return b'c' + module.encode() + b'\n' + name.encode() + b'\n'


def _str(text):
  data = text.encode()
  return b'X' + struct.pack('<I', len(data)) + data


def _int(n):
  if 0 <= n < 2**31:
    return b'J' + struct.pack('<i', n)
  data = n.to_bytes((n.bit_length() + 8) // 8, 'little', signed=True)
  return b'\x8a' + bytes([len(data)]) + data


def _tuple(*items):
  return MARK + b''.join(items) + TUPLE


def _tensor(key, numel, offset, size, stride, storage='FloatStorage'):
  """torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)."""
  pid = _tuple(
    _str('storage'), _global('torch', storage), _str(key), _str('cpu'), _int(numel)
  )
  args = _tuple(
    pid + BINPERSID,
    _int(offset),
    _tuple(*map(_int, size)),
    _tuple(*map(_int, stride)),
    NEWFALSE,
    _global('collections', 'OrderedDict') + EMPTY_TUPLE + REDUCE,
  )
  return _global('torch._utils', '_rebuild_tensor_v2') + args + REDUCE


def _state_dict(**tensors):
  """A pickled {name: tensor opcodes} dict."""
  body = b''.join(_str(k) + v + SETITEM for k, v in tensors.items())
  return PROTO + EMPTY_DICT + body + STOP


def _write_zip(path, data_pkl, storages, compression=zipfile.ZIP_STORED):
  with zipfile.ZipFile(path, 'w', compression) as z:
    z.writestr('archive/data.pkl', data_pkl)
    z.writestr('archive/byteorder', 'little')
    for key, data in storages.items():
      z.writestr(f'archive/data/{key}', data)
  return path


def _refusal(path, **kwargs):
  with pytest.raises(ValueError) as e:
    pth_reader.load_state_dict(path, **kwargs)
  assert isinstance(e.value, pth_reader.PthFormatError)
  message = str(e.value)
  assert '\n' not in message
  prefix = f'{path}: '
  assert message.startswith(prefix), message
  return message[len(prefix) :]


def _floats(n):
  return np.arange(n, dtype='<f4').tobytes()


# ----------------------------------------------------------------------------


def test_a_hand_written_file_reads(tmp_path):
  path = _write_zip(
    tmp_path / 'ok.pth',
    _state_dict(w=_tensor('0', 6, 0, (2, 3), (3, 1)), t=_tensor('0', 6, 1, (2,), (3,))),
    {'0': _floats(6)},
  )
  read = pth_reader.load_state_dict(path)
  np.testing.assert_array_equal(read['w'], [[0, 1, 2], [3, 4, 5]])
  np.testing.assert_array_equal(read['t'], [1, 4])


def test_storage_types_cannot_be_altered(tmp_path):
  # BUILD on torch.FloatStorage: with a shared stand-in this changed the
  # dtype every later load reads float tensors with.
  evil = PROTO + _global('torch', 'FloatStorage') + EMPTY_DICT
  evil += _str('dtype') + _str('<f8') + SETITEM + BUILD + STOP
  path = _write_zip(tmp_path / 'evil.pth', evil, {})
  assert _refusal(path) == 'the pickle tries to set the state of a _StorageType'
  slots = PROTO + _global('torch', 'FloatStorage')
  slots += _tuple(b'N', EMPTY_DICT + _str('dtype') + _str('<f8') + SETITEM)
  path = _write_zip(tmp_path / 'slots.pth', slots + BUILD + STOP, {})
  assert _refusal(path) == 'the pickle tries to set the state of a _StorageType'
  ok = _write_zip(
    tmp_path / 'ok.pth',
    _state_dict(w=_tensor('0', 2, 0, (2,), (1,))),
    {'0': _floats(2)},
  )
  assert pth_reader.load_state_dict(ok)['w'].dtype == np.float32


def test_allowed_functions_cannot_be_altered(tmp_path):
  for module, name in [
    ('torch._utils', '_rebuild_tensor_v2'),
    ('collections', 'OrderedDict'),
  ]:
    evil = PROTO + _global(module, name) + EMPTY_DICT
    evil += _str('__call__') + _str('x') + SETITEM + BUILD + STOP
    path = _write_zip(tmp_path / f'{name}.pth', evil, {})
    assert _refusal(path) == 'the pickle tries to set the state of a _Global'


def test_each_load_gets_its_own_globals():
  first = pth_reader._RestrictedUnpickler(io.BytesIO(), None)._allowed
  second = pth_reader._RestrictedUnpickler(io.BytesIO(), None)._allowed
  assert first.keys() == second.keys()
  assert all(first[k] is not second[k] for k in first)


def test_stride_zero_tensor_cannot_expand_its_storage(tmp_path):
  size = (1_000_000, 1_000_000)
  path = _write_zip(
    tmp_path / 'expand.pth',
    _state_dict(w=_tensor('0', 1, 0, size, (0, 0))),
    {'0': _floats(1)},
  )
  assert _refusal(path) == (
    'tensor of size (1000000, 1000000) has 1,000,000,000,000 elements, more '
    'than its storage of 1 (stride (0, 0))'
  )


def test_huge_declared_storage_is_not_allocated(tmp_path):
  path = _write_zip(
    tmp_path / 'huge.pth',
    _state_dict(w=_tensor('0', 2**40, 0, (2**20, 2**20), (2**20, 1))),
    {'0': _floats(4)},
  )
  assert _refusal(path) == 'storage record archive/data/0 is shorter than declared'


def test_negative_and_non_integer_sizes(tmp_path):
  path = _write_zip(
    tmp_path / 'neg.pth',
    _state_dict(w=_tensor('0', 4, 0, (2,), (2**63,))),
    {'0': _floats(4)},
  )
  assert _refusal(path) == (
    'tensor of size (2,) at offset 0 reads past its storage of 4 elements'
  )
  minus = _tensor('0', 4, 0, (2,), (1,))
  minus = minus.replace(_tuple(_int(1)), _tuple(b'J' + struct.pack('<i', -1)))
  path = _write_zip(tmp_path / 'minus.pth', _state_dict(w=minus), {'0': _floats(4)})
  assert _refusal(path) == 'a tensor stride is -1, not a non-negative integer'


def test_total_tensor_bytes_are_capped(tmp_path):
  # 20 tensors over one shared storage of 100 floats: 400 bytes in the file,
  # 8,000 bytes of arrays.
  tensors = {f't{i}': _tensor('0', 100, 0, (100,), (1,)) for i in range(20)}
  path = _write_zip(tmp_path / 'many.pth', _state_dict(**tensors), {'0': _floats(100)})
  assert len(pth_reader.load_state_dict(path)) == 20
  assert _refusal(path, max_bytes=4_000) == (
    'its tensors need 8,000 bytes, over the limit 4,000'
  )


def test_zip_bomb_is_refused_by_its_declared_size(tmp_path):
  path = _write_zip(
    tmp_path / 'bomb.pth',
    _state_dict(w=_tensor('0', 1, 0, (1,), (1,))),
    {'0': bytes(10_000_000)},
    zipfile.ZIP_DEFLATED,
  )
  assert path.stat().st_size < 100_000
  message = _refusal(path, max_bytes=1_000_000)
  assert message.startswith('its zip entries declare 10,0')
  assert message.endswith('bytes uncompressed, over the limit 1,000,000')


def test_zip_entry_lying_about_its_size(tmp_path):
  path = _write_zip(
    tmp_path / 'liar.pth',
    _state_dict(w=_tensor('0', 1, 0, (1,), (1,))),
    {'0': bytes(10_000_000)},
    zipfile.ZIP_DEFLATED,
  )
  blob = bytearray(path.read_bytes())
  # Declare 4 bytes for the storage entry, in its local and central headers.
  for signature, size_at in ((b'PK\x03\x04', 22), (b'PK\x01\x02', 24)):
    start = 0
    while (start := blob.find(signature, start)) >= 0:
      name_at = start + (30 if signature == b'PK\x03\x04' else 46)
      if blob[name_at : name_at + 14] == b'archive/data/0':
        blob[start + size_at : start + size_at + 4] = struct.pack('<I', 4)
      start += 4
  path.write_bytes(bytes(blob))
  # At most the declared 4 bytes are inflated; the CRC then gives it away.
  assert _refusal(path, max_bytes=1_000_000) == ("Bad CRC-32 for file 'archive/data/0'")
  with zipfile.ZipFile(path) as z:
    with pytest.raises(pth_reader.PthFormatError, match='decompresses to over 3'):
      pth_reader._read_entry(z, 'archive/data.pkl', 3)


def test_file_size_is_capped(tmp_path):
  path = _write_zip(
    tmp_path / 'big.pth',
    _state_dict(w=_tensor('0', 2, 0, (2,), (1,))),
    {'0': _floats(2)},
  )
  size = path.stat().st_size
  assert _refusal(path, max_bytes=100) == (
    f'the file has {size:,} bytes, over the limit 100'
  )


def test_other_globals_refused_with_the_file_named(tmp_path):
  evil = PROTO + _global('os', 'system') + _tuple(_str('true')) + REDUCE + STOP
  path = _write_zip(tmp_path / 'evil.pth', evil, {})
  assert _refusal(path).startswith('refusing to load global os.system')
