"""Every user error of `python launch.py` is one line `Error: ...`, exit 1.

The ranges of the config keys are checked in process (`validate_config`);
a handful of real `launch.py` runs check that flag parsing, the config
checks and the data checks reach the user as that one line, with no
traceback, and (before compilation) without a checkpoints/ directory.
"""

import importlib
import math
import os
import subprocess

import pytest
import runs

from configs import default as default_config
from dcgan_jax.core import config_checks
from dcgan_jax.util import errors

PRESETS = sorted(
  name[:-3] for name in os.listdir(os.path.join(runs.REPO, 'configs'))
  if name.endswith('.py')
)  # fmt: skip


def _config(**overrides):
  """configs/default.py with `overrides` by dotted key."""
  config = default_config.get_config()
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    target = config
    for name in parents:
      target = target[name]
    target[leaf] = value
  return config


def _message(key, rule, value):
  return (
    f'Invalid config: {key} must be {rule}, got {value!r}; '
    f'change it with --config.{key}=...'
  )


@pytest.mark.parametrize('preset', PRESETS)
def test_every_preset_passes(preset):
  config = importlib.import_module(f'configs.{preset}').get_config()
  config_checks.validate_config(config, 1)


def _dotted_keys(config, prefix=''):
  for key, value in config.items():
    if hasattr(value, 'items'):
      yield from _dotted_keys(value, f'{prefix}{key}.')
    else:
      yield prefix + key


def test_every_key_of_the_default_config_is_checked():
  checked = {
    *(key for key, *_ in config_checks._COUNTS),
    *(key for key, *_ in config_checks._REALS),
    *(key for key, _ in config_checks._CHOICES),
    *config_checks._BOOLS,
    # Checked on their own: together with other keys, or as paths.
    'global_batch_size', 'image_size', 'eval_num_samples', 'eval_metrics',
    'dataset', 'split', 'image_key', 'label_key', 'data_dir', 'cache_dir', 'inception_weights',
  }  # fmt: skip
  assert set(_dotted_keys(default_config.get_config())) <= checked


NAN, INF = math.nan, math.inf
OUT_OF_RANGE = [
  ('seed', -1, '>= 0'),
  ('num_seeds', 0, '>= 1'),
  ('model.z_dim', 0, '>= 1'),
  ('model.g_width', 0, '>= 1'),
  ('model.d_width', 0, '>= 1'),
  ('model.mlp_hidden', 0, '>= 1'),
  ('num_train_steps', 0, 'positive'),
  ('log_every_steps', 0, 'positive'),
  ('sample_every_steps', -5, 'positive'),
  ('checkpoint_every_steps', 0, 'positive'),
  ('keep_checkpoints', 0, 'positive'),
  ('num_sample_images', 0, 'positive'),
  ('monitor_d_wins_window', 0, 'positive'),
  ('eval_every_steps', -1, '>= 0 (0: never)'),
  ('model.bn_momentum', 1.0, 'in [0, 1)'),
  ('model.bn_momentum', -0.1, 'in [0, 1)'),
  ('model.bn_epsilon', 0.0, '> 0 (and finite)'),
  ('model.leaky_slope', 1.0, 'in [0, 1)'),
  ('model.init_std', 0.0, '> 0 (and finite)'),
  ('model.init_std', INF, '> 0 (and finite)'),
  ('model.dropout_rate', 1.0, 'in [0, 1)'),
  ('g_learning_rate', 0.0, '> 0 (and finite)'),
  ('d_learning_rate', INF, '> 0 (and finite)'),
  ('d_learning_rate', NAN, '> 0 (and finite)'),
  ('sgd_momentum', 1.0, 'in [0, 1)'),
  ('b1', 1.0, 'in [0, 1)'),
  ('b2', -0.5, 'in [0, 1)'),
  ('real_label', 0.0, 'in (0, 1]'),
  ('real_label', 1.5, 'in (0, 1]'),
  ('monitor_collapse_ratio', 1.5, 'in [0, 1]'),
  ('model.z_dist', 'gaussian', "'uniform' or 'normal'"),
  ('model.arch', 'stylegan', "'dcgan', 'tf_tutorial', 'conv28' or 'mlp'"),
  ('model.kernel_size', 3, '4 or 5'),
  ('model.upsample', 'pixel_shuffle', "'transpose' or 'resize_conv'"),
  ('model.resize_method', 'cubic', "'nearest' or 'bilinear'"),
  ('model.conv_impl', 'cudnn', "'auto', 'phases' or 'xla'"),
  ('model.compute_dtype', 'float16', "'float32' or 'bfloat16'"),
  ('ensemble', 'pmap', "'unroll' or 'vmap'"),
  ('num_channels', 2, '1 or 3'),
  ('crop', 'left', "'center', 'celeba' or 'none'"),
  ('cache', 'gpu', "'memory' or 'disk'"),
  ('bad_images', 'ignore', "'error' or 'skip'"),
  ('optimizer', 'rmsprop', "'adam' or 'sgd'"),
  ('nonfinite', 'ignore', "'stop' or 'skip'"),
  ('sample_batchnorm', 'ema', "'running' or 'batch'"),
  ('split', '', 'a non-empty string'),
  ('adam_eps', 0.0, '> 0 (and finite)'),
  ('weight_decay', -1e-5, '>= 0'),
  ('gp_weight', -1.0, '>= 0'),
  ('ema_decay', 1.0, 'in [0, 1)'),
  ('ema_start_step', -1, '>= 0'),
  ('loss', 'wgan', "'bce', 'hinge', 'least_squares' or 'wgan_gp'"),
  ('update_order', 'alternating', "'sequential' or 'simultaneous'"),
  ('lr_schedule', 'cosine', "'constant' or 'linear'"),
  ('model.init', 'he', "'normal' or 'glorot_uniform'"),
]


