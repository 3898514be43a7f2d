"""The pure train step: one D update, then one G update, inside `pmap`.

The objective is `config.loss` (`core.losses`); `config.update_order`
picks the paper's sequential updates or the TensorFlow tutorial's
simultaneous ones; `config.ema_decay` keeps a moving average of G.

`train_step(state, images, train_key, *, hyper)` has no side effects; the
noise of step s is drawn from `fold_in(train_key, s)` for the global batch
and each device takes its slice, so the result does not depend on how many
devices share the batch. `make_ensemble_step` runs K GANs in one program.
"""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from clu import metrics
from flax import linen as nn
from flax import struct

from dcgan_jax.core import losses
from dcgan_jax.core.state import GANState, PyTree, build
from dcgan_jax.networks import models


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
class StepHyper:
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
  # The objective (`core.losses`) and the weight of WGAN-GP's penalty.
  loss: str = 'bce'
  gp_weight: float = 10.0
  # Update D and G at once from the same D outputs (the TensorFlow
  # tutorial) instead of D first, then G against the updated D (the paper).
  simultaneous: bool = False
  # Moving average of G's variables (state.g_ema): decay, and the number of
  # steps before which it copies G instead of averaging.
  ema_decay: float = 0.0
  ema_start_step: int = 0
  # > 0: class-conditional G and D; G's input is [z, one-hot label].
  num_classes: int = 0
  # > 0: device-count-invariant mode (`config.reduction_shards`): the global
  # batch is cut into this many shards, each trained on its own, and every
  # cross-example sum is taken over the shards in one fixed order.
  reduction_shards: int = 0


def make_step_config(
  config: ml_collections.ConfigDict, *, bn_axis_name: str | None = 'batch'
) -> StepHyper:
  """The static half of `train_step` for a config (models, optimizers, ...)."""
  generator, discriminator, g_tx, d_tx = build(config, bn_axis_name=bn_axis_name)
  return StepHyper(
    generator=generator,
    discriminator=discriminator,
    g_tx=g_tx,
    d_tx=d_tx,
    z_dim=config.model.z_dim,
    z_dist=config.model.z_dist,
    real_label=config.real_label,
    sync_batchnorm=config.sync_batchnorm,
    skip_nonfinite=config.nonfinite == 'skip',
    # .get: configs written before these keys existed mean the paper's step.
    loss=config.get('loss', 'bce'),
    gp_weight=config.get('gp_weight', 10.0),
    simultaneous=config.get('update_order', 'sequential') == 'simultaneous',
    ema_decay=config.get('ema_decay', 0.0),
    ema_start_step=config.get('ema_start_step', 0),
    num_classes=config.model.get('num_classes', 0),
    reduction_shards=config.get('reduction_shards', 0),
  )


def syncs_batchnorm(config: ml_collections.ConfigDict) -> bool:
  """Whether BatchNorm statistics span the devices (`pmean` inside the
  models): config.sync_batchnorm, except in the device-count-invariant mode,
  where each shard has its own."""
  return config.sync_batchnorm and not config.get('reduction_shards', 0)


class Noise(NamedTuple):
  # [local batch, z_dim (+ classes)]: this device's slice of the global z,
  # with the one-hot labels of the fake images for a conditional G.
  z: jax.Array
  # [3]: D on real, D on fake, D in G's update ([shards, 3]: one row a
  # shard, in the device-count-invariant mode).
  dropout_keys: jax.Array
  mix: jax.Array  # [local batch]: WGAN-GP's interpolation weights.
  fake_labels: jax.Array | None = None  # [local batch] class indices.


