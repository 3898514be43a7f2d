"""DCGAN training: the state, the pmap-ed step, the loop, checkpoints, writers.

Keys and data order are pure functions of (seed, step): the root key from
`config.seed` is split once into init / train / sample keys, every step uses
`fold_in(train_key, step)`, and the batch of step s is fixed by the input
pipeline. A run resumed from a checkpoint therefore continues exactly as an
uninterrupted one would.
"""

import dataclasses
import functools
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers, metrics, periodic_actions
from flax import jax_utils, struct
from flax import linen as nn
from jax.experimental import multihost_utils

from dcgan_jax import input_pipeline, manifest, models, monitors, sample

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
SAMPLES_DIR = 'samples'

PyTree = Any


class GANState(struct.PyTreeNode):
  """Everything that changes during training, explicitly."""

  step: jax.Array
  g_params: PyTree
  g_batch_stats: PyTree
  g_opt_state: optax.OptState
  d_params: PyTree
  d_batch_stats: PyTree
  d_opt_state: optax.OptState


def _mean_of(name: str, mask: str):
  """An Average of model output `name` over the steps where `mask` is true.

  Without a `mask` output, every step counts.
  """

  @struct.dataclass
  class MaskedAverage(metrics.Average):
    @classmethod
    def from_model_output(cls, **outputs) -> metrics.Average:
      ok = outputs.get(mask)
      return super().from_model_output(
        jnp.asarray(outputs[name])[None], mask=None if ok is None else ok[None]
      )

  return MaskedAverage


@struct.dataclass
class TrainMetrics(metrics.Collection):
  """Means over the steps since the last log.

  `d_nonfinite` / `g_nonfinite` are the fraction of steps whose D / G update
  had a non-finite loss, gradient or result. With `nonfinite='skip'` those
  updates were not applied, and the other metrics average the applied ones.
  """

  d_loss: _mean_of('d_loss', 'd_applied')
  g_loss: _mean_of('g_loss', 'g_applied')
  d_real: _mean_of('d_real', 'd_applied')
  d_fake: _mean_of('d_fake', 'd_applied')
  d_fake_after: _mean_of('d_fake_after', 'g_applied')
  d_grad_norm: _mean_of('d_grad_norm', 'd_applied')
  g_grad_norm: _mean_of('g_grad_norm', 'g_applied')
  d_nonfinite: metrics.Average.from_output('d_nonfinite')
  g_nonfinite: metrics.Average.from_output('g_nonfinite')


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What `train_step` needs besides state and data (hashable: static)."""

  generator: nn.Module
  discriminator: nn.Module
  g_tx: optax.GradientTransformation
  d_tx: optax.GradientTransformation
  z_dim: int
  z_dist: str
  real_label: float
  sync_batchnorm: bool
  # Leave out (rather than apply) an update whose loss, gradients or result
  # are not finite on some device.
  skip_nonfinite: bool = False


def split_root_key(root_key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(init_key, train_key, sample_key): the only split of the root key."""
  init_key, train_key, sample_key = jax.random.split(root_key, 3)
  return init_key, train_key, sample_key


def create_optimizers(config: ml_collections.ConfigDict):
  """(g_tx, d_tx): Adam (paper: lr 2e-4, beta1 0.5) or SGD with momentum."""

  def make(learning_rate):
    if config.optimizer == 'sgd':
      return optax.sgd(learning_rate, momentum=config.sgd_momentum or None)
    return optax.adam(learning_rate, b1=config.b1, b2=config.b2)

  return make(config.g_learning_rate), make(config.d_learning_rate)


def create_state(
  generator: nn.Module,
  discriminator: nn.Module,
  g_tx: optax.GradientTransformation,
  d_tx: optax.GradientTransformation,
  init_key: jax.Array,
  *,
  z_dim: int,
  image_shape: tuple[int, int, int],
) -> GANState:
  """Fresh parameters, BatchNorm statistics and optimizer states at step 0."""
  g_key, d_key, dropout_key = jax.random.split(init_key, 3)
  g_vars = generator.init(g_key, jnp.zeros((1, z_dim)), train=False)
  d_vars = discriminator.init(
    {'params': d_key, 'dropout': dropout_key},
    jnp.zeros((1, *image_shape)),
    train=False,
  )
  return GANState(
    step=jnp.zeros((), jnp.int32),
    g_params=g_vars['params'],
    g_batch_stats=g_vars.get('batch_stats', {}),
    g_opt_state=g_tx.init(g_vars['params']),
    d_params=d_vars['params'],
    d_batch_stats=d_vars.get('batch_stats', {}),
    d_opt_state=d_tx.init(d_vars['params']),
  )


