"""The training loop: `train_and_evaluate(config, workdir)`.

Trains (or resumes) the GANs of a launch (`ensemble.Ensemble`) with the pure
`core.step.train_step`, `pmap`-ed over the local devices, and around it the
periodic actions: metrics and health monitors, sample grids, checkpoints,
evaluation, preemption. Keys and data order are pure functions of (seed,
step), so a resumed run continues exactly as an uninterrupted one would.
"""

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from clu import periodic_actions
from flax import jax_utils

from dcgan_jax import ensemble as ensemble_lib
from dcgan_jax.core import config_checks, generate, monitors, run_lock, rundir
from dcgan_jax.core import step as step_lib
from dcgan_jax.core.state import GANState, unreplicate
from dcgan_jax.data import input_pipeline, loader
from dcgan_jax.evaluation import evaluator
from dcgan_jax.networks import models
from dcgan_jax.util import event_writer, figures, files
from dcgan_jax.util.errors import ConfigError


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  allow_config_change: bool = False,
  stop_at: int | None = None,
) -> GANState | list[GANState]:
  """Trains (or resumes) in `workdir` until `config.num_train_steps`, or
  until step `stop_at`, where it saves a checkpoint and returns as after a
  preemption (a later launch continues the same trajectory).

  Resuming refuses a config or data set that would change the trajectory
  unless `allow_config_change`. With `num_seeds=K > 1`, trains K GANs in
  one program (see `ensemble`) and returns their K states. One launch at a
  time per workdir: see `core.run_lock`.
  """
  config_checks.validate_config(config, jax.device_count())
  try:
    workdir = files.absolute(workdir, '--workdir')
  except ValueError as e:
    raise ConfigError(str(e)) from e
  if jax.process_count() == 1:  # (Several: process 0 prepares it, in load_data.)
    loader.prepare(config)  # Before anything is written: data errors first.
  with run_lock.hold(workdir):
    return _train(config, workdir, allow_config_change, stop_at)


def _train(
  config: ml_collections.ConfigDict,
  workdir: str,
  allow_config_change: bool,
  stop_at: int | None,
) -> GANState | list[GANState]:
  labels = None
  if config.get('conditional', False):
    config, labels = _with_classes(config)
  gans = ensemble_lib.Ensemble.of(config, workdir)
  rundir.check_resume(config, workdir, allow_config_change=allow_config_change)
  is_chief = jax.process_index() == 0
  if is_chief:
    for directory in dict.fromkeys([workdir, *gans.workdirs]):
      rundir.make_workdir(directory)
  images = loader.load_data(config, workdir)
  _connect_devices()
  try:  # Now, not at the first batch: before anything compiles or is saved.
    input_pipeline.check_batching(
      len(images), config.global_batch_size, jax.process_count()
    )
  except ValueError as e:
    raise ConfigError(f'Cannot train on config.dataset={config.dataset!r}: {e}') from e
  if labels is not None and len(labels) != len(images):
    raise ConfigError(
      f'config.dataset={config.dataset!r} has {len(labels)} labels for '
      f'{len(images)} images (config.bad_images=skip left some out?); a '
      'conditional run needs every image readable: fix or remove them.'
    )
  periodic_eval = _make_periodic_eval(config, gans, images) if is_chief else None

  hyper = step_lib.make_step_config(
    config, bn_axis_name='batch' if step_lib.syncs_batchnorm(config) else None
  )
  p_train_step = jax.pmap(
    step_lib.make_ensemble_step(hyper, len(gans), config.ensemble),
    axis_name='batch',
    in_axes=(0, 0, None, 0),
    donate_argnums=(0,),
  )
  train_keys = gans.train_keys()
  gans.open_checkpoints(keep=config.keep_checkpoints)
  host_state = gans.restore()
  start_step = int(host_state.step[0])
  logging.info(
    '%s at step %d%s. G: %s parameters, D: %s parameters.',
    'Resuming' if start_step else 'Starting',
    start_step,
    f' ({len(gans)} seeds from {config.seed})' if len(gans) > 1 else '',
    f'{models.count_params(ensemble_lib.member(host_state.g_params, 0)):,}',
    f'{models.count_params(ensemble_lib.member(host_state.d_params, 0)):,}',
  )
  gans.record_launch(images, start_step, allow_config_change=allow_config_change)
  if len(gans) > 1 and is_chief:
    rundir.save_config(config, workdir)  # What the ensemble was launched with.
  state = jax_utils.replicate(host_state)
  del host_state

  log = _Outputs(config, gans, images, is_chief)
  if start_step == 0:
    log.hparams()
    log.samples(0, state)
  report = periodic_actions.ReportProgress(
    num_train_steps=config.num_train_steps,
    writer=log.writers[0],
    every_steps=config.log_every_steps,
    every_secs=None,
  )
  batches = jax_utils.prefetch_to_device(
    gans.batches(images, config.global_batch_size, start_step, labels), 2
  )
  preemption = Preemption(gans.managers[0])
  train_metrics, last_logged, t0 = None, start_step, time.time()
  step = start_step
  end = (
    config.num_train_steps if stop_at is None else min(stop_at, config.num_train_steps)
  )
  for step in range(start_step + 1, end + 1):
    first = step == start_step + 1
    if first:
      logging.info('Compiling the train step (the first step waits for it) ...')
      compile_start = time.time()
    batch_images, batch_labels = next(batches)
    state, step_metrics = p_train_step(state, batch_images, train_keys, batch_labels)
    if first:
      jax.block_until_ready(step_metrics)
      logging.info(
        'Train step compiled and run once in %.1f s.', time.time() - compile_start
      )
    step_metrics = unreplicate(step_metrics)  # Leading axis: GANs.
    train_metrics = (
      step_metrics if train_metrics is None else train_metrics.merge(step_metrics)
    )
    report(step)
    is_last = step == config.num_train_steps
    preempted = preemption.reached(step) or step == stop_at
    save_now = step % config.checkpoint_every_steps == 0 or is_last or preempted
    if step % config.log_every_steps == 0 or is_last or save_now:
      # Before any save: a non-finite state never overwrites a good checkpoint.
      log.metrics(step, train_metrics, last_logged + 1, skip=hyper.skip_nonfinite)
      train_metrics, last_logged = None, step
    if step % config.sample_every_steps == 0 or is_last:
      with report.timed('sample'):
        log.samples(step, state)
    gans.check_saves()  # A save that failed in the background stops the run now.
    if save_now:
      with report.timed('checkpoint'):
        gans.save(step, jax.device_get(unreplicate(state)))  # Same on every host.
    eval_now = config.eval_every_steps and (
      step % config.eval_every_steps == 0 or is_last
    )
    if eval_now and periodic_eval is not None:
      with report.timed('eval'):
        periodic_eval(jax.device_get(unreplicate(state)))
    if preempted:
      break
  preemption.close()
  gans.close()
  log.flush()
  if step == stop_at and step < config.num_train_steps:
    logging.info('Stopped at step %d of %d, as asked.', step, config.num_train_steps)
  elif step < config.num_train_steps:
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
  states = [ensemble_lib.member(final, k) for k in range(len(gans))]
  return states[0] if len(gans) == 1 else states