def _noise(
  state: GANState,
  local_batch: int,
  train_key: jax.Array,
  hyper,
  axis_name: str,
  shards_per_device: int = 0,
) -> Noise:
  """This device's slice of the global batch's random draws.

  Dropout (only in 'tf_tutorial' D) is drawn per device, or, with
  `shards_per_device`, per shard of the global batch.
  """
  num_devices = jax.lax.psum(1, axis_name)
  device_index = jax.lax.axis_index(axis_name)
  step_key = jax.random.fold_in(train_key, state.step)
  z_key, dropout_key = jax.random.split(step_key)
  global_batch = local_batch * num_devices

  def my_slice(x):
    return jax.lax.dynamic_slice_in_dim(x, device_index * local_batch, local_batch)

  z = models.sample_z(z_key, global_batch, hyper.z_dim, hyper.z_dist)
  mix = jax.random.uniform(jax.random.fold_in(step_key, 1), (global_batch,))
  if shards_per_device:
    shards = device_index * shards_per_device + jnp.arange(shards_per_device)
    dropout_keys = jax.vmap(
      lambda i: jax.random.split(jax.random.fold_in(dropout_key, i), 3)
    )(shards)
  else:
    dropout_keys = jax.random.split(jax.random.fold_in(dropout_key, device_index), 3)
  if not hyper.num_classes:
    return Noise(my_slice(z), dropout_keys, my_slice(mix))
  labels = jax.random.randint(
    jax.random.fold_in(step_key, 2), (global_batch,), 0, hyper.num_classes
  )
  z = jnp.concatenate([z, jax.nn.one_hot(labels, hyper.num_classes)], axis=-1)
  return Noise(my_slice(z), dropout_keys, my_slice(mix), my_slice(labels))


def _apply_d(hyper, d_params, batch_stats, x, dropout_key, labels=None):
  kwargs = {'labels': labels} if hyper.num_classes else {}
  logits, new_vars = hyper.discriminator.apply(
    {'params': d_params, 'batch_stats': batch_stats},
    x,
    train=True,
    rngs={'dropout': dropout_key},
    mutable=['batch_stats'],
    **kwargs,
  )
  return logits, new_vars.get('batch_stats', {})


def _g_forward(state: GANState, z: jax.Array, hyper):
  """(fake, VJP in G's parameters, G's new BatchNorm statistics) for `z`."""

  def forward(g_params):
    fake, new_vars = hyper.generator.apply(
      {'params': g_params, 'batch_stats': state.g_batch_stats},
      z,
      train=True,
      mutable=['batch_stats'],
    )
    return fake, new_vars.get('batch_stats', {})

  return jax.vjp(forward, state.g_params, has_aux=True)


def _all_finite(axis_name: str, *trees: PyTree) -> jax.Array:
  """True iff every leaf of `trees` is finite on every device."""
  # 0 * x is NaN exactly where x is inf or NaN: one fused reduction a leaf.
  total = sum(jnp.sum(0 * leaf, dtype=jnp.float32) for leaf in jax.tree.leaves(trees))
  ok = jnp.isfinite(total)
  return jax.lax.pmin(ok.astype(jnp.int32), axis_name).astype(bool)


def _apply_if(ok: jax.Array, new: GANState, old: GANState) -> GANState:
  return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)


def _penalty(hyper, d_params, batch_stats, images, fake, noise, labels) -> jax.Array:
  """gp_weight * WGAN-GP's gradient penalty (0 for the other losses); a
  conditional D sees the interpolates with the real images' labels."""
  if hyper.loss != 'wgan_gp':
    return jnp.zeros((), jnp.float32)

  def critic(x):
    key = noise.dropout_keys[0]
    return _apply_d(hyper, d_params, batch_stats, x, key, labels)[0]

  return hyper.gp_weight * losses.gradient_penalty(
    critic, images, jax.lax.stop_gradient(fake), noise.mix
  )


def _step(state, net, tx, grads, stats, loss, *, hyper, axis_name, reduced=False):
  """Applies network `net`'s ('d' or 'g') gradients: pmean (unless
  `reduced`: already the global batch's), optimizer `tx`, BatchNorm
  statistics. Returns (state, the averaged gradients, whether everything is
  finite on every device); with `hyper.skip_nonfinite` a non-finite update
  leaves the state as it was."""
  params, opt_state = (
    getattr(state, f'{net}_params'),
    getattr(state, f'{net}_opt_state'),
  )
  if not reduced:
    grads = jax.lax.pmean(grads, axis_name)
  updates, opt_state = tx.update(grads, opt_state, params)
  if not (reduced or hyper.sync_batchnorm):  # Per-device statistics: average.
    stats = jax.lax.pmean(stats, axis_name)
  params = optax.apply_updates(params, updates)
  new_state = state.replace(
    **{
      f'{net}_params': params,
      f'{net}_batch_stats': stats,
      f'{net}_opt_state': opt_state,
    }
  )
  ok = _all_finite(axis_name, loss, grads, params, stats, opt_state)
  if hyper.skip_nonfinite:
    new_state = _apply_if(ok, new_state, state)
  return new_state, grads, ok


