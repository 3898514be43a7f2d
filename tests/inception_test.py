"""Tests for dcgan_jax.evaluation.inception and dcgan_jax.evaluation.pth_reader.

The real weights file is not needed (nor fetched): a stand-in with random
values and the real file's names and shapes is written here, without torch,
in both of torch.save's layouts. The names, shapes, strides and paddings come
from the table below, transcribed from torchvision's Inception3 and
pytorch-fid's FIDInception* blocks, not from the module under test.
"""

import collections
import hashlib
import io
import os
import pickle
import struct
import sys
import types
import urllib.error
import urllib.request
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from numpy.lib.stride_tricks import sliding_window_view

from dcgan_jax.evaluation import inception, pth_reader
from dcgan_jax.util import files

# ----------------------------------------------------------------------------
# The published architecture: every BasicConv2d as
# (name, out_channels, in_channels, (kh, kw), stride, (pad_h, pad_w)).


def _conv_table():
  t = [
    ('Conv2d_1a_3x3', 32, 3, (3, 3), 2, (0, 0)),
    ('Conv2d_2a_3x3', 32, 32, (3, 3), 1, (0, 0)),
    ('Conv2d_2b_3x3', 64, 32, (3, 3), 1, (1, 1)),
    ('Conv2d_3b_1x1', 80, 64, (1, 1), 1, (0, 0)),
    ('Conv2d_4a_3x3', 192, 80, (3, 3), 1, (0, 0)),
  ]
  one = ((1, 1), 1, (0, 0))
  for m, cin, pool in (
    ('Mixed_5b', 192, 32),
    ('Mixed_5c', 256, 64),
    ('Mixed_5d', 288, 64),
  ):
    t += [
      (f'{m}.branch1x1', 64, cin, *one),
      (f'{m}.branch5x5_1', 48, cin, *one),
      (f'{m}.branch5x5_2', 64, 48, (5, 5), 1, (2, 2)),
      (f'{m}.branch3x3dbl_1', 64, cin, *one),
      (f'{m}.branch3x3dbl_2', 96, 64, (3, 3), 1, (1, 1)),
      (f'{m}.branch3x3dbl_3', 96, 96, (3, 3), 1, (1, 1)),
      (f'{m}.branch_pool', pool, cin, *one),
    ]
  t += [
    ('Mixed_6a.branch3x3', 384, 288, (3, 3), 2, (0, 0)),
    ('Mixed_6a.branch3x3dbl_1', 64, 288, *one),
    ('Mixed_6a.branch3x3dbl_2', 96, 64, (3, 3), 1, (1, 1)),
    ('Mixed_6a.branch3x3dbl_3', 96, 96, (3, 3), 2, (0, 0)),
  ]
  row, col = ((1, 7), 1, (0, 3)), ((7, 1), 1, (3, 0))
  for m, c7 in (
    ('Mixed_6b', 128),
    ('Mixed_6c', 160),
    ('Mixed_6d', 160),
    ('Mixed_6e', 192),
  ):
    t += [
      (f'{m}.branch1x1', 192, 768, *one),
      (f'{m}.branch7x7_1', c7, 768, *one),
      (f'{m}.branch7x7_2', c7, c7, *row),
      (f'{m}.branch7x7_3', 192, c7, *col),
      (f'{m}.branch7x7dbl_1', c7, 768, *one),
      (f'{m}.branch7x7dbl_2', c7, c7, *col),
      (f'{m}.branch7x7dbl_3', c7, c7, *row),
      (f'{m}.branch7x7dbl_4', c7, c7, *col),
      (f'{m}.branch7x7dbl_5', 192, c7, *row),
      (f'{m}.branch_pool', 192, 768, *one),
    ]
  t += [
    ('Mixed_7a.branch3x3_1', 192, 768, *one),
    ('Mixed_7a.branch3x3_2', 320, 192, (3, 3), 2, (0, 0)),
    ('Mixed_7a.branch7x7x3_1', 192, 768, *one),
    ('Mixed_7a.branch7x7x3_2', 192, 192, *row),
    ('Mixed_7a.branch7x7x3_3', 192, 192, *col),
    ('Mixed_7a.branch7x7x3_4', 192, 192, (3, 3), 2, (0, 0)),
  ]
  row, col = ((1, 3), 1, (0, 1)), ((3, 1), 1, (1, 0))
  for m, cin in (('Mixed_7b', 1280), ('Mixed_7c', 2048)):
    t += [
      (f'{m}.branch1x1', 320, cin, *one),
      (f'{m}.branch3x3_1', 384, cin, *one),
      (f'{m}.branch3x3_2a', 384, 384, *row),
      (f'{m}.branch3x3_2b', 384, 384, *col),
      (f'{m}.branch3x3dbl_1', 448, cin, *one),
      (f'{m}.branch3x3dbl_2', 384, 448, (3, 3), 1, (1, 1)),
      (f'{m}.branch3x3dbl_3a', 384, 384, *row),
      (f'{m}.branch3x3dbl_3b', 384, 384, *col),
      (f'{m}.branch_pool', 192, cin, *one),
    ]
  return {name: rest for name, *rest in t}