def _connect_devices() -> None:
  """With several processes, sets up the collectives between all devices
  now, while the processes are in step (they just waited for process 0's
  data), with a one-number psum over all of them.

  On CPU the collectives (gloo) are set up at the first one, and give up
  when a process arrives over 30 s after another; compiling the train step
  on a loaded machine can take that much longer in one process than in the
  next. The train step later uses this set-up (the same devices).
  """
  if jax.process_count() == 1:
    return
  ones = np.ones((jax.local_device_count(),), np.int32)
  total = jax.pmap(lambda x: jax.lax.psum(x, 'all'), axis_name='all')(ones)
  assert int(unreplicate(total)) == jax.device_count()


def _with_classes(
  config: ml_collections.ConfigDict,
) -> tuple[ml_collections.ConfigDict, np.ndarray]:
  """(config with model.num_classes set from the data, the labels) for a
  conditional run; a ConfigError where the data set has no labels or
  another number of classes than model.num_classes asks for."""
  labels, num_classes = loader.load_labels(config)
  wanted = config.model.num_classes
  if wanted and wanted != num_classes:
    raise ConfigError(
      f'config.model.num_classes={wanted}, but config.dataset={config.dataset!r} '
      f'has {num_classes} classes; set --config.model.num_classes=0 (from the '
      f'data) or {num_classes}.'
    )
  config = config.copy_and_resolve_references()
  config.model.num_classes = num_classes
  return config, labels


