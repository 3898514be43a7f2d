"""Verify a run bit for bit: train it again and compare checkpoint digests.

  python -m dcgan_jax.reproduce --workdir=W [--steps=N] [--output=DIR]

Every checkpoint a run commits has the sha256 of its arrays recorded in
W/manifest.json. This command

1. checks the checkpoints W still holds against those digests;
2. loads W's data as its config says and checks the data fingerprint;
3. trains W's config from scratch (same seed) in a scratch workdir (DIR,
   default a new temporary directory, removed at the end unless it is
   DIR), stopping at every recorded step up to N (default: the last
   recorded one), and compares each new checkpoint's digest with the
   recorded one.

It prints "bit-exact up to step N" and exits 0, or names the first step
whose arrays differ, the first array that differs (when W still holds that
checkpoint) and what differs between the environment that wrote it and
this one (versions, backend, device kind and count, processes, XLA flags,
code), and exits 1. W may be a gs:// URL.
"""

import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

from dcgan_jax.util import xla_cpu  # Imports no JAX.

# Train with the XLA:CPU kernels launch.py trains with (set before JAX starts;
# see dcgan_jax/util/xla_cpu.py): other kernels round differently.
xla_cpu.use_project_kernels()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

from dcgan_jax import cli, train  # noqa: E402
from dcgan_jax.core import manifest, rundir  # noqa: E402
from dcgan_jax.data import loader  # noqa: E402
from dcgan_jax.util import files, progress  # noqa: E402

COMMAND = cli.Command('reproduce', __doc__)
COMMAND.path('workdir', None, 'The run to verify (a single GAN).')
COMMAND.integer(
  'steps', None, 'Verify the recorded checkpoints up to this step (default: all).'
)
COMMAND.path(
  'output',
  None,
  'Scratch workdir of the new run, kept (default: a temporary one, removed).',
)
COMMAND.required('workdir')


class NotReproduced(Exception):
  """The run could not be reproduced bit for bit (a one-line reason)."""


def recorded_steps(record: dict[str, Any], steps: int | None) -> list[int]:
  """The steps with a recorded digest, up to `steps`; a ValueError if none."""
  recorded = sorted(int(s) for s in record.get('checkpoints', {}))
  if not recorded:
    raise ValueError(
      'manifest.json records no checkpoint digests: the run was written by a '
      'version without them; resume it once to record the latest one.'
    )
  chosen = [s for s in recorded if steps is None or s <= steps]
  if not chosen:
    raise ValueError(
      f'No checkpoint digest is recorded up to step {steps}; the first is at '
      f'step {recorded[0]}: use --steps={recorded[0]} or more.'
    )
  return chosen


def check_stored(workdir: str, record: dict[str, Any]) -> list[str]:
  """'step S: ...' for each checkpoint W holds whose arrays differ from the
  digest recorded when it was written."""
  changed = []
  config = rundir.load_config(workdir)
  for step in rundir.checkpoint_steps(workdir):
    recorded = record.get('checkpoints', {}).get(str(step))
    if recorded is None:
      continue
    state = rundir.restore_latest(workdir, config, step=step)
    digest = manifest.state_digest(rundir.checkpoint_tree(state))
    if digest != recorded['sha256']:
      changed.append(
        f'step {step}: holds sha256 {digest[:12]}, recorded {recorded["sha256"][:12]}'
      )
  return changed