CONVS = _conv_table()
NUM_CLASSES = 1008


def _expected_shapes():
  """{state-dict name: shape} of pytorch-fid's file (num_batches_tracked aside)."""
  shapes = {}
  for name, (out, cin, (kh, kw), _, _) in CONVS.items():
    shapes[f'{name}.conv.weight'] = (out, cin, kh, kw)
    for leaf in ('weight', 'bias', 'running_mean', 'running_var'):
      shapes[f'{name}.bn.{leaf}'] = (out,)
  shapes['fc.weight'] = (NUM_CLASSES, 2048)
  shapes['fc.bias'] = (NUM_CLASSES,)
  return shapes


# torchvision documents inception_v3 (AuxLogits head, 1000 classes) as
# 27,161,264 parameters. AuxLogits: conv0 768*128 + bn 2*128, conv1
# 128*768*5*5 + bn 2*768, fc 768*1000 + 1000 = 3,326,696. The FID network
# has no AuxLogits and 1008 classes (+8*2048 + 8).
NUM_PARAMS = 27_161_264 - 3_326_696 + 8 * 2048 + 8  # 23,850,960
NUM_BN_CHANNELS = 17_216  # running_mean and running_var: 2 * 17,216 values


# ----------------------------------------------------------------------------
# A torch.save writer without torch: fake `torch` modules supply the global
# names that the pickle refers to (torch.FloatStorage, torch._utils...).


class _Storage:
  def __init__(self, key, data):
    self.key, self.data = key, data


class _StorageView:
  """Part of a root storage; legacy files (torch < 1.6) could hold these."""

  def __init__(self, key, root, offset, numel):
    self.key, self.root, self.offset, self.numel = key, root, offset, numel


class _Tensor:
  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  def __reduce__(self):
    rebuild = sys.modules['torch._utils']._rebuild_tensor_v2
    args = (self.storage, self.offset, self.size, self.stride, False)
    return rebuild, (*args, collections.OrderedDict())


def _fake_torch():
  torch = types.ModuleType('torch')
  utils = types.ModuleType('torch._utils')

  def _rebuild_tensor_v2(*args):
    raise AssertionError('only pickled, never called')

  _rebuild_tensor_v2.__module__ = 'torch._utils'
  _rebuild_tensor_v2.__qualname__ = '_rebuild_tensor_v2'
  utils._rebuild_tensor_v2 = _rebuild_tensor_v2
  torch._utils = utils
  for name in ('FloatStorage', 'LongStorage'):
    setattr(torch, name, type(name, (), {'__module__': 'torch'}))
  return {'torch': torch, 'torch._utils': utils}


def _storage_type(torch, data):
  return torch.LongStorage if data.dtype == np.int64 else torch.FloatStorage


def _pickle_with_storages(obj, legacy, torch):
  class Pickler(pickle.Pickler):
    def persistent_id(self, o):
      if isinstance(o, _StorageView):
        root = o.root
        view = (o.key, o.offset, o.numel)
      elif isinstance(o, _Storage):
        root, view = o, None
      else:
        return None
      pid = (
        'storage',
        _storage_type(torch, root.data),
        root.key,
        'cpu',
        root.data.size,
      )
      return (*pid, view) if legacy else pid

  buf = io.BytesIO()
  Pickler(buf, protocol=2).dump(obj)
  return buf.getvalue()