class _Outputs:
  """What the loop writes for each GAN: TensorBoard scalars and images, the
  health monitors, sample grids (WORKDIR/samples) and the finiteness check
  of the logged metrics."""

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    gans: ensemble_lib.Ensemble,
    images: np.ndarray,
    is_chief: bool,
  ):
    self._gans, self._is_chief = gans, is_chief
    self._samplers = [generate.fixed_z_sampler(c) for c in gans.configs]
    real_sample = input_pipeline.scale_images(images[:256])
    self._healths = [
      monitors.GANMonitors(
        real_sample,
        d_wins_window=config.monitor_d_wins_window,
        collapse_ratio=config.monitor_collapse_ratio,
        collapse_warmup_steps=config.get('monitor_collapse_warmup_steps', 1000),
        probabilities=config.get('loss', 'bce') == 'bce',
      )
      for _ in gans.configs
    ]
    self.writers = [
      event_writer.create_writer(wd, just_logging=not is_chief) for wd in gans.workdirs
    ]

  def hparams(self) -> None:
    for member, writer in zip(self._gans.members, self.writers, strict=True):
      writer.write_hparams(_hparams(member.config))

  def samples(self, step: int, state: GANState) -> None:
    """Fixed-z grids of G (samples/step_*.png, TensorBoard 'samples') and,
    in a run with EMA, of its moving average (samples/ema_step_*.png,
    'samples_ema'); the health monitors watch G itself."""
    generators = {'': unreplicate(state.g_variables)}
    if state.g_ema is not None:
      generators['ema_'] = unreplicate(state.g_ema)
    for k, workdir in enumerate(self._gans.workdirs):
      for prefix, variables in generators.items():
        samples = self._samplers[k](ensemble_lib.member(variables, k))
        columns = generate.grid_columns(self._gans.configs[k], len(samples))
        grid = figures.make_grid(samples, num_cols=columns)  # Conditional: a
        # row per class.
        tag = 'samples_ema' if prefix else 'samples'
        self.writers[k].write_images(step, {tag: grid[None]})
        if len(samples) > 1 and not prefix:
          diversity = self._healths[k].on_samples(
            step, input_pipeline.scale_images(samples)
          )
          self.writers[k].write_scalars(step, diversity)
        if self._is_chief:
          name = f'{prefix}step_{step:07d}.png'
          figures.save_png(grid, os.path.join(workdir, rundir.SAMPLES_DIR, name))

  def metrics(self, step: int, train_metrics: Any, first: int, *, skip: bool) -> None:
    """Logs the means since step `first`; stops a run gone non-finite."""
    for k, manager in enumerate(self._gans.managers):
      summary = {
        key: float(v)
        for key, v in ensemble_lib.member(train_metrics, k).compute().items()
      }
      try:
        _check_finite(summary, first, step, manager.latest_step(), skip=skip)
      except FloatingPointError as e:
        if len(self._gans) > 1:
          raise FloatingPointError(f'Seed {self._gans.seeds[k]}: {e}') from e
        raise
      self.writers[k].write_scalars(
        step, summary | self._healths[k].on_log(step, summary)
      )

  def flush(self) -> None:
    for writer in self.writers:
      writer.flush()


def _make_periodic_eval(
  config: ml_collections.ConfigDict,
  gans: ensemble_lib.Ensemble,
  images: np.ndarray,
) -> Callable[[GANState], None] | None:
  """The evaluation run every config.eval_every_steps (None when off).

  Checks now, before anything compiles, that the metrics can run (labels
  for 'classifier', the weights file for 'inception'). The returned
  function scores each GAN of a host state (leading axis: GANs) with
  `evaluation.evaluator` and logs a one-line summary.
  """
  if not config.eval_every_steps:
    return None
  metrics = config_checks.eval_metrics(config)
  try:
    weights = evaluator.check_metrics_available(
      config, metrics, config.inception_weights or None
    )
  except (ValueError, FileNotFoundError) as e:
    raise ConfigError(
      f'eval_every_steps={config.eval_every_steps} with eval_metrics='
      f'{config.eval_metrics!r} cannot run: {e}\nOr set '
      '--config.eval_every_steps=0 to train without evaluation.'
    ) from e
  workdirs = gans.workdirs
  cache_workdir = workdirs[0] if len(gans) == 1 else os.path.dirname(workdirs[0])

  def run(host_state: GANState) -> None:
    for k, member in enumerate(gans.members):
      report = evaluator.evaluate_generator(
        member.workdir,
        member.config,
        ensemble_lib.member(host_state, k),
        num_samples=config.eval_num_samples,
        metrics=metrics,
        real_images=images,
        inception_weights=weights,
        cache_workdir=cache_workdir,  # One classifier for all GANs.
      )
      scalars = {
        name: value
        for name, value in report['metrics'].items()
        if isinstance(value, float | int)
      }
      logging.info(
        'Evaluation at step %d%s: %s',
        report['step'],
        gans.describe(k),
        ', '.join(f'{name}={value:.4g}' for name, value in scalars.items()),
      )

  return run


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

  def __init__(self, manager: ocp.CheckpointManager):
    self._mngr = manager
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