def first_difference(a: Any, b: Any) -> str:
  """'path: max |a - b| = x (n of m values)' of the first differing leaf."""
  leaves_b = dict(
    (jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_leaves_with_path(b)
  )
  for path, x in jax.tree_util.tree_leaves_with_path(a):
    name = jax.tree_util.keystr(path)
    y = leaves_b.get(name)
    x = np.asarray(x)
    if y is None or np.asarray(y).shape != x.shape:
      return f'{name}: missing or of another shape'
    y = np.asarray(y)
    if not np.array_equal(x, y):
      diff = np.abs(x.astype(np.float64) - y.astype(np.float64))
      return (
        f'{name}: max |difference| {diff.max():.3g} '
        f'({int((x != y).sum())} of {x.size} values)'
      )
  return 'no array differs (the digests do: a dtype or layout change)'


def _environment(launch: dict[str, Any]) -> dict[str, Any]:
  flat = {
    key: launch.get(key)
    for key in ('backend', 'device_kind', 'device_count', 'process_count', 'xla_flags')
  }
  flat |= {f'version of {k}': v for k, v in launch.get('versions', {}).items()}
  flat['code commit'] = (launch.get('code') or {}).get('commit')
  return flat


def environment_changes(then: dict[str, Any], now: dict[str, Any]) -> list[str]:
  """'key: then -> now' for what differs between two launches' environments."""
  a, b = _environment(then), _environment(now)
  return [f'{k}: {a.get(k)!r} -> {b.get(k)!r}' for k in a | b if a.get(k) != b.get(k)]


def reproduce(workdir: str, *, steps: int | None = None, output: str | None = None):
  """Verifies `workdir` (see the module docstring); returns the last step
  verified, or raises NotReproduced with the first difference."""
  record = manifest.load(workdir)
  if record is None:
    raise FileNotFoundError(f'{workdir} has no manifest.json: not a dcgan_jax workdir.')
  config = rundir.load_config(workdir)
  if config.get('num_seeds', 1) > 1:
    raise ValueError(
      f'{workdir} holds {config.num_seeds} GANs: verify each, --workdir=W/seed_<s>.'
    )
  targets = recorded_steps(record, steps)
  changed = check_stored(workdir, record)
  if changed:
    raise NotReproduced(
      'checkpoints differ from the digests recorded when they were written '
      f'({"; ".join(changed)}): they were changed since.'
    )
  scratch = output or tempfile.mkdtemp(prefix='dcgan_reproduce_')
  try:
    data = loader.load_data(config, scratch)
    fingerprint = manifest.fingerprint(data)
    if fingerprint != record['data']['fingerprint']:
      raise NotReproduced(
        f'the data set differs (fingerprint {fingerprint[:12]}, the run had '
        f'{record["data"]["fingerprint"][:12]}): point config.dataset / data_dir '
        'at the data the run was trained on.'
      )
    del data
    for step in progress.track(targets, 'Reproducing the recorded checkpoints'):
      _train_to(config, scratch, step)
      again = manifest.recorded_digest(scratch, step)
      wanted = record['checkpoints'][str(step)]
      if again != wanted['sha256']:
        raise NotReproduced(_difference(workdir, scratch, config, record, step))
    return targets[-1]
  finally:
    if output is None:
      shutil.rmtree(scratch, ignore_errors=True)


def _train_to(config, scratch: str, step: int) -> None:
  """Trains (or resumes) the scratch run to `step`, checkpointing there.
  num_train_steps stays the run's: a learning-rate schedule depends on it."""
  run = config.copy_and_resolve_references()
  run.eval_every_steps = 0  # Evaluation does not change the trajectory.
  train.train_and_evaluate(run, scratch, stop_at=step)


def _difference(workdir, scratch, config, record, step) -> str:
  """The first difference at `step`, and the environments' differences."""
  what = f'first difference at step {step}'
  if step in rundir.checkpoint_steps(workdir):
    then = rundir.restore_latest(workdir, config, step=step)
    now = rundir.restore_latest(scratch, config, step=step)
    what += ': ' + first_difference(
      rundir.checkpoint_tree(then), rundir.checkpoint_tree(now)
    )
  else:
    what += f' (checkpoint {step} is no longer kept in {workdir} to compare arrays)'
  launches = record.get('launches', [])
  index = record['checkpoints'][str(step)].get('launch', len(launches) - 1)
  then = launches[index] if 0 <= index < len(launches) else {}
  now = manifest.describe_launch(config, 0)
  changes = environment_changes(then, now)
  if config.get('reduction_shards', 0):  # The device count changes no bit.
    changes = [c for c in changes if not c.startswith('device_count:')]
  why = (
    'environment differences: ' + '; '.join(changes)
    if changes
    else 'the environment is the same as the one that wrote it'
  )
  moves = [
    f'step {launch["start_step"]} ({change["from"]} -> {change["to"]} devices)'
    for launch in launches[: index + 1]
    if (change := launch.get('device_count_change')) and not change['bit_exact']
  ]
  if moves:
    why += (
      '; the run itself resumed on another device count, which continues '
      'only statistically, at ' + ', '.join(moves)
    )
  return f'{what}; {why}.'


def _reproduce(args) -> None:
  if args.output is not None and files.exists(args.output):
    if not files.isdir(args.output) or files.listdir(args.output):
      raise FileExistsError(
        f'--output={args.output} exists and is not empty; give a new directory.'
      )
  try:
    last = reproduce(args.workdir, steps=args.steps, output=args.output)
  except NotReproduced as e:
    cli.fail(f'not reproduced: {e}')
  print(f'bit-exact up to step {last}')


def main(argv: Sequence[str]) -> None:
  logging.set_verbosity(logging.WARNING)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  COMMAND.run(_reproduce, argv)


if __name__ == '__main__':
  main(cli.main_argv())