def _tensors(state_dict, with_num_batches_tracked):
  """The state dict as torch would pickle it, storage layouts varied:

  BatchNorm running_mean and running_var share one storage (offsets 0, C);
  fc.weight is a transposed view (strides (1, 1008)); the rest contiguous.
  """
  storages, tensors = [], collections.OrderedDict()

  def storage(flat):
    storages.append(_Storage(str(len(storages)), np.ascontiguousarray(flat)))
    return storages[-1]

  for name, value in state_dict.items():
    if name.endswith('running_var'):
      continue
    if name.endswith('running_mean'):
      var = state_dict[name.replace('running_mean', 'running_var')]
      shared = storage(np.concatenate([value, var]))
      c = value.size
      tensors[name] = _Tensor(shared, 0, (c,), (1,))
      tensors[name.replace('running_mean', 'running_var')] = _Tensor(
        shared, c, (c,), (1,)
      )
      if with_num_batches_tracked:
        count = storage(np.array([12345], np.int64))
        tensors[name.replace('running_mean', 'num_batches_tracked')] = _Tensor(
          count, 0, (), ()
        )
    elif name == 'fc.weight':
      tensors[name] = _Tensor(
        storage(value.T.ravel()), 0, value.shape, (1, value.shape[0])
      )
    else:
      strides = tuple(int(s) // value.itemsize for s in value.strides)
      tensors[name] = _Tensor(storage(value.ravel()), 0, value.shape, strides)
  # torch's state dicts carry per-module versions in an attribute.
  tensors._metadata = collections.OrderedDict([('', {'version': 1})])
  return tensors, storages


def write_pth(path, state_dict, fmt, with_num_batches_tracked=False):
  """Writes `state_dict` ({name: array}) as torch.save would: 'zip' or 'legacy'."""
  tensors, storages = _tensors(state_dict, with_num_batches_tracked)
  _write(path, tensors, storages, fmt)


def _write(path, tensors, storages, fmt):
  with pytest.MonkeyPatch.context() as mp:
    fake = _fake_torch()
    for name, module in fake.items():
      mp.setitem(sys.modules, name, module)
    data_pkl = _pickle_with_storages(tensors, fmt == 'legacy', fake['torch'])
  if fmt == 'zip':
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as z:
      z.writestr('archive/data.pkl', data_pkl)
      z.writestr('archive/byteorder', 'little')
      for s in storages:
        z.writestr(
          f'archive/data/{s.key}',
          s.data.astype(s.data.dtype.newbyteorder('<')).tobytes(),
        )
      z.writestr('archive/version', '3\n')
    return
  sys_info = {'protocol_version': 1001, 'little_endian': True, 'type_sizes': {}}
  with open(path, 'wb') as f:
    for header in (0x1950A86A20F9469CFC6C, 1001, sys_info):
      f.write(pickle.dumps(header, protocol=2))
    f.write(data_pkl)
    f.write(pickle.dumps([s.key for s in storages], protocol=2))
    for s in storages:
      f.write(struct.pack('<q', s.data.size))
      f.write(s.data.astype(s.data.dtype.newbyteorder('<')).tobytes())


def _random_state_dict(seed=0):
  """Random values with sane scales (He-initialised convs, BN near identity)."""
  rng = np.random.default_rng(seed)
  sd = {}
  for name, shape in _expected_shapes().items():
    leaf = name.rsplit('.', 1)[1]
    if name.endswith('conv.weight'):
      fan_in = np.prod(shape[1:])
      value = rng.standard_normal(shape, np.float32) * np.sqrt(2.0 / fan_in)
    elif leaf in ('running_var', 'weight') and '.bn.' in name:
      value = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    elif name.startswith('fc.'):
      value = rng.standard_normal(shape, np.float32) * 0.02
    else:  # bn bias, running_mean
      value = rng.standard_normal(shape, np.float32) * 0.1
    sd[name] = value.astype(np.float32)
  return sd


@pytest.fixture(scope='module')
def standin(tmp_path_factory):
  """(state dict, zip path, legacy path) of a full-size random stand-in."""
  directory = tmp_path_factory.mktemp('weights')
  sd = _random_state_dict()
  zip_path = directory / 'zip.pth'
  legacy_path = directory / 'legacy.pth'
  write_pth(zip_path, sd, 'zip')
  write_pth(legacy_path, sd, 'legacy', with_num_batches_tracked=True)
  return sd, zip_path, legacy_path


@pytest.fixture(scope='module')
def loaded(standin):
  sd, zip_path, _ = standin
  module, variables = inception.load_fid_inception(zip_path)
  return sd, module, variables


def _flax_value(variables, name):
  """The Flax variable for a state-dict name, back in torch layout."""
  *modules, leaf = name.split('.')
  collection, key = {
    'weight': ('params', 'scale' if modules[-1] == 'bn' else 'kernel'),
    'bias': ('params', 'bias'),
    'running_mean': ('batch_stats', 'mean'),
    'running_var': ('batch_stats', 'var'),
  }[leaf]
  value = variables[collection]
  for m in modules:
    value = value[m]
  value = np.asarray(value[key])
  if key == 'kernel' and value.ndim == 4:
    return value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
  return value.T if key == 'kernel' else value


# ----------------------------------------------------------------------------
# (a) Architecture against the weight file's structure.


def test_table_matches_published_parameter_count():
  shapes = _expected_shapes()
  assert len(CONVS) == 94 and len(shapes) == 94 * 5 + 2
  params = sum(
    int(np.prod(s)) for n, s in shapes.items() if not n.endswith(('mean', 'var'))
  )
  assert params == NUM_PARAMS == 23_850_960
  assert sum(out for out, *_ in CONVS.values()) == NUM_BN_CHANNELS


def test_module_needs_exactly_the_files_names_and_shapes():
  assert inception.expected_state_dict_shapes() == _expected_shapes()


@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
def test_reader_returns_every_tensor_bit_exactly(standin, fmt):
  sd, zip_path, legacy_path = standin
  read = pth_reader.load_state_dict(zip_path if fmt == 'zip' else legacy_path)
  tracked = [k for k in read if k.endswith('num_batches_tracked')]
  assert len(tracked) == (94 if fmt == 'legacy' else 0)
  for k in tracked:
    assert read[k].shape == () and read[k].dtype == np.int64 and read[k] == 12345
  assert [k for k in read if k not in tracked] == list(sd)  # the file's order
  for name, value in sd.items():
    assert read[name].dtype == np.float32
    np.testing.assert_array_equal(read[name], value, err_msg=name)


@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
def test_load_fills_every_variable(standin, fmt):
  sd, zip_path, legacy_path = standin
  module, variables = inception.load_fid_inception(
    zip_path if fmt == 'zip' else legacy_path, download=False
  )
  assert isinstance(module, inception.FIDInceptionV3)
  assert set(variables) == {'params', 'batch_stats'}
  sizes = jax.tree.map(lambda x: x.size, variables)
  assert sum(jax.tree.leaves(sizes['params'])) == NUM_PARAMS
  assert sum(jax.tree.leaves(sizes['batch_stats'])) == 2 * NUM_BN_CHANNELS
  assert len(jax.tree.leaves(variables)) == len(sd)
  for name, value in sd.items():
    np.testing.assert_array_equal(_flax_value(variables, name), value, err_msg=name)
  # Spot checks written out: OIHW -> HWIO, [out, in] -> [in, out].
  params = variables['params']
  k = np.asarray(params['Mixed_6b']['branch7x7_2']['conv']['kernel'])
  w = sd['Mixed_6b.branch7x7_2.conv.weight']
  assert k.shape == (1, 7, 128, 128) and w.shape == (128, 128, 1, 7)
  assert k[0, 5, 3, 7] == w[7, 3, 0, 5]
  k = np.asarray(params['Conv2d_1a_3x3']['conv']['kernel'])
  assert (
    k.shape == (3, 3, 3, 32)
    and k[2, 1, 0, 31] == sd['Conv2d_1a_3x3.conv.weight'][31, 0, 2, 1]
  )
  fc = np.asarray(params['fc']['kernel'])
  assert fc.shape == (2048, 1008) and fc[2047, 3] == sd['fc.weight'][3, 2047]
  assert 'bias' not in params['Mixed_7c']['branch_pool']['conv']
  np.testing.assert_array_equal(
    variables['batch_stats']['Mixed_7c']['branch_pool']['bn']['var'],
    sd['Mixed_7c.branch_pool.bn.running_var'],
  )


# ----------------------------------------------------------------------------
# (b) Forward passes.

# Output (H, W, C) of each top-level layer for a 299x299 input (torchvision's
# comments in Inception3._forward).
SHAPES_299 = {
  'Conv2d_1a_3x3': (149, 149, 32),
  'Conv2d_2a_3x3': (147, 147, 32),
  'Conv2d_2b_3x3': (147, 147, 64),
  'Conv2d_3b_1x1': (73, 73, 80),
  'Conv2d_4a_3x3': (71, 71, 192),
  'Mixed_5b': (35, 35, 256),
  'Mixed_5c': (35, 35, 288),
  'Mixed_5d': (35, 35, 288),
  'Mixed_6a': (17, 17, 768),
  'Mixed_6b': (17, 17, 768),
  'Mixed_6c': (17, 17, 768),
  'Mixed_6d': (17, 17, 768),
  'Mixed_6e': (17, 17, 768),
  'Mixed_7a': (8, 8, 1280),
  'Mixed_7b': (8, 8, 2048),
  'Mixed_7c': (8, 8, 2048),
}


def test_forward_two_images(loaded):
  sd, module, variables = loaded
  images = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1.0)

  @jax.jit
  def run(variables, images):
    return module.apply(
      variables,
      inception.preprocess(images),
      capture_intermediates=lambda m, _: m.name in SHAPES_299,
      mutable=['intermediates'],
    )

  out, state = run(variables, images)
  pool3, logits = np.asarray(out['pool3']), np.asarray(out['logits'])
  assert pool3.shape == (2, 2048) and logits.shape == (2, NUM_CLASSES)
  assert np.all(np.isfinite(pool3)) and np.all(pool3 >= 0)
  assert np.all(np.isfinite(logits))
  assert np.abs(pool3[0] - pool3[1]).max() > 1e-3  # depends on the image
  inter = {k: v['__call__'][0] for k, v in state['intermediates'].items()}
  assert {k: v.shape[1:] for k, v in inter.items()} == SHAPES_299
  np.testing.assert_allclose(
    pool3, np.asarray(inter['Mixed_7c']).mean(axis=(1, 2)), rtol=1e-5, atol=1e-6
  )
  want = pool3.astype(np.float64) @ sd['fc.weight'].T.astype(np.float64) + sd['fc.bias']
  np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)