def _d_outputs(hyper, loss, real_logits, fake_logits) -> dict[str, jax.Array]:
  return {
    'd_loss': loss,
    'd_real': losses.d_outputs(hyper.loss, real_logits),
    'd_fake': losses.d_outputs(hyper.loss, fake_logits),
  }


def _g_outputs(hyper, loss, logits) -> dict[str, jax.Array]:
  """`logits`: D's outputs for G's images in G's loss."""
  return {'g_loss': loss, 'd_fake_after': losses.d_outputs(hyper.loss, logits)}


def _d_grads(state, images, fake, noise, hyper, labels):
  """D's loss on a real and a fake batch, its gradients (this batch's), D's
  new BatchNorm statistics and D's outputs: (loss, grads, stats, outputs)."""
  fake = jax.lax.stop_gradient(fake)

  def loss_fn(d_params):
    real_logits, stats = _apply_d(
      hyper, d_params, state.d_batch_stats, images, noise.dropout_keys[0], labels
    )
    fake_logits, stats = _apply_d(
      hyper, d_params, stats, fake, noise.dropout_keys[1], noise.fake_labels
    )
    loss = losses.d_loss(
      hyper.loss, real_logits, fake_logits, real_label=hyper.real_label
    )
    loss += _penalty(hyper, d_params, stats, images, fake, noise, labels)
    return loss, (stats, real_logits, fake_logits)

  (loss, (stats, real_logits, fake_logits)), grads = jax.value_and_grad(
    loss_fn, has_aux=True
  )(state.d_params)
  return loss, grads, stats, _d_outputs(hyper, loss, real_logits, fake_logits)


def _g_grads(state, fake, g_vjp, dropout_key, hyper, fake_labels):
  """G's loss against the current D and its gradients: (loss, grads, outputs)."""

  def loss_fn(fake):
    logits, _ = _apply_d(
      hyper, state.d_params, state.d_batch_stats, fake, dropout_key, fake_labels
    )
    return losses.g_loss(hyper.loss, logits), logits

  (loss, logits), fake_grads = jax.value_and_grad(loss_fn, has_aux=True)(fake)
  (grads,) = g_vjp(fake_grads)
  return loss, grads, _g_outputs(hyper, loss, logits)


def _simultaneous_grads(state, images, fake, g_vjp, noise, hyper, labels):
  """D's and G's losses and gradients from one pass of D over real and fake,
  both at the current D with the same dropout masks: (d_loss, d_grads, D's
  statistics, g_loss, g_grads, outputs)."""

  def d_forward(d_params, fake):
    real_logits, stats = _apply_d(
      hyper, d_params, state.d_batch_stats, images, noise.dropout_keys[0], labels
    )
    fake_logits, stats = _apply_d(
      hyper, d_params, stats, fake, noise.dropout_keys[1], noise.fake_labels
    )
    return (real_logits, fake_logits), stats

  (real_logits, fake_logits), d_vjp, stats = jax.vjp(
    d_forward, state.d_params, fake, has_aux=True
  )
  d_loss, d_cotangents = jax.value_and_grad(
    lambda r, f: losses.d_loss(hyper.loss, r, f, real_label=hyper.real_label),
    argnums=(0, 1),
  )(real_logits, fake_logits)
  d_grads, _ = d_vjp(d_cotangents)
  if hyper.loss == 'wgan_gp':
    penalty, penalty_grads = jax.value_and_grad(
      lambda p: _penalty(hyper, p, stats, images, fake, noise, labels)
    )(state.d_params)
    d_loss += penalty
    d_grads = jax.tree.map(jnp.add, d_grads, penalty_grads)
  g_loss, g_cotangent = jax.value_and_grad(lambda f: losses.g_loss(hyper.loss, f))(
    fake_logits
  )
  _, fake_grads = d_vjp((jnp.zeros_like(real_logits), g_cotangent))
  (g_grads,) = g_vjp(fake_grads)
  outputs = _d_outputs(hyper, d_loss, real_logits, fake_logits) | _g_outputs(
    hyper, g_loss, fake_logits
  )
  return d_loss, d_grads, stats, g_loss, g_grads, outputs