@pytest.mark.parametrize(('key', 'value', 'rule'), OUT_OF_RANGE)
def test_out_of_range_keys_name_key_value_and_range(key, value, rule):
  config = _config(**{key: value})
  with pytest.raises(errors.ConfigError) as error:
    config_checks.validate_config(config, 1)
  assert str(error.value) == _message(key, rule, value)


@pytest.mark.parametrize(
  ('overrides', 'rule'),
  [
    ({'image_size': 48}, "a power of two in (16, 32, 64, 128) for model.arch='dcgan'"),
    ({'image_size': 32, 'model.arch': 'conv28'}, "28 for model.arch='conv28'"),
    ({'image_size': 4, 'model.arch': 'mlp'}, ">= 8 for model.arch='mlp'"),
  ],
)
def test_image_size_against_arch(overrides, rule):
  with pytest.raises(
    errors.ConfigError, match='^Invalid config: image_size must be'
  ) as e:
    config_checks.validate_config(_config(**overrides), 1)
  assert rule in str(e.value)
  assert str(e.value).endswith('change it with --config.image_size=...')


@pytest.mark.parametrize(
  ('overrides', 'remedy'),
  [
    ({'loss': 'wgan_gp'}, '--config.model.d_batchnorm=False'),
    ({'loss': 'hinge', 'real_label': 0.9}, '--config.real_label=1.0'),
  ],
)
def test_loss_against_the_keys_it_rules_out(overrides, remedy):
  with pytest.raises(errors.ConfigError, match='^Invalid config: ') as e:
    config_checks.validate_config(_config(**overrides), 1)
  assert remedy in str(e.value) and '\n' not in str(e.value)
  fixed = {**overrides, 'real_label': 1.0}
  if 'wgan' in str(e.value):
    fixed['model.d_batchnorm'] = False
  config_checks.validate_config(_config(**fixed), 1)


def _launch(workdir, data_dir, *extra, **overrides):
  command = runs.launch_command(workdir, data_dir, **overrides) + list(extra)
  return subprocess.run(
    command, cwd=runs.REPO, capture_output=True, text=True, timeout=300
  )


def _assert_one_line_error(proc, expected):
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1] == expected


@pytest.mark.parametrize(
  ('overrides', 'devices', 'remedy'),
  [
    ({'reduction_shards': 3}, 1, 'global_batch_size=128 must be a multiple of'),
    ({'reduction_shards': 4}, 8, 'must be a multiple of the 8 devices'),
    ({'reduction_shards': 8}, 1, '--config.sync_batchnorm=False'),
  ],
)
def test_reduction_shards_against_batch_devices_and_batchnorm(
  overrides, devices, remedy
):
  with pytest.raises(errors.ConfigError, match='^Invalid config: ') as e:
    config_checks.validate_config(_config(**overrides), devices)
  assert remedy in str(e.value) and '\n' not in str(e.value)
  config_checks.validate_config(_config(reduction_shards=8, sync_batchnorm=False), 8)


@pytest.mark.parametrize(
  ('args', 'expected'),
  [
    (
      ['--config.model.zdim=8'],
      "Error: unknown config key 'model.zdim' (--config.model.zdim): did you "
      "mean 'model.z_dim'? configs/default.py lists every key.",
    ),
    (
      ['--config.num_train_steps=abc'],
      'Error: --config.num_train_steps=abc is not an integer; give an integer, '
      'as in --config.num_train_steps=2000.',
    ),
    (
      ['--config.model.z_dist=gaussian'],
      'Error: ' + _message('model.z_dist', "'uniform' or 'normal'", 'gaussian'),
    ),
  ],
  ids=['unknown_key', 'bad_type', 'z_dist'],
)
def test_launch_errors_before_compiling(tmp_path, data_dir, args, expected):
  workdir = tmp_path / 'run'
  _assert_one_line_error(_launch(workdir, data_dir, *args), expected)
  assert not os.path.exists(workdir / 'checkpoints')


def test_launch_batch_larger_than_the_data_set(tmp_path, data_dir):
  workdir = tmp_path / 'run'
  proc = _launch(workdir, data_dir, global_batch_size=2048, num_train_steps=1)
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last == (
    "Error: Cannot train on config.dataset='digits': The data set has 1797 "
    'examples, fewer than one global batch (2048); lower '
    'config.global_batch_size or use more data.'
  )
  assert not os.path.exists(workdir / 'checkpoints')