# A reference forward pass in numpy (NCHW, torch-layout weights), written from
# torchvision's / pytorch-fid's forward() methods and the table above.


def _ref_pool(x, kind, stride, pad):
  fill = -np.inf if kind == 'max' else np.nan  # nan: left out of the mean
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=fill)
  win = sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::stride, ::stride]
  return win.max(axis=(-2, -1)) if kind == 'max' else np.nanmean(win, axis=(-2, -1))


def _ref_conv(sd, name, x):
  _, _, (kh, kw), stride, (ph, pw) = CONVS[name]
  w = sd[f'{name}.conv.weight'].astype(np.float64)
  x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
  win = sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
  y = np.einsum('nchwij,ocij->nohw', win, w, optimize=True)
  bn = {
    k: sd[f'{name}.bn.{k}'][None, :, None, None]
    for k in ('weight', 'bias', 'running_mean', 'running_var')
  }
  y = (y - bn['running_mean']) / np.sqrt(bn['running_var'] + 1e-3) * bn['weight'] + bn[
    'bias'
  ]
  return np.maximum(y, 0)


def _ref_forward(sd, x):
  def c(name, x):
    return _ref_conv(sd, name, x)

  def cat(*xs):
    return np.concatenate(xs, axis=1)

  for name in ('Conv2d_1a_3x3', 'Conv2d_2a_3x3', 'Conv2d_2b_3x3'):
    x = c(name, x)
  x = _ref_pool(x, 'max', 2, 0)
  x = c('Conv2d_4a_3x3', c('Conv2d_3b_1x1', x))
  x = _ref_pool(x, 'max', 2, 0)
  for m in ('Mixed_5b', 'Mixed_5c', 'Mixed_5d'):  # FIDInceptionA
    x = cat(
      c(f'{m}.branch1x1', x),
      c(f'{m}.branch5x5_2', c(f'{m}.branch5x5_1', x)),
      c(f'{m}.branch3x3dbl_3', c(f'{m}.branch3x3dbl_2', c(f'{m}.branch3x3dbl_1', x))),
      c(f'{m}.branch_pool', _ref_pool(x, 'avg', 1, 1)),
    )
  m = 'Mixed_6a'  # InceptionB
  x = cat(
    c(f'{m}.branch3x3', x),
    c(f'{m}.branch3x3dbl_3', c(f'{m}.branch3x3dbl_2', c(f'{m}.branch3x3dbl_1', x))),
    _ref_pool(x, 'max', 2, 0),
  )
  for m in ('Mixed_6b', 'Mixed_6c', 'Mixed_6d', 'Mixed_6e'):  # FIDInceptionC
    b7 = x
    for i in (1, 2, 3):
      b7 = c(f'{m}.branch7x7_{i}', b7)
    bd = x
    for i in (1, 2, 3, 4, 5):
      bd = c(f'{m}.branch7x7dbl_{i}', bd)
    x = cat(
      c(f'{m}.branch1x1', x), b7, bd, c(f'{m}.branch_pool', _ref_pool(x, 'avg', 1, 1))
    )
  m = 'Mixed_7a'  # InceptionD
  b7 = x
  for i in (1, 2, 3, 4):
    b7 = c(f'{m}.branch7x7x3_{i}', b7)
  x = cat(
    c(f'{m}.branch3x3_2', c(f'{m}.branch3x3_1', x)), b7, _ref_pool(x, 'max', 2, 0)
  )
  for m, pool in (('Mixed_7b', 'avg'), ('Mixed_7c', 'max')):  # FIDInceptionE_1/_2
    b3 = c(f'{m}.branch3x3_1', x)
    bd = c(f'{m}.branch3x3dbl_2', c(f'{m}.branch3x3dbl_1', x))
    x = cat(
      c(f'{m}.branch1x1', x),
      c(f'{m}.branch3x3_2a', b3),
      c(f'{m}.branch3x3_2b', b3),
      c(f'{m}.branch3x3dbl_3a', bd),
      c(f'{m}.branch3x3dbl_3b', bd),
      c(f'{m}.branch_pool', _ref_pool(x, pool, 1, 1)),
    )
  pool3 = x.mean(axis=(2, 3))
  return pool3, pool3 @ sd['fc.weight'].T.astype(np.float64) + sd['fc.bias']


