"""Checks of a config before anything compiles, with what to change.

Every numeric key of configs/default.py has a range here, every string key
its choices; a message names the key, the value, what is allowed and the
flag that changes it (`--config.KEY=...`).
"""

import math
from collections.abc import Iterable
from typing import Any

import ml_collections

from dcgan_jax.core import losses
from dcgan_jax.data import input_pipeline
from dcgan_jax.networks import models
from dcgan_jax.util import files
from dcgan_jax.util.errors import ConfigError

EVAL_METRICS = ('classifier', 'inception', 'memorization', 'checkerboard')

# Keys that count something: (key, smallest allowed value, that rule in words).
_COUNTS = (
  ('seed', 0, '>= 0'),
  ('num_seeds', 1, '>= 1'),
  ('model.z_dim', 1, '>= 1'),
  ('model.g_width', 1, '>= 1'),
  ('model.d_width', 1, '>= 1'),
  ('model.mlp_hidden', 1, '>= 1'),
  ('num_train_steps', 1, 'positive'),
  ('log_every_steps', 1, 'positive'),
  ('sample_every_steps', 1, 'positive'),
  ('checkpoint_every_steps', 1, 'positive'),
  ('keep_checkpoints', 1, 'positive'),
  ('num_sample_images', 1, 'positive'),
  ('monitor_d_wins_window', 1, 'positive'),
  ('monitor_collapse_warmup_steps', 0, '>= 0'),
  ('eval_every_steps', 0, '>= 0 (0: never)'),
  ('ema_start_step', 0, '>= 0'),
  ('model.num_classes', 0, '>= 0'),
  ('reduction_shards', 0, '>= 0 (0: off)'),
)
# Real-valued keys: (key, low, low included, high, high included); None: no bound.
_REALS = (
  ('model.bn_momentum', 0.0, True, 1.0, False),
  ('model.bn_epsilon', 0.0, False, None, False),
  ('model.leaky_slope', 0.0, True, 1.0, False),
  ('model.init_std', 0.0, False, None, False),
  ('model.dropout_rate', 0.0, True, 1.0, False),
  ('g_learning_rate', 0.0, False, None, False),
  ('d_learning_rate', 0.0, False, None, False),
  ('sgd_momentum', 0.0, True, 1.0, False),
  ('b1', 0.0, True, 1.0, False),
  ('b2', 0.0, True, 1.0, False),
  ('real_label', 0.0, False, 1.0, True),
  ('monitor_collapse_ratio', 0.0, True, 1.0, True),
  ('adam_eps', 0.0, False, None, False),
  ('weight_decay', 0.0, True, None, False),
  ('gp_weight', 0.0, True, None, False),
  ('ema_decay', 0.0, True, 1.0, False),
)
# Keys with a fixed set of values.
_CHOICES = (
  ('ensemble', ('unroll', 'vmap')),
  ('num_channels', models.NUM_CHANNELS),
  ('crop', input_pipeline.CROPS),
  ('cache', input_pipeline.CACHES),
  ('bad_images', input_pipeline.BAD_IMAGES),
  ('model.arch', models.ARCHS),
  ('model.z_dist', models.Z_DISTS),
  ('model.kernel_size', models.KERNEL_SIZES),
  ('model.upsample', models.UPSAMPLES),
  ('model.resize_method', models.RESIZE_METHODS),
  ('model.conv_impl', models.CONV_IMPLS),
  ('model.compute_dtype', models.COMPUTE_DTYPES),
  ('optimizer', ('adam', 'sgd')),
  ('nonfinite', ('stop', 'skip')),
  ('sample_batchnorm', ('running', 'batch')),
  ('model.init', models.INITS),
  ('loss', losses.LOSSES),
  ('update_order', ('sequential', 'simultaneous')),
  ('lr_schedule', ('constant', 'linear')),
)
_BOOLS = (
  'download',
  'model.g_batchnorm',
  'model.d_batchnorm',
  'model.d_spectral_norm',
  'conditional',
  'sync_batchnorm',
  'deterministic_gpu',
)


def _fail(key: str, rule: str, value: Any) -> None:
  raise ConfigError(
    f'Invalid config: {key} must be {rule}, got {value!r}; '
    f'change it with --config.{key}=...'
  )


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
  """config['a.b'] for a dotted key; None where it is missing (old configs)."""
  for name in key.split('.'):
    if config is None or name not in config:
      return None
    config = config[name]
  return config


def _is_real(value: Any) -> bool:
  return isinstance(value, int | float) and not isinstance(value, bool)


def _alternatives(choices: Iterable[Any]) -> str:
  quoted = [repr(c) for c in choices]
  return (
    ' or '.join(quoted)
    if len(quoted) < 3
    else f'{", ".join(quoted[:-1])} or {quoted[-1]}'
  )


def _interval(low, low_in, high, high_in) -> str:
  if high is None:
    return f'>= {low:g}' if low_in else f'> {low:g} (and finite)'
  return f'in {"[" if low_in else "("}{low:g}, {high:g}{"]" if high_in else ")"}'


def check_ranges(config: ml_collections.ConfigDict) -> None:
  """Each key of configs/default.py alone: its type, range or choices."""
  for key, low, rule in _COUNTS:
    value = _get(config, key)
    if value is None:
      continue
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
      _fail(key, rule, value)
  for key, low, low_in, high, high_in in _REALS:
    value = _get(config, key)
    if value is None:
      continue
    ok = _is_real(value) and math.isfinite(value)
    ok = ok and (value >= low if low_in else value > low)
    if high is not None:
      ok = ok and (value <= high if high_in else value < high)
    if not ok:
      _fail(key, _interval(low, low_in, high, high_in), value)
  for key, choices in _CHOICES:
    value = _get(config, key)
    if value is not None and value not in choices:
      _fail(key, _alternatives(choices), value)
  for key in _BOOLS:
    value = _get(config, key)
    if value is not None and not isinstance(value, bool):
      _fail(key, 'True or False', value)
  for key in ('dataset', 'split', 'image_key', 'label_key'):
    value = _get(config, key)
    if value is not None and (not isinstance(value, str) or not value):
      _fail(key, 'a non-empty string', value)