def d_update(
  state: GANState,
  images: jax.Array,
  fake: jax.Array,
  noise: Noise,
  *,
  hyper: StepHyper,
  axis_name: str = 'batch',
  labels: jax.Array | None = None,
) -> tuple[GANState, dict[str, jax.Array], jax.Array]:
  """One optimizer step of D on `hyper.loss` (paper: BCE(D(x), real_label)
  + BCE(D(fake), 0)).

  Real and fake go through D as separate batches (separate BatchNorm
  statistics, as the paper's code). Only D's fields of the state change.
  Also returns whether the update was finite on every device (if not, and
  `hyper.skip_nonfinite`, D's fields are returned unchanged).
  """
  loss, grads, stats, outputs = _d_grads(state, images, fake, noise, hyper, labels)
  kwargs = dict(hyper=hyper, axis_name=axis_name)
  state, grads, ok = _step(state, 'd', hyper.d_tx, grads, stats, loss, **kwargs)
  return state, outputs | {'d_grad_norm': optax.global_norm(grads)}, ok


def g_update(
  state: GANState,
  fake: jax.Array,
  g_vjp,
  g_batch_stats: PyTree,
  dropout_key: jax.Array,
  *,
  hyper: StepHyper,
  axis_name: str = 'batch',
  fake_labels: jax.Array | None = None,
) -> tuple[GANState, dict[str, jax.Array], jax.Array]:
  """One optimizer step of G on `hyper.loss`'s G loss (paper: the
  non-saturating BCE(D(G(z)), 1)).

  D is the one just updated. `fake` and `g_vjp` come from G's forward pass
  at the current G parameters (`jax.vjp`), which the D update did not touch.
  Returns the finiteness flag as `d_update` does.
  """
  loss, grads, outputs = _g_grads(state, fake, g_vjp, dropout_key, hyper, fake_labels)
  kwargs = dict(hyper=hyper, axis_name=axis_name)
  state, grads, ok = _step(state, 'g', hyper.g_tx, grads, g_batch_stats, loss, **kwargs)
  return state, outputs | {'g_grad_norm': optax.global_norm(grads)}, ok


def simultaneous_update(
  state: GANState,
  images: jax.Array,
  fake: jax.Array,
  g_vjp,
  g_batch_stats: PyTree,
  noise: Noise,
  *,
  hyper: StepHyper,
  axis_name: str = 'batch',
  labels: jax.Array | None = None,
):
  """D's and G's optimizer steps from one pass of D over real and fake (the
  TensorFlow tutorial's step): both gradients are taken at the current D,
  with the same dropout masks, and applied together."""
  d_loss, d_grads, stats, g_loss, g_grads, outputs = _simultaneous_grads(
    state, images, fake, g_vjp, noise, hyper, labels
  )
  kwargs = dict(hyper=hyper, axis_name=axis_name)
  new, d_grads, d_ok = _step(state, 'd', hyper.d_tx, d_grads, stats, d_loss, **kwargs)
  new, g_grads, g_ok = _step(
    new, 'g', hyper.g_tx, g_grads, g_batch_stats, g_loss, **kwargs
  )
  outputs |= {
    'd_grad_norm': optax.global_norm(d_grads),
    'g_grad_norm': optax.global_norm(g_grads),
  }
  return new, outputs, d_ok, g_ok


def _update_ema(state: GANState, hyper: StepHyper) -> GANState:
  """G's moving averages after this step's update (a copy of G until
  `ema_start_step` steps are done)."""
  if state.g_ema is None:
    return state
  averaging = state.step + 1 > hyper.ema_start_step
  decay = jnp.where(averaging, hyper.ema_decay, 0.0).astype(jnp.float32)
  g_ema = optax.incremental_update(state.g_variables, state.g_ema, 1.0 - decay)
  return state.replace(g_ema=g_ema)


def _finish(state, outputs, d_ok, g_ok, hyper) -> tuple[GANState, TrainMetrics]:
  """G's moving average, the step count and the metrics of a step."""
  state = _update_ema(state, hyper)
  state = state.replace(step=state.step + 1)
  outputs |= {
    'd_nonfinite': 1.0 - d_ok.astype(jnp.float32),
    'g_nonfinite': 1.0 - g_ok.astype(jnp.float32),
  }
  if hyper.skip_nonfinite:  # Average the metrics of applied updates only.
    outputs |= {'d_applied': d_ok, 'g_applied': g_ok}
  return state, TrainMetrics.single_from_model_output(**outputs)