def test_forward_matches_numpy_reference(loaded):
  """139x139 ends in 3x3 maps, so every padding and pool type shows at edges."""
  sd, module, variables = loaded
  x = np.random.default_rng(1).uniform(-1, 1, (1, 139, 139, 3)).astype(np.float32)
  out = jax.jit(module.apply)(variables, x)
  pool3, logits = _ref_forward(sd, x.transpose(0, 3, 1, 2).astype(np.float64))
  assert pool3.shape == (1, 2048)
  np.testing.assert_allclose(
    out['pool3'], pool3, rtol=1e-4, atol=1e-4 * np.abs(pool3).max()
  )
  np.testing.assert_allclose(
    out['logits'], logits, rtol=1e-4, atol=1e-4 * np.abs(logits).max()
  )


def test_pools_at_borders():
  x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
  avg = np.asarray(inception.avg_pool_3x3_same(jnp.asarray(x)))[0, :, :, 0]
  assert avg[0, 0] == np.mean([0, 1, 4, 5])  # padding not counted
  assert avg[0, 1] == np.mean([0, 1, 2, 4, 5, 6])
  assert avg[1, 1] == np.mean([0, 1, 2, 4, 5, 6, 8, 9, 10])
  neg = -1.0 - x
  mx = np.asarray(inception.max_pool_3x3_same(jnp.asarray(neg)))[0, :, :, 0]
  assert mx[0, 0] == -1.0 and mx[3, 3] == -11.0  # padding never wins
  assert inception.max_pool_3x3_valid(jnp.zeros((1, 147, 147, 1))).shape == (
    1,
    73,
    73,
    1,
  )