def _bce(logits: jax.Array, target: float) -> jax.Array:
  return optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, target))


def _noise(
  state: GANState, local_batch: int, train_key: jax.Array, hyper, axis_name: str
):
  """This device's slice of the global batch's z, and its dropout keys."""
  num_devices = jax.lax.psum(1, axis_name)
  device_index = jax.lax.axis_index(axis_name)
  step_key = jax.random.fold_in(train_key, state.step)
  z_key, dropout_key = jax.random.split(step_key)
  z = models.sample_z(z_key, local_batch * num_devices, hyper.z_dim, hyper.z_dist)
  z = jax.lax.dynamic_slice_in_dim(z, device_index * local_batch, local_batch)
  # Dropout (only in 'tf_tutorial' D) is drawn per device.
  dropout_keys = jax.random.split(jax.random.fold_in(dropout_key, device_index), 3)
  return z, dropout_keys


def _apply_d(hyper, d_params, batch_stats, x, dropout_key):
  logits, new_vars = hyper.discriminator.apply(
    {'params': d_params, 'batch_stats': batch_stats},
    x,
    train=True,
    rngs={'dropout': dropout_key},
    mutable=['batch_stats'],
  )
  return logits, new_vars.get('batch_stats', {})


def _all_finite(axis_name: str, *trees: PyTree) -> jax.Array:
  """True iff every leaf of `trees` is finite on every device."""
  # 0 * x is NaN exactly where x is inf or NaN: one fused reduction a leaf.
  total = sum(jnp.sum(0 * leaf, dtype=jnp.float32) for leaf in jax.tree.leaves(trees))
  ok = jnp.isfinite(total)
  return jax.lax.pmin(ok.astype(jnp.int32), axis_name).astype(bool)


def _apply_if(ok: jax.Array, new: GANState, old: GANState) -> GANState:
  return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)


def d_update(
  state: GANState,
  images: jax.Array,
  fake: jax.Array,
  dropout_keys: jax.Array,
  *,
  hyper: StepConfig,
  axis_name: str = 'batch',
) -> tuple[GANState, dict[str, jax.Array], jax.Array]:
  """One Adam step of D on BCE(D(x), real_label) + BCE(D(fake), 0).

  Real and fake go through D as separate batches (separate BatchNorm
  statistics, as the paper's code). Only D's fields of the state change.
  Also returns whether the update was finite on every device (if not, and
  `hyper.skip_nonfinite`, D's fields are returned unchanged).
  """

  def loss_fn(d_params):
    real_logits, stats = _apply_d(
      hyper, d_params, state.d_batch_stats, images, dropout_keys[0]
    )
    fake_logits, stats = _apply_d(
      hyper, d_params, stats, jax.lax.stop_gradient(fake), dropout_keys[1]
    )
    loss = _bce(real_logits, hyper.real_label).mean() + _bce(fake_logits, 0.0).mean()
    return loss, (stats, real_logits, fake_logits)

  (loss, (stats, real_logits, fake_logits)), grads = jax.value_and_grad(
    loss_fn, has_aux=True
  )(state.d_params)
  grads = jax.lax.pmean(grads, axis_name)
  updates, opt_state = hyper.d_tx.update(grads, state.d_opt_state, state.d_params)
  if not hyper.sync_batchnorm:  # Per-device statistics: average the EMAs.
    stats = jax.lax.pmean(stats, axis_name)
  new_state = state.replace(
    d_params=optax.apply_updates(state.d_params, updates),
    d_batch_stats=stats,
    d_opt_state=opt_state,
  )
  ok = _all_finite(
    axis_name, loss, grads, new_state.d_params, stats, new_state.d_opt_state
  )
  if hyper.skip_nonfinite:
    new_state = _apply_if(ok, new_state, state)
  outputs = {
    'd_loss': loss,
    'd_real': jax.nn.sigmoid(real_logits).mean(),
    'd_fake': jax.nn.sigmoid(fake_logits).mean(),
    'd_grad_norm': optax.global_norm(grads),
  }
  return new_state, outputs, ok