def train_step(
  state: GANState,
  images: jax.Array,
  train_key: jax.Array,
  labels: jax.Array | None = None,
  *,
  hyper: StepHyper,
  axis_name: str = 'batch',
) -> tuple[GANState, TrainMetrics]:
  """One D update on a real and a fake batch, then one G update (or both at
  once with `hyper.simultaneous`), then G's moving average. A conditional
  GAN takes the real images' class `labels` [local batch]; the fake ones'
  are drawn uniformly with z.

  Runs inside `pmap` over `axis_name`. z is drawn for the global batch from
  `fold_in(train_key, step)` and each device takes its slice, so the result
  does not depend on how many devices share the batch but for the order of
  floating-point sums; with `hyper.reduction_shards` not even on that
  (`sharded_train_step`). G runs forward once: its VJP serves the G update,
  which equals a second forward pass since G's parameters do not change in
  between.
  """
  if hyper.reduction_shards:
    return sharded_train_step(
      state, images, train_key, labels, hyper=hyper, axis_name=axis_name
    )
  noise = _noise(state, images.shape[0], train_key, hyper, axis_name)
  fake, g_vjp, g_batch_stats = _g_forward(state, noise.z, hyper)
  if hyper.simultaneous:
    state, outputs, d_ok, g_ok = simultaneous_update(
      state,
      images,
      fake,
      g_vjp,
      g_batch_stats,
      noise,
      hyper=hyper,
      axis_name=axis_name,
      labels=labels,
    )
  else:
    state, d_out, d_ok = d_update(
      state, images, fake, noise, hyper=hyper, axis_name=axis_name, labels=labels
    )
    state, g_out, g_ok = g_update(
      state,
      fake,
      g_vjp,
      g_batch_stats,
      noise.dropout_keys[2],
      hyper=hyper,
      axis_name=axis_name,
      fake_labels=noise.fake_labels,
    )
    outputs = d_out | g_out
  outputs = jax.lax.pmean(outputs, axis_name)
  return _finish(state, outputs, d_ok, g_ok, hyper)


# ------------------------------------------- device-count-invariant mode ---


def shard_mean(tree: PyTree, num_shards: int, axis_name: str) -> PyTree:
  """The mean over all `num_shards` shards of per-shard values.

  Each device holds its shards' values stacked, [shards per device, ...];
  they are gathered (exact: data moves, no arithmetic) into [num_shards,
  ...] in shard order on every device, then added one after the other,
  shard 0 first, and divided by `num_shards`. The same additions in the
  same order on 1 device or on `num_shards`: the same bits.
  """

  def ordered_mean(x):
    total = x[0]
    for i in range(1, num_shards):
      total = total + x[i]
    return total / num_shards

  gathered = jax.lax.all_gather(tree, axis_name, axis=0, tiled=True)
  return jax.tree.map(ordered_mean, gathered)


def _each_shard(fn, context: PyTree, shards: PyTree, num: int) -> PyTree:
  """`fn(context, shard)` for each of the `num` shards (the leading axis of
  `shards`), one after the other, stacked: `lax.map`, but compiled to the
  same XLA loop whatever `num` is.

  The body must be compiled alike for 1 shard a device and for 8, or the
  bits would depend on the device count. XLA would inline a loop it knows
  runs once, and it hoists computations of loop-invariant values out of a
  loop case by case; a product hoisted in one program and fused with an
  addition (one FMA, one rounding) in another differs in the last bit. So
  the trip count and `context` (the state the shards share) pass through
  optimisation barriers, which XLA cannot see through, and so do each
  shard's inputs and results: no fusion crosses them.
  """
  first = jax.tree.map(lambda x: x[0], shards)
  out_shapes = jax.eval_shape(fn, context, first)
  outputs = jax.tree.map(lambda s: jnp.zeros((num, *s.shape), s.dtype), out_shapes)

  def body(i, carry):
    context, outputs = carry
    context = jax.lax.optimization_barrier(context)
    shard = jax.tree.map(
      lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False), shards
    )
    result = fn(context, jax.lax.optimization_barrier(shard))
    result = jax.lax.optimization_barrier(result)
    outputs = jax.tree.map(
      lambda buf, r: jax.lax.dynamic_update_index_in_dim(buf, r, i, 0), outputs, result
    )
    return context, outputs

  count = jax.lax.optimization_barrier(jnp.int32(num))
  return jax.lax.fori_loop(0, count, body, (context, outputs))[1]