# ----------------------------------------------------------------------------
# (c) Preprocessing.


def _torch_bilinear(x, out_h, out_w):
  """F.interpolate(bilinear, align_corners=False) as PyTorch's CPU kernel
  computes it: source index per output pixel, lambdas, edge repeat."""
  n, in_h, in_w, c = x.shape

  def indices(in_size, out_size):
    src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    src = np.where(src < 0, 0.0, src)
    i0 = src.astype(np.int64)
    step = (i0 < in_size - 1).astype(np.int64)
    lam1 = src - i0
    return i0, i0 + step, 1 - lam1, lam1

  h0, h1, hl0, hl1 = indices(in_h, out_h)
  w0, w1, wl0, wl1 = indices(in_w, out_w)
  out = np.empty((n, out_h, out_w, c))
  for r in range(out_h):
    top = wl0[:, None] * x[:, h0[r], w0] + wl1[:, None] * x[:, h0[r], w1]
    bottom = wl0[:, None] * x[:, h1[r], w0] + wl1[:, None] * x[:, h1[r], w1]
    out[:, r] = hl0[r] * top + hl1[r] * bottom
  return out


def test_bilinear_by_hand():
  up = inception.resize_bilinear(jnp.array([1.0, 2.0]).reshape(1, 1, 2, 1), 1, 4)
  np.testing.assert_allclose(np.ravel(up), [1.0, 1.25, 1.75, 2.0])
  down = inception.resize_bilinear(
    jnp.array([1.0, 2.0, 3.0, 5.0]).reshape(1, 4, 1, 1), 2, 1
  )
  np.testing.assert_allclose(np.ravel(down), [1.5, 4.0])  # 2 taps each, no antialias


@pytest.mark.parametrize('in_hw', [(32, 32), (512, 512), (512, 384), (299, 299)])
def test_resize_matches_pytorch_formula_and_scipy(in_hw):
  x = np.random.default_rng(2).uniform(-1, 1, (2, *in_hw, 3)).astype(np.float32)
  ours = np.asarray(inception.resize_bilinear(jnp.asarray(x), 299, 299))
  np.testing.assert_allclose(
    ours, _torch_bilinear(x.astype(np.float64), 299, 299), atol=2e-6
  )
  zoom = (299 / in_hw[0], 299 / in_hw[1])
  z = scipy.ndimage.zoom(
    x[1, :, :, 2].astype(np.float64), zoom, order=1, grid_mode=True, mode='nearest'
  )
  np.testing.assert_allclose(ours[1, :, :, 2], z, atol=2e-6)
  if in_hw == (299, 299):
    np.testing.assert_array_equal(ours, x)
  if in_hw[0] > 299:  # jax.image.resize's default antialiasing is different
    smooth = jax.image.resize(x, (2, 299, 299, 3), 'linear')
    assert np.abs(np.asarray(smooth) - ours).max() > 0.1


def test_preprocess_chain():
  x = np.random.default_rng(3).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  out = inception.preprocess(x)
  assert out.shape == (2, 299, 299, 3) and out.dtype == jnp.float32
  # [-1, 1] -> x01 = (x + 1) / 2 -> resize -> 2 * x01 - 1 (pytorch-fid's chain).
  want = 2 * _torch_bilinear((x.astype(np.float64) + 1) / 2, 299, 299) - 1
  np.testing.assert_allclose(out, want, atol=2e-6)
  for value in (-1.0, 1.0, 0.25):  # the range maps onto itself
    np.testing.assert_allclose(
      inception.preprocess(np.full((1, 7, 9, 1), value)), value, atol=1e-6
    )
  gray = x[..., :1]
  out_gray = np.asarray(inception.preprocess(gray))
  np.testing.assert_array_equal(
    out_gray, np.asarray(inception.preprocess(np.repeat(gray, 3, -1)))
  )
  assert np.all(out_gray[..., 0] == out_gray[..., 2])
  with pytest.raises(ValueError, match='1 or 3'):
    inception.preprocess(np.zeros((1, 8, 8, 2)))
  with pytest.raises(TypeError, match='127.5'):
    inception.preprocess(np.zeros((1, 8, 8, 3), np.uint8))