def check_image_size(config: ml_collections.ConfigDict) -> None:
  """config.image_size against what config.model.arch makes."""
  arch, size = config.model.arch, config.image_size
  if arch == 'dcgan':
    ok = size in models.DCGAN_IMAGE_SIZES
    rule = (
      f"a power of two in {models.DCGAN_IMAGE_SIZES} for model.arch='dcgan' "
      "(28 for 'tf_tutorial' and 'conv28')"
    )
  elif arch == 'mlp':
    ok, rule = isinstance(size, int) and size >= 8, ">= 8 for model.arch='mlp'"
  else:
    ok, rule = size == 28, f'28 for model.arch={arch!r}'
  if not ok:
    _fail('image_size', rule, size)


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Fails fast, before anything compiles, with what to change."""

  def need(ok: bool, message: str):
    if not ok:
      raise ConfigError(f'Invalid config: {message}')

  check_ranges(config)
  need(
    config.global_batch_size > 0 and config.global_batch_size % num_devices == 0,
    f'global_batch_size={config.global_batch_size} must be a positive multiple '
    f'of the {num_devices} devices; set --config.global_batch_size to one.',
  )
  check_shards(config, num_devices)
  check_paths(config)
  check_image_size(config)
  check_objective(config)
  try:  # Combinations: g_width against image_size, and what else models checks.
    models.create_models(
      config.model, image_size=config.image_size, num_channels=config.num_channels
    )
  except ValueError as e:
    raise ConfigError(f'Invalid config: {e}') from e
  if config.eval_every_steps:
    need(
      config.eval_num_samples >= 10,
      f'eval_num_samples must be at least 10, got {config.eval_num_samples}; '
      'change it with --config.eval_num_samples=...',
    )
    metrics = eval_metrics(config)
    need(
      bool(metrics) and set(metrics) <= set(EVAL_METRICS),
      "eval_metrics must be a comma-separated list of 'classifier', "
      "'inception', 'memorization' and 'checkerboard', got "
      f'{config.eval_metrics!r}; change it with --config.eval_metrics=...',
    )


def check_shards(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """The device-count-invariant mode's shards against the batch, the device
  count and synchronised BatchNorm."""
  shards, batch = config.get('reduction_shards', 0), config.global_batch_size
  if not shards:
    return
  if batch % shards:
    raise ConfigError(
      f'Invalid config: global_batch_size={batch} must be a multiple of '
      f'reduction_shards={shards} (shards of equal size); change one of them.'
    )
  if shards % num_devices:
    raise ConfigError(
      f'Invalid config: reduction_shards={shards} must be a multiple of the '
      f'{num_devices} devices (each holds the same number of shards); use a '
      'multiple of every device count the run may see (8 covers 1, 2, 4 and 8).'
    )
  if shards > 1 and config.sync_batchnorm:
    raise ConfigError(
      f'Invalid config: reduction_shards={shards} normalises each shard of '
      f'{batch // shards} examples with its own BatchNorm statistics; set '
      '--config.sync_batchnorm=False to accept that, or --config.reduction_shards=0.'
    )


def check_objective(config: ml_collections.ConfigDict) -> None:
  """The loss against the keys it rules out; the class-conditional keys."""
  if config.model.get('num_classes', 0) and not config.get('conditional', False):
    raise ConfigError(
      f'Invalid config: model.num_classes={config.model.num_classes} is for '
      'class-conditional models; set --config.conditional=True or '
      '--config.model.num_classes=0.'
    )
  loss = config.get('loss', 'bce')
  has_bn = config.model.d_batchnorm and config.model.arch in ('dcgan', 'conv28')
  if loss == 'wgan_gp' and has_bn:
    raise ConfigError(
      "Invalid config: loss='wgan_gp' penalises D's gradient per example, which "
      'BatchNorm in D makes depend on the whole batch; set '
      '--config.model.d_batchnorm=False (Gulrajani et al. use no normalisation '
      'in D) or pick another --config.loss.'
    )
  if loss != 'bce' and config.real_label != 1.0:
    raise ConfigError(
      f'Invalid config: real_label={config.real_label} (label smoothing) only '
      f"applies to loss='bce', not {loss!r}; set --config.real_label=1.0."
    )


def check_paths(config: ml_collections.ConfigDict) -> None:
  """Every path of `config` is a local path or a URL the file layer serves
  (`util.files`); the disk cache is local."""
  dataset = config.get('dataset') or ''
  paths = {
    'data_dir': config.get('data_dir'),
    'cache_dir': config.get('cache_dir'),
    'inception_weights': config.get('inception_weights'),
    'dataset': dataset.split(':', 1)[1]
    if dataset.startswith(('folder:', 'idx:'))
    else None,
  }
  for key, path in paths.items():
    if path:
      try:
        files.check(path, f'config.{key}')
      except ValueError as e:
        raise ConfigError(f'Invalid config: {e}') from e
  if paths['cache_dir'] and files.is_url(paths['cache_dir']):
    raise ConfigError(
      f'Invalid config: cache_dir={paths["cache_dir"]!r} must be a local '
      'directory (the disk cache is memory-mapped); unset it or give a local path.'
    )


def eval_metrics(config: ml_collections.ConfigDict) -> list[str]:
  """config.eval_metrics as a list of metric names."""
  return [m.strip() for m in config.get('eval_metrics', '').split(',') if m.strip()]
