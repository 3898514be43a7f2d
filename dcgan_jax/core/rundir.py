"""The run directory: what a run leaves in its workdir and how it is read.

  WORKDIR/config.json         the config of the latest launch
  WORKDIR/manifest.json       seed, data fingerprint, every launch (manifest)
  WORKDIR/checkpoints/<step>  Orbax checkpoints of the GAN state
  WORKDIR/samples/            fixed-z sample grids
  WORKDIR/eval/               evaluation reports, caches and figures
  WORKDIR/seed_<s>/           with num_seeds = K > 1: one such run per GAN
  WORKDIR/.run.lock           while a launch trains: its lock (run_lock)

(and, by default, WORKDIR/visualize/ and WORKDIR/export/ of those
commands). Every tool reads a workdir through `load_run` or `load_runs`;
the trainer writes it through `make_workdir`, `record_launch` and
`checkpoint_manager`, and `check_resume` guards a relaunch.
"""

import dataclasses
import logging as std_logging
import os
from typing import NamedTuple

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from dcgan_jax.core import manifest
from dcgan_jax.core.state import GANState, PyTree, initial_state
from dcgan_jax.util import files
from dcgan_jax.util.errors import CheckpointError, ConfigChangeError, ConfigError

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
SAMPLES_DIR = 'samples'
EVAL_DIR = 'eval'


class Member(NamedTuple):
  """One GAN of a launch: its own config (its seed) and run directory."""

  config: ml_collections.ConfigDict
  workdir: str


def seed_members(config: ml_collections.ConfigDict, workdir: str) -> list[Member]:
  """Every GAN a launch trains.

  One seed: the run itself. `num_seeds=K > 1`: seeds seed, ..., seed + K - 1,
  each in WORKDIR/seed_<s> with its own config (`seed=s`, `num_seeds=1`), so
  each member directory is exactly the workdir of a single-seed run.
  """
  if config.get('num_seeds', 1) == 1:
    return [Member(config, workdir)]
  members = []
  for k in range(config.num_seeds):
    member = config.copy_and_resolve_references()
    member.seed, member.num_seeds = config.seed + k, 1
    members.append(Member(member, os.path.join(workdir, f'seed_{member.seed}')))
  return members


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes WORKDIR/config.json atomically (what `sample` and resumes read)."""
  files.write_atomic(
    os.path.join(workdir, CONFIG_FILE), config.to_json(indent=2, sort_keys=True)
  )


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not files.exists(path):
    raise FileNotFoundError(
      f'{path} not found: {workdir!r} is not a dcgan_jax workdir (train with '
      f'`python launch.py --config=... --workdir={workdir}`).'
    )
  return ml_collections.ConfigDict(files.read_json(path))


def checkpoint_manager(
  workdir: str, *, keep: int = 3, read_only: bool = False
) -> ocp.CheckpointManager:
  """The Orbax manager of WORKDIR/checkpoints.

  WORKDIR/checkpoints appears with the first save, so a launch that fails
  before it leaves no empty directory behind. A writing manager first removes
  the temporary directories of saves that a kill interrupted. A read-only
  one (`read_only`) writes and deletes nothing.
  """
  directory = files.join(files.absolute(workdir, '--workdir'), CHECKPOINT_DIR)
  if not read_only:
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=False, cleanup_tmp_directories=True
    )
    return ocp.CheckpointManager(directory, options=options)
  # The settings read_only implies, so that Orbax has none to override
  # (with a warning for each).
  options = ocp.CheckpointManagerOptions(
    read_only=True, save_interval_steps=0, max_to_keep=None, create=False
  )
  quiet = _ReadOnlyNotice()
  absl_logger = logging.get_absl_logger()
  absl_logger.addFilter(quiet)
  try:
    return ocp.CheckpointManager(directory, options=options)
  finally:
    absl_logger.removeFilter(quiet)


class _ReadOnlyNotice(std_logging.Filter):
  """Drops the warning every read-only Orbax manager logs when it is
  created ('Given directory is read only=...'): reading is all the tools
  that open one do."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return not str(record.msg).startswith('Given directory is read only')


def checkpoint_steps(workdir: str) -> list[int]:
  """The committed checkpoint steps of a single-GAN workdir, oldest first
  (none where WORKDIR/checkpoints is missing or holds only unfinished saves)."""
  if not files.isdir(os.path.join(workdir, CHECKPOINT_DIR)):
    return []
  with checkpoint_manager(workdir, read_only=True) as manager:
    return sorted(manager.all_steps())