# ----------------------------------------------------------------------------
# (d) Errors: missing file, failed or wrong download, mismatched or hostile file.


@pytest.fixture
def home(tmp_path, monkeypatch):
  monkeypatch.setenv('HOME', str(tmp_path))
  monkeypatch.delenv(inception.WEIGHTS_ENV_VAR, raising=False)
  return tmp_path / '.cache' / 'dcgan_jax'


def test_missing_file_offline(home, monkeypatch):
  calls = []

  def offline(url, timeout=None):
    calls.append(url)
    raise urllib.error.URLError('no network')

  monkeypatch.setattr(urllib.request, 'urlopen', offline)
  with pytest.raises(FileNotFoundError) as e:
    inception.load_fid_inception()
  message = str(e.value)
  assert calls == [inception.FID_WEIGHTS_URL]  # one attempt
  assert str(home / 'pt_inception-2015-12-05-6726825d.pth') in message
  assert inception.FID_WEIGHTS_URL in message and 'DCGAN_FID_WEIGHTS' in message
  assert 'no network' in message
  assert os.listdir(home) == []  # no partial download left


def test_given_path_missing_is_not_downloaded(home, tmp_path, monkeypatch):
  monkeypatch.setattr(
    urllib.request, 'urlopen', lambda *a, **k: pytest.fail('downloaded')
  )
  with pytest.raises(FileNotFoundError, match='nope.pth'):
    inception.load_fid_inception(tmp_path / 'nope.pth')


def test_download_with_wrong_hash_leaves_nothing(home, monkeypatch):
  monkeypatch.setattr(urllib.request, 'urlopen', lambda *a, **k: io.BytesIO(b'<html>'))
  with pytest.raises(FileNotFoundError, match='SHA-256'):
    inception.load_fid_inception()
  assert os.listdir(home) == []


def test_download_with_only_the_hash_prefix_right_is_refused(home, monkeypatch):
  blob = b'not the weights'
  actual = hashlib.sha256(blob).hexdigest()
  # The file name's 8 hex digits match, the rest does not: refused all the same.
  monkeypatch.setattr(inception, 'FID_WEIGHTS_SHA256', actual[:8] + '0' * 56)
  monkeypatch.setattr(urllib.request, 'urlopen', lambda *a, **k: io.BytesIO(blob))
  with pytest.raises(OSError) as e:
    inception.download_weights(str(home / 'w.pth'), url='https://x/w.pth')
  assert str(e.value) == (
    f'downloaded https://x/w.pth has SHA-256 {actual}, expected '
    f'{actual[:8]}{"0" * 56}: refusing it'
  )
  assert not home.exists() or os.listdir(home) == []


def test_published_file_constants():
  assert inception.FID_WEIGHTS_SHA256.startswith(inception.FID_WEIGHTS_SHA256_PREFIX)
  assert inception.FID_WEIGHTS_SHA256 == (
    '6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2'
  )
  assert inception.FID_WEIGHTS_SIZE == 95_628_359


def test_user_file_with_another_hash_is_used_but_not_official(
  tmp_path, monkeypatch, caplog
):
  path = tmp_path / 'mine.pth'
  path.write_bytes(b'user weights')
  sha = hashlib.sha256(b'user weights').hexdigest()
  with caplog.at_level('WARNING'):
    identity = inception.weights_identity(path)
  assert identity == {
    'inception_weights_sha256': sha,
    'inception_weights_official': False,
  }
  assert f'SHA-256 {sha}, not that of pytorch-fid' in caplog.text
  monkeypatch.setattr(inception, 'FID_WEIGHTS_SHA256', sha)
  assert inception.weights_identity(path)['inception_weights_official'] is True


def test_weights_are_hashed_once_per_path_size_and_mtime(tmp_path, monkeypatch):
  path = tmp_path / 'mine.pth'
  path.write_bytes(b'abc')
  opened = []
  real_open = files.open
  monkeypatch.setattr(files, 'open', lambda p, *a: opened.append(p) or real_open(p, *a))
  first = inception.file_sha256(path)
  assert inception.file_sha256(str(path)) == first and len(opened) == 1
  path.write_bytes(b'abd')
  os.utime(path, ns=(1, 1))
  assert inception.file_sha256(path) == hashlib.sha256(b'abd').hexdigest()
  assert len(opened) == 2