def sharded_train_step(
  state: GANState,
  images: jax.Array,
  train_key: jax.Array,
  labels: jax.Array | None = None,
  *,
  hyper: StepHyper,
  axis_name: str = 'batch',
) -> tuple[GANState, TrainMetrics]:
  """`train_step` in the device-count-invariant mode: the same bits on any
  number of devices that divides `hyper.reduction_shards`.

  The global batch is cut into V = `hyper.reduction_shards` shards of equal
  size; each device holds V / devices of them and runs them one after the
  other (`lax.scan`), each shard through the same program of the same
  shapes: G forward, D's (and G's) losses, gradients and BatchNorm
  statistics of that shard alone. Gradients, statistics and metrics are
  then averaged over the V shards in one fixed order (`shard_mean`), and
  the optimizers step on the result, identical on every device. BatchNorm
  normalises each shard with its own statistics (V devices without
  sync_batchnorm, whatever the real device count).

  With sequential updates, G's shards run after D's update, G forward once
  more (the default step reuses one forward pass).
  """
  num_shards = hyper.reduction_shards
  per_device = num_shards // jax.lax.psum(1, axis_name)
  noise = _noise(state, images.shape[0], train_key, hyper, axis_name, per_device)

  def split(x):
    return None if x is None else x.reshape(per_device, -1, *x.shape[1:])

  shards = (
    split(images),
    split(labels),
    noise._replace(
      z=split(noise.z), mix=split(noise.mix), fake_labels=split(noise.fake_labels)
    ),
  )

  def mean(tree):
    return shard_mean(tree, num_shards, axis_name)

  step_kwargs = dict(hyper=hyper, axis_name=axis_name, reduced=True)
  if hyper.simultaneous:

    def both(state, shard):
      images, labels, noise = shard
      fake, g_vjp, g_stats = _g_forward(state, noise.z, hyper)
      d_loss, d_grads, d_stats, g_loss, g_grads, outputs = _simultaneous_grads(
        state, images, fake, g_vjp, noise, hyper, labels
      )
      return d_grads, d_stats, g_grads, g_stats, outputs

    per_shard = _each_shard(both, state, shards, per_device)
    d_grads, d_stats, g_grads, g_stats, outputs = mean(per_shard)
    state, d_grads, d_ok = _step(
      state, 'd', hyper.d_tx, d_grads, d_stats, outputs['d_loss'], **step_kwargs
    )
  else:

    def d_shard(state, shard):
      images, labels, noise = shard
      fake, _, _ = _g_forward(state, noise.z, hyper)
      _, grads, stats, outputs = _d_grads(state, images, fake, noise, hyper, labels)
      return grads, stats, outputs

    per_shard = _each_shard(d_shard, state, shards, per_device)
    d_grads, d_stats, outputs = mean(per_shard)
    state, d_grads, d_ok = _step(
      state, 'd', hyper.d_tx, d_grads, d_stats, outputs['d_loss'], **step_kwargs
    )

    def g_shard(state, shard):  # D as updated.
      _, _, noise = shard
      fake, g_vjp, g_stats = _g_forward(state, noise.z, hyper)
      _, grads, outputs = _g_grads(
        state, fake, g_vjp, noise.dropout_keys[2], hyper, noise.fake_labels
      )
      return grads, g_stats, outputs

    per_shard = _each_shard(g_shard, state, shards, per_device)
    g_grads, g_stats, g_outputs = mean(per_shard)
    outputs |= g_outputs
  state, g_grads, g_ok = _step(
    state, 'g', hyper.g_tx, g_grads, g_stats, outputs['g_loss'], **step_kwargs
  )
  outputs |= {
    'd_grad_norm': optax.global_norm(d_grads),
    'g_grad_norm': optax.global_norm(g_grads),
  }
  return _finish(state, outputs, d_ok, g_ok, hyper)


def make_ensemble_step(hyper: StepHyper, num_seeds: int, ensemble: str):
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

  def unrolled(states, images, train_keys, labels=None):
    outputs = [
      step(
        jax.tree.map(lambda x, k=k: x[k], states),
        images[k],
        train_keys[k],
        None if labels is None else labels[k],
      )
      for k in range(num_seeds)
    ]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outputs)

  return unrolled