def error_summary(error: BaseException) -> str:
  """'Type: first line of the message' (at most 300 characters of it)."""
  reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else ''
  return f'{type(error).__name__}: {reason}' if reason else repr(error)


def checkpoint_tree(state: GANState) -> dict[str, PyTree]:
  """What a checkpoint holds: the state's fields by name, without the unused
  ones (`g_ema` of a run without EMA), so the checkpoints of runs without
  EMA keep the layout they had before it existed."""
  return {
    field.name: getattr(state, field.name)
    for field in dataclasses.fields(state)
    if getattr(state, field.name) is not None
  }


def restore_latest(
  workdir: str, config: ml_collections.ConfigDict, *, step: int | None = None
) -> GANState | None:
  """The latest (or `step`'s) checkpointed state in `workdir` as host arrays;
  None if there is no checkpoint."""
  if not files.isdir(os.path.join(workdir, CHECKPOINT_DIR)):
    return None
  with checkpoint_manager(workdir, read_only=True) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      return None
    # Host (numpy) arrays: every process reads the whole, replicated state.
    target = jax.tree.map(
      lambda x: np.zeros(x.shape, x.dtype),
      jax.eval_shape(lambda: initial_state(config)),
    )
    try:
      return GANState(**_restore_tree(manager, step, checkpoint_tree(target)))
    except Exception as e:  # Orbax raises many types; all mean "unreadable".
      raise CheckpointError(_unreadable_message(manager, step, e)) from e


def _restore_tree(manager: ocp.CheckpointManager, step: int, tree: dict) -> dict:
  """Checkpoint `step` into `tree`; also reads a GANState saved as it is
  (not through `checkpoint_tree`), whose unused g_ema was saved as None."""
  try:
    return manager.restore(step, args=ocp.args.StandardRestore(tree))
  except ValueError as e:
    if 'g_ema' in tree or 'g_ema' not in str(e):
      raise
  return manager.restore(step, args=ocp.args.StandardRestore({**tree, 'g_ema': None}))


def _unreadable_message(manager: ocp.CheckpointManager, step: int, error) -> str:
  path = os.path.join(str(manager.directory), str(step))
  earlier = [s for s in manager.all_steps() if s < step]
  if earlier:
    advice = (
      f'To resume from step {max(earlier)} (kept: {sorted(earlier)}), move the '
      f'unreadable checkpoint aside (mv {path} {path}.unreadable) and relaunch.'
    )
  else:
    advice = f'No earlier checkpoint is kept; move {path} aside to start over.'
  return (
    f'The latest checkpoint, {path}, cannot be restored ({error_summary(error)}). '
    'If the config changed since it was written, relaunch with the '
    f'original one. {advice}'
  )


def check_resume(
  config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool
) -> None:
  """Refuses to resume a run whose trajectory-shaping config changed.

  A workdir counts as trained once one of its GANs committed a checkpoint:
  a launch that failed before its first save may be relaunched with any
  config.
  """
  if not files.exists(os.path.join(workdir, CONFIG_FILE)):
    return
  old = load_config(workdir)
  if not any(checkpoint_steps(m.workdir) for m in seed_members(old, workdir)):
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


