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

from dcgan_jax.core import rundir
from dcgan_jax.core.state import GANState, PyTree, initial_state, split_root_key
from dcgan_jax.data import input_pipeline


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

    A kill between the GANs' saves leaves some of them one save ahead;
    those newer checkpoints are dropped so that the GANs stay in step.
    """
    steps = [set(m.all_steps()) for m in self.managers]
    common = set.intersection(*steps) if any(steps) else set()
    step = max(common) if common else None
    if any(steps):
      for workdir, manager, mine in zip(
        self.workdirs, self.managers, steps, strict=True
      ):
        for newer in sorted(s for s in mine if step is None or s > step):
          logging.warning(
            'Dropping checkpoint %d of %s: not all seeds reached it.', newer, workdir
          )
          if jax.process_index() == 0:
            manager.delete(newer)
    states = [
      rundir.restore_latest(m.workdir, m.config, step=step)
      if step is not None
      else None
      for m in self.members
    ]
    return stack(
      [s or initial_state(m.config) for s, m in zip(states, self.members, strict=True)]
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
    """Starts saving each GAN's slice of a stacked host state."""
    for k, manager in enumerate(self.managers):
      manager.save(step, args=ocp.args.StandardSave(member(host_state, k)))

  def close(self) -> None:
    """Waits for the saves in flight, then closes the checkpoint managers."""
    for manager in self.managers:
      manager.wait_until_finished()
      manager.close()

  def batches(
    self, images: np.ndarray, global_batch_size: int, start_step: int
  ) -> Iterator[np.ndarray]:
    """This host's batches from `start_step` on, each GAN in its own data
    order: [local devices, K, per-device batch, H, W, C]."""
    per_gan = [
      input_pipeline.host_batches(
        images,
        seed=seed,
        global_batch_size=global_batch_size,
        start_step=start_step,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
      )
      for seed in self.seeds
    ]
    n = jax.local_device_count()
    while True:
      yield np.stack([next(it).reshape(n, -1, *images.shape[1:]) for it in per_gan], 1)