def g_update(
  state: GANState,
  fake: jax.Array,
  g_vjp,
  g_batch_stats: PyTree,
  dropout_key: jax.Array,
  *,
  hyper: StepConfig,
  axis_name: str = 'batch',
) -> tuple[GANState, dict[str, jax.Array], jax.Array]:
  """One Adam step of G on the non-saturating loss BCE(D(G(z)), 1).

  D is the one just updated. `fake` and `g_vjp` come from G's forward pass
  at the current G parameters (`jax.vjp`), which the D update did not touch.
  Returns the finiteness flag as `d_update` does.
  """

  def loss_fn(fake):
    logits, _ = _apply_d(hyper, state.d_params, state.d_batch_stats, fake, dropout_key)
    return _bce(logits, 1.0).mean(), logits

  (loss, logits), fake_grads = jax.value_and_grad(loss_fn, has_aux=True)(fake)
  (grads,) = g_vjp(fake_grads)
  grads = jax.lax.pmean(grads, axis_name)
  updates, opt_state = hyper.g_tx.update(grads, state.g_opt_state, state.g_params)
  if not hyper.sync_batchnorm:
    g_batch_stats = jax.lax.pmean(g_batch_stats, axis_name)
  new_state = state.replace(
    g_params=optax.apply_updates(state.g_params, updates),
    g_batch_stats=g_batch_stats,
    g_opt_state=opt_state,
  )
  ok = _all_finite(
    axis_name, loss, grads, new_state.g_params, g_batch_stats, new_state.g_opt_state
  )
  if hyper.skip_nonfinite:
    new_state = _apply_if(ok, new_state, state)
  outputs = {
    'g_loss': loss,
    'd_fake_after': jax.nn.sigmoid(logits).mean(),
    'g_grad_norm': optax.global_norm(grads),
  }
  return new_state, outputs, ok


def train_step(
  state: GANState,
  images: jax.Array,
  train_key: jax.Array,
  *,
  hyper: StepConfig,
  axis_name: str = 'batch',
) -> tuple[GANState, TrainMetrics]:
  """One D update on a real and a fake batch, then one G update.

  Runs inside `pmap` over `axis_name`. z is drawn for the global batch from
  `fold_in(train_key, step)` and each device takes its slice, so the result
  does not depend on how many devices share the batch. G runs forward once:
  its VJP serves the G update, which equals a second forward pass since G's
  parameters do not change in between.
  """
  z, dropout_keys = _noise(state, images.shape[0], train_key, hyper, axis_name)

  def g_forward(g_params):
    fake, new_vars = hyper.generator.apply(
      {'params': g_params, 'batch_stats': state.g_batch_stats},
      z,
      train=True,
      mutable=['batch_stats'],
    )
    return fake, new_vars.get('batch_stats', {})

  fake, g_vjp, g_batch_stats = jax.vjp(g_forward, state.g_params, has_aux=True)
  state, d_out, d_ok = d_update(
    state, images, fake, dropout_keys, hyper=hyper, axis_name=axis_name
  )
  state, g_out, g_ok = g_update(
    state,
    fake,
    g_vjp,
    g_batch_stats,
    dropout_keys[2],
    hyper=hyper,
    axis_name=axis_name,
  )
  outputs = jax.lax.pmean(d_out | g_out, axis_name)
  state = state.replace(step=state.step + 1)
  outputs |= {
    'd_nonfinite': 1.0 - d_ok.astype(jnp.float32),
    'g_nonfinite': 1.0 - g_ok.astype(jnp.float32),
  }
  if hyper.skip_nonfinite:  # Average the metrics of applied updates only.
    outputs |= {'d_applied': d_ok, 'g_applied': g_ok}
  return state, TrainMetrics.single_from_model_output(**outputs)


def unreplicate(tree: PyTree) -> PyTree:
  """This host's first replica of a pmap-ed pytree, as single-device arrays.

  Reads only addressable data, so it also works on several hosts (where
  `x[0]` of a global array would not); flax's version mishandles pmaps over
  a subset of the devices.
  """

  def first(x):
    if isinstance(x, jax.Array):
      return x.addressable_data(0).reshape(x.shape[1:])
    return x[0]

  return jax.tree.map(first, tree)


# --- Config ----------------------------------------------------------------


class ConfigError(ValueError):
  """A config that cannot run; the message says what to change."""


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
      bool(metrics) and set(metrics) <= {'classifier', 'inception', 'memorization'},
      "eval_metrics must be a comma-separated list of 'classifier', "
      f"'inception' and 'memorization', got {config.eval_metrics!r}.",
    )