def record_launch(
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
  if record is not None:
    _note_device_count_change(config, record, start_step, launch)
  if record is None:
    record = {'seed': config.seed, 'data': data, 'launches': []}
  record['config'] = config.to_dict()
  record['launches'].append(launch)
  if jax.process_index() == 0:
    save_config(config, workdir)
    manifest.write(workdir, record)


def _note_device_count_change(
  config: ml_collections.ConfigDict, record: dict, start_step: int, launch: dict
) -> None:
  """A resume on another device count than the launch that wrote the
  checkpoint it starts from: recorded in `launch` ('device_count_change'),
  and a warning unless the device-count-invariant mode makes it bit-exact."""
  written_by = record.get('checkpoints', {}).get(str(start_step), {}).get('launch')
  launches = record.get('launches', [])
  if written_by is None or not 0 <= written_by < len(launches):
    written_by = len(launches) - 1  # Older manifests: the last launch.
  if written_by < 0:
    return
  before, now = launches[written_by]['device_count'], launch['device_count']
  if before == now:
    return
  bit_exact = bool(config.get('reduction_shards', 0))
  launch['device_count_change'] = {'from': before, 'to': now, 'bit_exact': bit_exact}
  if not bit_exact:
    logging.warning(
      'Resuming at step %d on %d devices; the run was trained on %d. The '
      'trajectory continues statistically, not bitwise: gradients are now '
      'summed in another order, and Adam turns that round-off into '
      'different steps. config.reduction_shards makes device counts '
      'interchangeable bit for bit. Recorded in manifest.json.',
      start_step,
      now,
      before,
    )


def make_workdir(workdir: str) -> None:
  """Creates WORKDIR/samples; a workdir that cannot be written is a ConfigError."""
  try:
    files.makedirs(os.path.join(workdir, SAMPLES_DIR))
    probe = os.path.join(workdir, f'.write-test-{os.getpid()}')
    files.write_atomic(probe, 'ok')
    files.remove(probe)
  except OSError as e:
    reason = e.strerror or str(e).strip().splitlines()[0][:200] or type(e).__name__
    raise ConfigError(
      f'Cannot write to --workdir={workdir} ({reason}); choose a writable '
      'directory (for gs://, a bucket this machine may write to).'
    ) from e


# The generator a tool uses: 'auto' = the moving average (EMA) when the run
# keeps one, else G itself; 'ema' insists on the EMA; 'raw' = G itself.
GENERATORS = ('auto', 'ema', 'raw')
GENERATOR_HELP = (
  "Which generator: 'auto' (G's moving average when the run has one, i.e. "
  "config.ema_decay > 0, else G), 'ema' or 'raw' (G's own weights)."
)


def resolve_generator(state: GANState, generator: str, workdir: str = '') -> str:
  """'ema' or 'raw' for a `GENERATORS` choice; ValueError (one line, what
  to pass instead) for 'ema' on a run without a moving average."""
  if generator not in GENERATORS:
    raise ValueError(f'--generator must be one of {GENERATORS}, got {generator!r}.')
  if generator == 'auto':
    return 'raw' if state.g_ema is None else 'ema'
  if generator == 'ema' and state.g_ema is None:
    raise ValueError(
      f'--generator=ema: the run {workdir} keeps no moving average of G '
      '(trained with config.ema_decay=0); use --generator=raw or auto.'
    )
  return generator


def generator_variables(state: GANState, generator: str = 'auto') -> dict[str, PyTree]:
  """G's variables for `generator.apply`: the moving average or G's own."""
  if resolve_generator(state, generator) == 'ema':
    return state.g_ema
  return state.g_variables


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained single-GAN run as the tools see it: config, latest state and
  which generator the tool uses ('ema' or 'raw', see `resolve_generator`)."""

  workdir: str
  config: ml_collections.ConfigDict
  state: GANState
  generator: str = 'raw'

  @property
  def step(self) -> int:
    return int(self.state.step)

  @property
  def g_variables(self) -> dict[str, PyTree]:
    """The variables of the generator this run is used with."""
    return generator_variables(self.state, self.generator)

  @property
  def d_variables(self) -> dict[str, PyTree]:
    return {'params': self.state.d_params, 'batch_stats': self.state.d_batch_stats}


def load_runs(workdir: str, generator: str = 'auto') -> list[Run]:
  """Every GAN of `workdir` (one, or K for num_seeds = K) at its latest
  checkpoint, with `generator` resolved (`resolve_generator`).
  FileNotFoundError (saying what to do) for a directory that is not a
  workdir or a GAN without checkpoints; CheckpointError for one that cannot
  be read."""
  config = load_config(workdir)
  runs = []
  for member in seed_members(config, workdir):
    state = restore_latest(member.workdir, member.config)
    if state is None:
      raise FileNotFoundError(
        f'No checkpoint under {os.path.join(member.workdir, CHECKPOINT_DIR)}: train '
        f'first with `python launch.py --config=... --workdir={workdir}`.'
      )
    which = resolve_generator(state, generator, member.workdir)
    runs.append(Run(member.workdir, member.config, state, which))
  return runs


def load_run(workdir: str, generator: str = 'auto') -> Run:
  """The single GAN of `workdir` at its latest checkpoint, with errors that
  say what to pass instead (see `load_runs`; a workdir of several GANs
  names its members)."""
  config = load_config(workdir)
  if config.get('num_seeds', 1) > 1:
    members = ', '.join(m.workdir for m in seed_members(config, workdir))
    raise FileNotFoundError(
      f'{workdir} holds {config.num_seeds} GANs (num_seeds); use --workdir '
      f'set to one of: {members}.'
    )
  (run,) = load_runs(workdir, generator)
  return run