def test_download_then_load(home, standin, monkeypatch):
  _, zip_path, _ = standin
  blob = zip_path.read_bytes()
  monkeypatch.setattr(inception, 'FID_WEIGHTS_SHA256', hashlib.sha256(blob).hexdigest())
  monkeypatch.setattr(urllib.request, 'urlopen', lambda *a, **k: io.BytesIO(blob))
  _, variables = inception.load_fid_inception()
  assert os.listdir(home) == ['pt_inception-2015-12-05-6726825d.pth']
  assert (home / 'pt_inception-2015-12-05-6726825d.pth').read_bytes() == blob
  # The environment variable points elsewhere and wins; no download.
  monkeypatch.setattr(
    urllib.request, 'urlopen', lambda *a, **k: pytest.fail('downloaded')
  )
  monkeypatch.setenv('DCGAN_FID_WEIGHTS', str(zip_path))
  assert inception.default_weights_path() == str(zip_path)
  inception.load_fid_inception()


def test_weights_from_a_gs_url(loaded, standin, gcs_bucket, home, monkeypatch):
  """A gs:// weights path (argument or $DCGAN_FID_WEIGHTS) is read through
  the file layer: the same variables as the local file; a missing one says
  where it looked, as the URL (never a local path made from it)."""
  _, zip_path, _ = standin
  monkeypatch.setattr(
    urllib.request, 'urlopen', lambda *a, **k: pytest.fail('downloaded')
  )
  url = f'{gcs_bucket}/weights-{os.getpid()}/pt_inception.pth'
  files.write_atomic(url, zip_path.read_bytes())
  _, _, local = loaded
  _, remote = inception.load_fid_inception(url)
  for a, b in zip(jax.tree.leaves(local), jax.tree.leaves(remote), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  monkeypatch.setenv(inception.WEIGHTS_ENV_VAR, url)
  assert inception.resolve_weights(None, download=False) == url
  missing = f'{gcs_bucket}/weights-{os.getpid()}/missing.pth'
  with pytest.raises(FileNotFoundError) as e:
    inception.load_fid_inception(missing)
  assert f'not found: {missing} was given as path' in str(e.value)
  assert not os.path.exists('gs:')


def test_mismatched_file(tmp_path):
  sd = {
    'Conv2d_1a_3x3.conv.weight': np.zeros((32, 3, 3, 3), np.float32),
    'fc.weight': np.zeros((10, 2048), np.float32),
    'AuxLogits.fc.weight': np.zeros((1008, 768), np.float32),
  }
  path = tmp_path / 'other.pth'
  write_pth(path, sd, 'zip')
  with pytest.raises(ValueError) as e:
    inception.load_fid_inception(path)
  message = str(e.value)
  assert str(path) in message
  assert 'fc.weight: file (10, 2048), network (1008, 2048)' in message
  assert '1 not in the network, first: AuxLogits.fc.weight' in message
  assert '470 missing from the file, first: Conv2d_1a_3x3.bn.bias' in message


def test_refuses_other_globals(tmp_path):
  target = tmp_path / 'pwned'

  class Evil:
    def __reduce__(self):
      return os.mkdir, (str(target),)

  path = tmp_path / 'evil.pth'
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', pickle.dumps({'x': Evil()}, protocol=2))
  with pytest.raises(ValueError, match='refusing to load global posix.mkdir'):
    pth_reader.load_state_dict(path)
  assert not target.exists()


def test_legacy_storage_views(tmp_path):
  root = _Storage('0', np.arange(6, dtype=np.float32))
  view = _StorageView('1', root, 2, 3)
  tensors = collections.OrderedDict(
    whole=_Tensor(root, 0, (2, 3), (3, 1)),
    part=_Tensor(view, 1, (2,), (1,)),
  )
  _write(tmp_path / 'views.pth', tensors, [root], 'legacy')
  read = pth_reader.load_state_dict(tmp_path / 'views.pth')
  np.testing.assert_array_equal(read['whole'], [[0, 1, 2], [3, 4, 5]])
  np.testing.assert_array_equal(read['part'], [3, 4])


def test_not_a_torch_file(tmp_path):
  path = tmp_path / 'junk.pth'
  path.write_bytes(b'\x00' * 64)
  with pytest.raises(pth_reader.PthFormatError, match='neither a zip nor a legacy'):
    pth_reader.load_state_dict(path)
  write_pth(path, {'fc.bias': np.zeros(3, np.float32)}, 'legacy')
  path.write_bytes(path.read_bytes()[:-4])  # truncated storage data
  with pytest.raises(pth_reader.PthFormatError, match='cut short'):
    pth_reader.load_state_dict(path)