def eval_metrics(config: ml_collections.ConfigDict) -> list[str]:
  """config.eval_metrics as a list of metric names."""
  return [m.strip() for m in config.get('eval_metrics', '').split(',') if m.strip()]


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes WORKDIR/config.json atomically (what `sample` and resumes read)."""
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(config.to_json(indent=2, sort_keys=True))
  os.replace(tmp, path)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
      f'{path} not found: {workdir!r} is not a dcgan_jax workdir (train with '
      f'`python launch.py --config=... --workdir={workdir}`).'
    )
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


# --- Checkpoints -----------------------------------------------------------


def checkpoint_manager(
  workdir: str, *, keep: int = 3, read_only: bool = False
) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep, create=not read_only, read_only=read_only
  )
  return ocp.CheckpointManager(
    os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR), options=options
  )


def build(config: ml_collections.ConfigDict, *, bn_axis_name: str | None = None):
  """(generator, discriminator, g_tx, d_tx) for a config."""
  generator, discriminator = models.create_models(
    config.model,
    image_size=config.image_size,
    num_channels=config.num_channels,
    bn_axis_name=bn_axis_name,
  )
  return generator, discriminator, *create_optimizers(config)


def initial_state(config: ml_collections.ConfigDict) -> GANState:
  generator, discriminator, g_tx, d_tx = build(config)
  init_key = split_root_key(jax.random.key(config.seed))[0]
  return create_state(
    generator,
    discriminator,
    g_tx,
    d_tx,
    init_key,
    z_dim=config.model.z_dim,
    image_shape=(config.image_size, config.image_size, config.num_channels),
  )


def restore_latest(
  workdir: str, config: ml_collections.ConfigDict, *, step: int | None = None
) -> GANState | None:
  """The latest (or `step`'s) checkpointed state in `workdir` as host arrays;
  None if there is no checkpoint."""
  if not os.path.isdir(os.path.join(workdir, CHECKPOINT_DIR)):
    return None
  with checkpoint_manager(workdir, read_only=True) as mngr:
    step = mngr.latest_step() if step is None else step
    if step is None:
      return None
    # Host (numpy) arrays: every process reads the whole, replicated state.
    target = jax.tree.map(
      lambda x: np.zeros(x.shape, x.dtype),
      jax.eval_shape(lambda: initial_state(config)),
    )
    try:
      return mngr.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as e:  # Orbax raises many types; all mean "unreadable".
      raise CheckpointError(_unreadable_message(mngr, step, e)) from e


class CheckpointError(RuntimeError):
  """The latest checkpoint cannot be read; the message says how to go on."""


def _unreadable_message(mngr: ocp.CheckpointManager, step: int, error) -> str:
  path = os.path.join(str(mngr.directory), str(step))
  earlier = [s for s in mngr.all_steps() if s < step]
  reason = str(error).strip().splitlines()[0][:300] if str(error) else repr(error)
  if earlier:
    advice = (
      f'To resume from step {max(earlier)} (kept: {sorted(earlier)}), move the '
      f'unreadable checkpoint aside (mv {path} {path}.unreadable) and relaunch.'
    )
  else:
    advice = f'No earlier checkpoint is kept; move {path} aside to start over.'
  return (
    f'The latest checkpoint, {path}, cannot be restored ({type(error).__name__}: '
    f'{reason}). If the config changed since it was written, relaunch with the '
    f'original one. {advice}'
  )


# --- The loop --------------------------------------------------------------


def make_step_config(
  config: ml_collections.ConfigDict, *, bn_axis_name: str | None = 'batch'
) -> StepConfig:
  """The static half of `train_step` for a config (models, optimizers, ...)."""
  generator, discriminator, g_tx, d_tx = build(config, bn_axis_name=bn_axis_name)
  return StepConfig(
    generator=generator,
    discriminator=discriminator,
    g_tx=g_tx,
    d_tx=d_tx,
    z_dim=config.model.z_dim,
    z_dist=config.model.z_dist,
    real_label=config.real_label,
    sync_batchnorm=config.sync_batchnorm,
    skip_nonfinite=config.nonfinite == 'skip',
  )


def load_data(config: ml_collections.ConfigDict, workdir: str) -> np.ndarray:
  """The training images, uint8 [N, S, S, C], as `config` describes them.

  With several processes, process 0 goes first, so that a TFDS data set is
  prepared once rather than by every host into the same data_dir at once.
  """
  try:
    return _load_data_in_turn(config, workdir)
  except (ValueError, FileNotFoundError, RuntimeError) as e:  # Say so, briefly.
    raise ConfigError(f'Cannot load config.dataset={config.dataset!r}: {e}') from e


def _load_data_in_turn(config: ml_collections.ConfigDict, workdir: str) -> np.ndarray:
  if jax.process_count() == 1:
    return _load_data(config, workdir)
  if jax.process_index() == 0:
    images = _load_data(config, workdir)
  multihost_utils.sync_global_devices('dcgan_jax: data prepared by process 0')
  if jax.process_index() != 0:
    images = _load_data(config, workdir)
  return images


def _load_data(config: ml_collections.ConfigDict, workdir: str) -> np.ndarray:
  images = input_pipeline.load_images(
    dataset=config.dataset,
    split=config.split,
    image_size=config.image_size,
    num_channels=config.num_channels,
    crop=config.crop,
    data_dir=config.data_dir,
    download=config.download,
    image_key=config.image_key,
    cache=config.cache,
    cache_dir=config.cache_dir or os.path.join(workdir, 'data_cache'),
    bad_images=config.bad_images,
  )
  logging.info('Data set %r: %d images %s.', config.dataset, len(images), images.shape)
  return images


def make_sampler(config: ml_collections.ConfigDict):
  """G's variables -> uint8 samples G(z) [N, H, W, C] for the run's fixed z."""
  generator, _ = models.create_models(
    config.model, image_size=config.image_size, num_channels=config.num_channels
  )
  sample_key = split_root_key(jax.random.key(config.seed))[2]
  z = models.sample_z(
    sample_key, config.num_sample_images, config.model.z_dim, config.model.z_dist
  )
  generate = jax.jit(
    functools.partial(sample.generate, generator, batchnorm=config.sample_batchnorm)
  )

  def images(variables: dict[str, PyTree]) -> np.ndarray:
    return sample.to_uint8(generate(variables, z))

  return images


def _check_finite(
  summary: dict[str, Any],
  first: int,
  last: int,
  last_checkpoint: int | None,
  *,
  skip: bool,
) -> None:
  """Raises FloatingPointError if training went non-finite in (first, last].

  With `skip`, updates with non-finite values were left out: only an interval
  in which every D or every G update was left out stops the run, and any
  skipped update is logged as a warning.
  """
  if last_checkpoint is None:
    where = 'no checkpoint was written yet; relaunching starts over'
  else:
    where = (
      f'the last good checkpoint is step {last_checkpoint}, where a relaunch resumes'
    )
  steps = last - first + 1
  if skip:
    skipped = {
      net: round(summary[f'{net.lower()}_nonfinite'] * steps) for net in ('D', 'G')
    }
    hopeless = [net for net, n in skipped.items() if n == steps]
    if hopeless:
      raise FloatingPointError(
        f'Every {" and ".join(hopeless)} update between steps {first} and {last} '
        f'was non-finite and skipped (config.nonfinite=skip); {where} (nothing '
        'later was saved). Lower the learning rates or check the data scaling.'
      )
    if any(skipped.values()):
      logging.warning(
        'Skipped %d D and %d G updates with non-finite values between steps %d '
        'and %d (config.nonfinite=skip).',
        skipped['D'],
        skipped['G'],
        first,
        last,
      )
    return
  bad = [k for k, v in summary.items() if not np.isfinite(v)]
  bad += [
    f'{net} updates'
    for net in ('D', 'G')
    if summary[f'{net.lower()}_nonfinite'] > 0 and f'{net.lower()}_loss' not in bad
  ]
  if bad:
    raise FloatingPointError(
      f'Non-finite {", ".join(bad)} between steps {first} and {last}; {where} '
      '(nothing later was saved). Lower the learning rates or check the data '
      'scaling, or set --config.nonfinite=skip to leave such updates out.'
    )


def _hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  flat = config.to_dict()
  model = flat.pop('model')
  return flat | {f'model.{k}': v for k, v in model.items()}


class Preemption:
  """Has the run been asked to stop? Then save and exit at an agreed step.

  With several processes, JAX's preemption sync point (via Orbax) makes all
  hosts agree on the step after a SIGTERM. With one process, SIGTERM sets a
  flag read at the next step boundary.
  """

  def __init__(self, mngr: ocp.CheckpointManager):
    self._mngr = mngr
    self._signalled = threading.Event()
    self._previous = None
    single = jax.process_count() == 1
    if single and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    del signum, frame
    self._signalled.set()

  def reached(self, step: int) -> bool:
    return self._signalled.is_set() or self._mngr.reached_preemption(step)

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


class ConfigChangeError(ConfigError):
  """Resuming with a config or data set that would change the trajectory."""


def _check_resume(
  config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool
) -> None:
  """Refuses to resume a run whose trajectory-shaping config changed."""
  if not os.path.exists(os.path.join(workdir, CONFIG_FILE)):
    return
  old = load_config(workdir)
  trained = [os.path.join(wd, CHECKPOINT_DIR) for _, wd in seed_members(old, workdir)]
  if not any(os.path.isdir(path) for path in trained):
    return  # Nothing trained yet: the new config simply starts over.
  changes = manifest.trajectory_changes(old, config)
  if changes and not allow_config_change:
    raise ConfigChangeError(
      f'{workdir} holds a run with another config; resuming it with this one '
      'would not continue its trajectory:\n  ' + '\n  '.join(changes) + '\n'
      'Use a new --workdir, revert those keys, or pass --allow_config_change '
      'to resume anyway (recorded in manifest.json).'
    )
  if changes:
    logging.warning('Resuming with changed config: %s', '; '.join(changes))


def _record_launch(
  config: ml_collections.ConfigDict,
  workdir: str,
  images: np.ndarray,
  start_step: int,
  *,
  allow_config_change: bool,
) -> None:
  """Writes config.json and manifest.json; refuses a changed data set."""
  data = manifest.describe_data(config, images)
  record = manifest.load(workdir) if start_step else None
  if record is not None and record['data']['fingerprint'] != data['fingerprint']:
    if not allow_config_change:
      raise ConfigChangeError(
        f'The data set differs from the one this run was trained on '
        f'(fingerprint {data["fingerprint"][:12]}, {data["num_examples"]} '
        f'examples; the run had {record["data"]["fingerprint"][:12]}, '
        f'{record["data"]["num_examples"]}). Use a new --workdir or pass '
        '--allow_config_change.'
      )
  launch = manifest.describe_launch(config, start_step)
  launch['config_changed'] = bool(allow_config_change)
  if record is None:
    record = {'seed': config.seed, 'data': data, 'launches': []}
  record['config'] = config.to_dict()
  record['launches'].append(launch)
  if jax.process_index() == 0:
    save_config(config, workdir)
    manifest.write(workdir, record)


def _make_workdir(workdir: str) -> None:
  try:
    os.makedirs(os.path.join(workdir, SAMPLES_DIR), exist_ok=True)
    probe = os.path.join(workdir, f'.write-test-{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise ConfigError(
      f'Cannot write to --workdir={workdir} ({e.strerror}); choose a writable '
      'directory.'
    ) from e


def seed_members(
  config: ml_collections.ConfigDict, workdir: str
) -> list[tuple[ml_collections.ConfigDict, str]]:
  """(config, workdir) of every GAN a launch trains.

  One seed: the run itself. `num_seeds=K > 1`: seeds seed, ..., seed + K - 1,
  each in WORKDIR/seed_<s> with its own config (`seed=s`, `num_seeds=1`), so
  each member directory is exactly the workdir of a single-seed run.
  """
  if config.get('num_seeds', 1) == 1:
    return [(config, workdir)]
  members = []
  for k in range(config.num_seeds):
    member = config.copy_and_resolve_references()
    member.seed, member.num_seeds = config.seed + k, 1
    members.append((member, os.path.join(workdir, f'seed_{member.seed}')))
  return members


def make_ensemble_step(hyper: StepConfig, num_seeds: int, ensemble: str):
  """train_step for K stacked GANs: (states, images, train_keys) -> (states, metrics).

  Every leaf has a leading seed axis of size K. 'unroll' traces the step K
  times into one program: each GAN's arithmetic is exactly its single-seed
  run's. 'vmap' batches the K GANs through every operation (grouped
  convolutions): one op per layer for all seeds, results equal to the
  single-seed runs up to float round-off.
  """
  step = functools.partial(train_step, hyper=hyper)
  if ensemble == 'vmap':
    return jax.vmap(step)

  def unrolled(states, images, train_keys):
    outputs = [
      step(jax.tree.map(lambda x, k=k: x[k], states), images[k], train_keys[k])
      for k in range(num_seeds)
    ]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outputs)

  return unrolled


def _restore_members(members, mngrs) -> list[GANState | None]:
  """Each member's state at the latest step all members saved.

  A kill between the members' saves leaves some of them one save ahead;
  those newer checkpoints are dropped so that the ensemble stays in step.
  """
  steps = [set(m.all_steps()) for m in mngrs]
  if not any(steps):
    return [None] * len(members)
  common = set.intersection(*steps)
  step = max(common) if common else None
  for (_, workdir), mngr, mine in zip(members, mngrs, steps, strict=True):
    for newer in sorted(s for s in mine if step is None or s > step):
      logging.warning(
        'Dropping checkpoint %d of %s: not all seeds reached it.', newer, workdir
      )
      if jax.process_index() == 0:
        mngr.delete(newer)
  if step is None:
    return [None] * len(members)
  return [restore_latest(wd, c, step=step) for c, wd in members]


def _make_periodic_eval(
  config: ml_collections.ConfigDict,
  members: list[tuple[ml_collections.ConfigDict, str]],
  images: np.ndarray,
) -> Callable[[GANState], None] | None:
  """The evaluation run every config.eval_every_steps (None when off).

  Checks now, before anything compiles, that the metrics can run (labels
  for 'classifier', the weights file for 'inception'). The returned
  function scores each GAN of a host state (leading axis: seeds) with
  `dcgan_jax.evaluate` and logs a one-line summary.
  """
  if not config.eval_every_steps:
    return None
  from dcgan_jax import evaluate  # evaluate imports this module.

  metrics = eval_metrics(config)
  try:
    weights = evaluate.check_metrics_available(
      config, metrics, config.inception_weights or None
    )
  except (ValueError, FileNotFoundError) as e:
    raise ConfigError(
      f'eval_every_steps={config.eval_every_steps} with eval_metrics='
      f'{config.eval_metrics!r} cannot run: {e}\nOr set '
      '--config.eval_every_steps=0 to train without evaluation.'
    ) from e

  cache_workdir = members[0][1] if len(members) == 1 else os.path.dirname(members[0][1])

  def run(host_state: GANState) -> None:
    for k, (c, wd) in enumerate(members):
      report = evaluate.evaluate_generator(
        wd,
        c,
        jax.tree.map(lambda x, k=k: x[k], host_state),
        num_samples=config.eval_num_samples,
        metrics=metrics,
        real_images=images,
        inception_weights=weights,
        cache_workdir=cache_workdir,  # One classifier for all seeds.
      )
      scalars = {
        name: value
        for name, value in report['metrics'].items()
        if isinstance(value, float | int)
      }
      logging.info(
        'Evaluation at step %d%s: %s',
        report['step'],
        f' (seed {c.seed})' if len(members) > 1 else '',
        ', '.join(f'{name}={value:.4g}' for name, value in scalars.items()),
      )

  return run


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False
) -> GANState | list[GANState]:
  """Trains (or resumes) in `workdir` until `config.num_train_steps`.

  Resuming refuses a config or data set that would change the trajectory
  unless `allow_config_change`. With `num_seeds=K > 1`, trains K GANs in
  one program (see `seed_members`) and returns their K states.
  """
  validate_config(config, jax.device_count())
  workdir = os.path.abspath(workdir)
  members = seed_members(config, workdir)
  _check_resume(config, workdir, allow_config_change=allow_config_change)
  is_chief = jax.process_index() == 0
  if is_chief:
    _make_workdir(workdir)
    for _, member_dir in members:
      _make_workdir(member_dir)
  images = load_data(config, workdir)
  periodic_eval = _make_periodic_eval(config, members, images) if is_chief else None

  hyper = make_step_config(
    config, bn_axis_name='batch' if config.sync_batchnorm else None
  )
  p_train_step = jax.pmap(
    make_ensemble_step(hyper, len(members), config.ensemble),
    axis_name='batch',
    in_axes=(0, 0, None),
    donate_argnums=(0,),
  )
  train_keys = jnp.stack(
    [split_root_key(jax.random.key(c.seed))[1] for c, _ in members]
  )
  samplers = [make_sampler(c) for c, _ in members]
  real_sample = input_pipeline.scale_images(images[:256])
  healths = [
    monitors.GANMonitors(
      real_sample,
      d_wins_window=config.monitor_d_wins_window,
      collapse_ratio=config.monitor_collapse_ratio,
    )
    for _ in members
  ]

  mngrs = [checkpoint_manager(wd, keep=config.keep_checkpoints) for _, wd in members]
  restored = _restore_members(members, mngrs)
  member_states = [
    state or initial_state(c) for state, (c, _) in zip(restored, members, strict=True)
  ]
  start_step = int(member_states[0].step)
  logging.info(
    '%s at step %d%s. G: %s parameters, D: %s parameters.',
    'Resuming' if start_step else 'Starting',
    start_step,
    f' ({len(members)} seeds from {config.seed})' if len(members) > 1 else '',
    f'{models.count_params(member_states[0].g_params):,}',
    f'{models.count_params(member_states[0].d_params):,}',
  )
  for c, wd in members:
    _record_launch(c, wd, images, start_step, allow_config_change=allow_config_change)
  if len(members) > 1 and is_chief:
    save_config(config, workdir)  # What the ensemble was launched with.
  state = jax_utils.replicate(jax.tree.map(lambda *xs: np.stack(xs), *member_states))
  del member_states, restored

  writers = [
    metric_writers.create_default_writer(wd, just_logging=not is_chief)
    for _, wd in members
  ]

  def member_variables(k: int) -> dict[str, PyTree]:
    return jax.tree.map(
      lambda x: x[k],
      unreplicate({'params': state.g_params, 'batch_stats': state.g_batch_stats}),
    )

  def write_samples(step: int) -> None:
    for k, (_, wd) in enumerate(members):
      samples = samplers[k](member_variables(k))
      grid = sample.make_grid(samples)
      writers[k].write_images(step, {'samples': grid[None]})
      if len(samples) > 1:
        writers[k].write_scalars(
          step, healths[k].on_samples(step, input_pipeline.scale_images(samples))
        )
      if is_chief:
        sample.save_png(grid, os.path.join(wd, SAMPLES_DIR, f'step_{step:07d}.png'))

  if start_step == 0:
    for (c, _), writer in zip(members, writers, strict=True):
      writer.write_hparams(_hparams(c))
    write_samples(0)
  report = periodic_actions.ReportProgress(
    num_train_steps=config.num_train_steps,
    writer=writers[0],
    every_steps=config.log_every_steps,
    every_secs=None,
  )
  n = jax.local_device_count()
  member_batches = [
    input_pipeline.host_batches(
      images,
      seed=c.seed,
      global_batch_size=config.global_batch_size,
      start_step=start_step,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )
    for c, _ in members
  ]

  def stacked_batches():
    while True:  # [devices, seeds, per-device batch, H, W, C]
      yield np.stack(
        [next(it).reshape(n, -1, *images.shape[1:]) for it in member_batches], 1
      )

  batches = jax_utils.prefetch_to_device(stacked_batches(), 2)

  preemption = Preemption(mngrs[0])
  train_metrics, last_logged, t0 = None, start_step, time.time()
  step = start_step
  for step in range(start_step + 1, config.num_train_steps + 1):
    state, step_metrics = p_train_step(state, next(batches), train_keys)
    step_metrics = unreplicate(step_metrics)  # Leading axis: seeds.
    train_metrics = (
      step_metrics if train_metrics is None else train_metrics.merge(step_metrics)
    )
    report(step)
    is_last = step == config.num_train_steps
    preempted = preemption.reached(step)
    save_now = step % config.checkpoint_every_steps == 0 or is_last or preempted
    if step % config.log_every_steps == 0 or is_last or save_now:
      # Before any save: a non-finite state never overwrites a good checkpoint.
      for k, (c, _) in enumerate(members):
        member_metrics = jax.tree.map(lambda x, k=k: x[k], train_metrics)
        summary = {key: float(v) for key, v in member_metrics.compute().items()}
        try:
          _check_finite(
            summary,
            last_logged + 1,
            step,
            mngrs[k].latest_step(),
            skip=hyper.skip_nonfinite,
          )
        except FloatingPointError as e:
          if len(members) > 1:
            raise FloatingPointError(f'Seed {c.seed}: {e}') from e
          raise
        writers[k].write_scalars(step, summary | healths[k].on_log(step, summary))
      train_metrics, last_logged = None, step
    if step % config.sample_every_steps == 0 or is_last:
      with report.timed('sample'):
        write_samples(step)
    if save_now:
      with report.timed('checkpoint'):
        host_state = jax.device_get(unreplicate(state))  # Same on every host.
        for k, mngr in enumerate(mngrs):
          member_state = jax.tree.map(lambda x, k=k: x[k], host_state)
          mngr.save(step, args=ocp.args.StandardSave(member_state))
    eval_now = config.eval_every_steps and (
      step % config.eval_every_steps == 0 or is_last
    )
    if eval_now and periodic_eval is not None:
      with report.timed('eval'):
        periodic_eval(jax.device_get(unreplicate(state)))
    if preempted:
      break
  preemption.close()
  for mngr in mngrs:
    mngr.wait_until_finished()
    mngr.close()
  for writer in writers:
    writer.flush()
  if step < config.num_train_steps:
    logging.warning(
      'Preempted: saved a checkpoint at step %d of %d in %s. Relaunch the same '
      'command to continue from there.',
      step,
      config.num_train_steps,
      workdir,
    )
  else:
    logging.info(
      'Trained steps %d to %d in %.0f s; outputs in %s.',
      start_step,
      step,
      time.time() - t0,
      workdir,
    )
  final = unreplicate(state)
  states = [jax.tree.map(lambda x, k=k: x[k], final) for k in range(len(members))]
  return states[0] if len(members) == 1 else states
