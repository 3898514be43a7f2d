"""Checks of a config before anything compiles, with what to change."""

import ml_collections

from dcgan_jax.networks import models
from dcgan_jax.util import files
from dcgan_jax.util.errors import ConfigError

EVAL_METRICS = ('classifier', 'inception', 'memorization')


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Fails fast, before anything compiles, with what to change."""

  def need(ok: bool, message: str):
    if not ok:
      raise ConfigError(f'Invalid config: {message}')

  need(
    config.global_batch_size > 0 and config.global_batch_size % num_devices == 0,
    f'global_batch_size={config.global_batch_size} must be a positive multiple '
    f'of the {num_devices} devices; set --config.global_batch_size to one.',
  )
  need(config.num_train_steps > 0, 'num_train_steps must be positive.')
  check_paths(config)
  need(config.num_seeds >= 1, f'num_seeds must be >= 1 (got {config.num_seeds}).')
  need(
    config.ensemble in ('unroll', 'vmap'),
    f"ensemble must be 'unroll' or 'vmap', got {config.ensemble!r}.",
  )
  try:  # Architecture, image size, channels, kernel, upsampling, z.
    models.create_models(
      config.model, image_size=config.image_size, num_channels=config.num_channels
    )
  except ValueError as e:
    raise ConfigError(f'Invalid config: {e}') from e
  for key in ('log_every_steps', 'sample_every_steps', 'checkpoint_every_steps'):
    need(config[key] > 0, f'{key} must be positive (got {config[key]}).')
  need(config.keep_checkpoints > 0, 'keep_checkpoints must be positive.')
  need(config.num_sample_images > 0, 'num_sample_images must be positive.')
  need(
    config.sample_batchnorm in ('running', 'batch'),
    f"sample_batchnorm must be 'running' or 'batch', got {config.sample_batchnorm!r}.",
  )
  need(
    config.num_channels in (1, 3),
    f'num_channels must be 1 or 3, got {config.num_channels}.',
  )
  need(
    0.0 < config.real_label <= 1.0,
    f'real_label must be in (0, 1], got {config.real_label}.',
  )
  need(
    config.nonfinite in ('stop', 'skip'),
    f"nonfinite must be 'stop' or 'skip', got {config.nonfinite!r}.",
  )
  need(
    config.optimizer in ('adam', 'sgd'),
    f"optimizer must be 'adam' or 'sgd', got {config.optimizer!r}.",
  )
  for key in ('g_learning_rate', 'd_learning_rate'):
    need(config[key] > 0, f'{key} must be positive (got {config[key]}).')
  need(
    0.0 <= config.b1 < 1.0 and 0.0 <= config.b2 < 1.0,
    f'b1 and b2 must be in [0, 1), got {config.b1}, {config.b2}.',
  )
  need(
    config.eval_every_steps >= 0,
    f'eval_every_steps must be >= 0 (0: never), got {config.eval_every_steps}.',
  )
  if config.eval_every_steps:
    need(
      config.eval_num_samples >= 10,
      f'eval_num_samples must be at least 10, got {config.eval_num_samples}.',
    )
    metrics = eval_metrics(config)
    need(
      bool(metrics) and set(metrics) <= set(EVAL_METRICS),
      "eval_metrics must be a comma-separated list of 'classifier', "
      f"'inception' and 'memorization', got {config.eval_metrics!r}.",
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
