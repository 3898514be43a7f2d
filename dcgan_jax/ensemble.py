"""The GANs one launch trains, as one stacked state.

A launch trains K >= 1 GANs in one compiled program (config.num_seeds = K):
GAN k has seed `config.seed + k` and its own run directory (the workdir
itself for K = 1, WORKDIR/seed_<s> otherwise; `rundir.seed_members`). The
loop sees one state whose every leaf has a leading axis of size K; this
module owns everything that is per GAN: keys, checkpoints, data order.
"""

import dataclasses
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from dcgan_jax.core import manifest, rundir
from dcgan_jax.core.state import GANState, PyTree, initial_state, split_root_key
from dcgan_jax.data import input_pipeline
from dcgan_jax.util import files
from dcgan_jax.util.errors import CheckpointError


def member(tree: PyTree, k: int) -> PyTree:
  """GAN k's slice of a stacked pytree (leading axis: GANs)."""
  return jax.tree.map(lambda x: x[k], tree)


def stack(trees: list[PyTree]) -> PyTree:
  """The stacked pytree of one pytree per GAN (host arrays)."""
  return jax.tree.map(lambda *xs: np.stack(xs), *trees)


@dataclasses.dataclass
class Ensemble:
  """The K GANs of a launch (`rundir.Member`s) and their checkpoints."""

  members: list[rundir.Member]
  managers: list[ocp.CheckpointManager] = dataclasses.field(default_factory=list)
  saving: int | None = None  # The step of the saves in flight, if any.
  # Their `manifest.state_digest`s, recorded once the saves are committed.
  _digests: list[str] = dataclasses.field(default_factory=list)

  @classmethod
  def of(cls, config: ml_collections.ConfigDict, workdir: str) -> 'Ensemble':
    return cls(rundir.seed_members(config, workdir))

  def __len__(self) -> int:
    return len(self.members)

  @property
  def configs(self) -> list[ml_collections.ConfigDict]:
    return [m.config for m in self.members]

  @property
  def workdirs(self) -> list[str]:
    return [m.workdir for m in self.members]

  @property
  def seeds(self) -> list[int]:
    return [m.config.seed for m in self.members]

  def describe(self, k: int) -> str:
    """'' for a single GAN, ' (seed s)' for GAN k of several."""
    return f' (seed {self.seeds[k]})' if len(self) > 1 else ''

  def train_keys(self) -> jax.Array:
    """[K] train keys, one per GAN."""
    return jnp.stack([split_root_key(jax.random.key(s))[1] for s in self.seeds])

  def open_checkpoints(self, keep: int) -> None:
    self.managers = [rundir.checkpoint_manager(wd, keep=keep) for wd in self.workdirs]

  def restore(self) -> GANState:
    """The stacked host state to start from: every GAN at the latest step
    all of them saved, or at step 0 where none has a checkpoint.

    GANs that are not all at the same latest step (a kill between their
    saves) are a CheckpointError that names the checkpoints to move aside;
    nothing is ever deleted here.
    """
    steps = [set(m.all_steps()) for m in self.managers]
    if not any(steps):
      return stack([initial_state(c) for c in self.configs])
    common = set.intersection(*steps)
    if not common:
      raise CheckpointError(self._no_common_step(steps))
    step = max(common)
    ahead = [
      (
        files.join(wd, rundir.CHECKPOINT_DIR, str(s)),
        files.join(wd, f'set_aside_step_{s}'),
      )
      for wd, mine in zip(self.workdirs, steps, strict=True)
      for s in sorted(mine)
      if s > step
    ]
    if ahead:
      raise CheckpointError(
        f'The {len(self)} GANs last saved together at step {step}, but '
        f'{", ".join(path for path, _ in ahead)} went further (a kill between '
        'their saves); nothing was deleted. To resume all of them from step '
        f'{step}, which writes those checkpoints again bit for bit, move them '
        f'aside ({"; ".join(f"{p} to {q}" for p, q in ahead)}) and relaunch.'
      )
    return stack([self._restore_verified(m, step) for m in self.members])

  def _restore_verified(self, m: rundir.Member, step: int) -> GANState:
    """Member m's checkpoint `step`, its arrays checked against the digest
    manifest.json recorded when it was written (recorded now if the run
    stopped before it could be)."""
    state = rundir.restore_latest(m.workdir, m.config, step=step)
    digest = manifest.state_digest(rundir.checkpoint_tree(state))
    recorded = manifest.recorded_digest(m.workdir, step)
    if recorded is None:
      logging.warning(
        'manifest.json of %s has no digest of checkpoint %d (stopped before it '
        'was recorded, or written by an older version); recording %s.',
        m.workdir, step, digest[:12],
      )  # fmt: skip
      manifest.record_checkpoint(m.workdir, step, digest)
    elif recorded != digest:
      path = files.join(m.workdir, rundir.CHECKPOINT_DIR, str(step))
      raise CheckpointError(
        f'Checkpoint {path} does not hold the arrays that were saved there '
        f'(sha256 {digest[:12]}, recorded {recorded[:12]} in manifest.json): it '
        'was changed or replaced since. Move it aside (mv '
        f'{path} {path}.changed) to resume from the checkpoint before it, or '
        'restore the original.'
      )
    return state

  def _no_common_step(self, steps: list[set[int]]) -> str:
    """What to do when the GANs' checkpoints share no step."""
    dirs = [files.join(wd, rundir.CHECKPOINT_DIR) for wd in self.workdirs]
    held = '; '.join(
      f'{d} holds {sorted(s) if s else "none"}'
      for d, s in zip(dirs, steps, strict=True)
    )
    latest = max(max(s) for s in steps if s)
    behind = [k for k, s in enumerate(steps) if latest not in s]
    catch_up = '; '.join(
      f'this command with --workdir={self.workdirs[k]} --config.seed='
      f'{self.seeds[k]} --config.num_seeds=1 --config.num_train_steps={latest}'
      for k in behind
    )
    started = ' '.join(d for d, s in zip(dirs, steps, strict=True) if s)
    return (
      f'The {len(self)} GANs share no checkpointed step, so they cannot resume '
      f'together ({held}); nothing was deleted. To keep the training done, bring '
      f'seed{"s" if len(behind) > 1 else ""} '
      f'{", ".join(str(self.seeds[k]) for k in behind)} to step {latest} '
      f'alone ({catch_up}), then relaunch; to start over, move '
      f'{started} aside.'
    )

  def record_launch(
    self, images: np.ndarray, start_step: int, *, allow_config_change: bool
  ) -> None:
    """Writes each GAN's config.json and manifest.json (`rundir.record_launch`)."""
    for m in self.members:
      rundir.record_launch(
        m.config, m.workdir, images, start_step, allow_config_change=allow_config_change
      )

  def save(self, step: int, host_state: GANState) -> None:
    """Starts saving each GAN's slice of a stacked host state; a save that
    cannot start, or the previous one failing, is a CheckpointError."""
    if self.saving is not None:
      self._finish_saves()
    self._digests = []
    for k, manager in enumerate(self.managers):
      tree = rundir.checkpoint_tree(member(host_state, k))
      self._digests.append(manifest.state_digest(tree))
      try:
        manager.save(step, args=ocp.args.StandardSave(tree))
      except Exception as e:  # Orbax and the file systems raise many types.
        raise CheckpointError(self._save_failed(step, k, e)) from e
    self.saving = step

  def check_saves(self) -> None:
    """A CheckpointError as soon as the saves in flight are done and one of
    them failed, not at the next save; cheap while they are running."""
    if self.saving is not None and not any(
      m.is_saving_in_progress() for m in self.managers
    ):
      self._finish_saves()

  def _finish_saves(self) -> None:
    step, self.saving = self.saving, None
    failed = []
    for k, manager in enumerate(self.managers):
      try:
        manager.wait_until_finished()
      except Exception as e:  # The error of the background save.
        failed.append((k, e))
    if failed:
      k, error = failed[0]
      raise CheckpointError(self._save_failed(step, k, error)) from error
    for workdir, digest in zip(self.workdirs, self._digests, strict=True):
      manifest.record_checkpoint(workdir, step, digest)  # Committed: record it.

  def _save_failed(self, step: int, k: int, error: Exception) -> str:
    """The one-line report of GAN k's failed save, naming the last good step."""
    saved = set.intersection(*(set(m.all_steps()) for m in self.managers)) - {step}
    where = (
      f'the last good checkpoint is step {max(saved)}, where a relaunch resumes'
      if saved
      else 'no checkpoint was written yet; relaunching starts over'
    )
    return (
      f'Saving checkpoint {step}{self.describe(k)} to '
      f'{self.managers[k].directory} failed ({rundir.error_summary(error)}); '
      f'{where}.'
    )

  def close(self) -> None:
    """Waits for the saves in flight (a CheckpointError if one failed), then
    closes the checkpoint managers."""
    try:
      if self.saving is not None:
        self._finish_saves()
    finally:
      for manager in self.managers:
        manager.close()

  def batches(
    self,
    images: np.ndarray,
    global_batch_size: int,
    start_step: int,
    labels: np.ndarray | None = None,
  ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """This host's batches from `start_step` on, each GAN in its own data
    order: (images [local devices, K, per-device batch, H, W, C], their
    class labels [local devices, K, per-device batch], or None)."""
    order = dict(
      global_batch_size=global_batch_size,
      start_step=start_step,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )
    per_gan = [
      input_pipeline.host_batches(images, seed=seed, **order) for seed in self.seeds
    ]
    per_gan_labels = [
      input_pipeline.host_labels(labels, seed=seed, **order)
      for seed in (self.seeds if labels is not None else [])
    ]
    n = jax.local_device_count()
    while True:
      batch = np.stack(
        [next(it).reshape(n, -1, *images.shape[1:]) for it in per_gan], 1
      )
      if labels is None:
        yield batch, None
      else:
        yield batch, np.stack([next(it).reshape(n, -1) for it in per_gan_labels], 1)
