"""Bad input to every command: one line, `Error: ...`, and nothing written.

Each `python -m dcgan_jax.<command>` is called in-process (its `main`), as
its module's `__main__` does. A user error must end in SystemExit with a
one-line message (exit status 1: the message is the exit code), never in
another exception; and the workdir's checkpoints must be byte-identical
afterwards.

The commands run as processes (launch.py, `python -m dcgan_jax.<command>`)
end such a failure with that line: nothing after it, no traceback and no
library warning before it (`whole_output_ends_in_error`).
"""

import hashlib
import os
import shutil
import subprocess
import sys

import pytest
import runs

from dcgan_jax import (
  digits_classifier,
  evaluate,
  export,
  linear_probe,
  sample,
  visualize,
)

W = '{workdir}'  # Stands for the test's workdir in the argument lists below.
OUT = '{out}'  # A scratch directory.

CASES = [
  (
    sample,
    ['--workdir=/nonexistent/run', f'--output={OUT}/x.png'],
    "Error: /nonexistent/run/config.json not found: '/nonexistent/run' is not a "
    'dcgan_jax workdir (train with `python launch.py --config=... '
    '--workdir=/nonexistent/run`).',
  ),
  (
    sample,
    [f'--workdir={W}', f'--output={OUT}/x.txt'],
    f"Error: --output must end in .npz or .png, got '{OUT}/x.txt'.",
  ),
  (
    sample,
    [f'--workdir={W}', f'--output={OUT}/x.png', '--num_sampels=3'],
    "Error: Unknown command line flag 'num_sampels'. Did you mean: num_samples ? "
    '(python -m dcgan_jax.sample --help lists the flags).',
  ),
  (
    sample,
    [f'--workdir={W}', f'--output={OUT}/x.png', '--num_samples=0'],
    'Error: flag --num_samples=0: 0 is not a positive integer '
    '(python -m dcgan_jax.sample --help lists the flags).',
  ),
  (
    sample,
    [f'--workdir={W}', '--output=s3://bucket/x.png'],
    "Error: --output 's3://bucket/x.png': s3:// is not supported; use a local "
    'path or a gs:// URL.',
  ),
  (
    evaluate,
    [f'--workdir={W}', '--metrics=fid2'],
    "Error: metrics must be some of ['classifier', 'inception', 'memorization', "
    "'checkerboard'], got ['fid2'].",
  ),
  (
    evaluate,
    [f'--workdir={W}', '--num_samples=5'],
    'Error: flag --num_samples=5: 5 is not integer >= 10 '
    '(python -m dcgan_jax.evaluate --help lists the flags).',
  ),
  (
    export,
    [f'--workdir={W}', '--platforms=gpu'],
    "Error: platforms must be some of ['cpu', 'cuda', 'rocm', 'tpu'], got ['gpu'].",
  ),
  (
    visualize,
    [f'--workdir={W}'],
    'Error: the first argument must be one of sheet, interpolate, arithmetic, '
    'movie, guided_backprop, batchnorm_modes, forget, gallery; got none.',
  ),
  (
    visualize,
    ['movies', f'--workdir={W}'],
    'Error: the first argument must be one of sheet, interpolate, arithmetic, '
    "movie, guided_backprop, batchnorm_modes, forget, gallery; got 'movies'.",
  ),
  (
    visualize,
    ['sheet', f'--workdir={W}', '--num=0'],
    'Error: flag --num=0: 0 is not a positive integer '
    '(python -m dcgan_jax.visualize --help lists the flags).',
  ),
  (
    visualize,
    ['forget', f'--workdir={W}', f'--output={OUT}/vis'],
    f'Error: --boxes=auto needs a data set with an object detector (scenes), but '
    f"{W} was trained on config.dataset='digits'; give --boxes=FILE.json with the "
    'boxes of the samples of `visualize sheet --num=100 --seed=0`.',
  ),
  (
    linear_probe,
    [f'--workdir={W}', '--probe=nope'],
    "Error: Unknown probe 'nope'; use one of ['cifar10', 'mnist_1000', 'svhn_1000'].",
  ),
  (
    digits_classifier,
    [f'--samples={OUT}/empty.npz'],
    f'Error: --samples={OUT}/empty.npz is not an .npz with an `images` array '
    '(EOFError: No data left in file); write one with `python -m '
    'dcgan_jax.sample --output=samples.npz`.',
  ),
]


def checkpoint_hashes(workdir) -> dict[str, str]:
  """sha256 of every file under WORKDIR/checkpoints, by relative path."""
  root = os.path.join(workdir, 'checkpoints')
  hashes = {}
  for directory, _, names in os.walk(root):
    for name in names:
      path = os.path.join(directory, name)
      with open(path, 'rb') as f:
        hashes[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  assert hashes
  return hashes


def corrupt_latest_checkpoint(workdir) -> str:
  """Overwrites every array file of WORKDIR's latest checkpoint with garbage
  (its metadata stays readable); returns the checkpoint's path."""
  latest = max(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')))
  path = os.path.join(workdir, 'checkpoints', str(latest))
  for directory, _, names in os.walk(os.path.join(path, 'default')):
    for name in names:
      if name not in ('_METADATA', 'commit_success.txt', '_sharding'):
        with open(os.path.join(directory, name), 'wb') as f:
          f.write(b'not a checkpoint')
  return path


def run(command, argv) -> str:
  with pytest.raises(SystemExit) as e:
    command.main(argv)
  message = e.value.code
  assert isinstance(message, str), f'exit status {message!r}, not a message'
  assert '\n' not in message.strip()
  return message


@pytest.mark.parametrize(
  'command,argv,expected',
  CASES,
  ids=[f'{c.__name__.split(".")[-1]}-{i}' for i, (c, _, _) in enumerate(CASES)],
)
def test_bad_input_is_one_line_and_writes_nothing(
  command, argv, expected, tiny_digits_workdir, tmp_path
):
  (tmp_path / 'empty.npz').write_bytes(b'')
  before = checkpoint_hashes(tiny_digits_workdir)
  listing = sorted(os.listdir(tiny_digits_workdir))

  def fill(text):
    return text.replace(W, tiny_digits_workdir).replace(OUT, str(tmp_path))

  assert run(command, [fill(a) for a in argv]) == fill(expected)
  assert checkpoint_hashes(tiny_digits_workdir) == before
  assert sorted(os.listdir(tiny_digits_workdir)) == listing


def test_visualize_onto_a_users_directory_is_refused(tiny_digits_workdir, tmp_path):
  (tmp_path / 'notes.txt').write_text('mine')
  message = run(
    visualize, ['sheet', f'--workdir={tiny_digits_workdir}', f'--output={tmp_path}']
  )
  assert message == (
    f'Error: --output={tmp_path} already holds files this command did not write '
    '(notes.txt); give a new directory, or one holding only earlier pictures.'
  )
  assert os.listdir(tmp_path) == ['notes.txt']
  # Its own earlier pictures are fine: they are replaced.
  os.remove(tmp_path / 'notes.txt')
  for _ in range(2):
    visualize.main(
      ['sheet', f'--workdir={tiny_digits_workdir}', f'--output={tmp_path}', '--num=2']
    )
  assert sorted(os.listdir(tmp_path)) == ['sheet_seed0.npz', 'sheet_seed0.png']


def test_export_onto_the_workdir_leaves_it_intact(tiny_digits_workdir):
  before = checkpoint_hashes(tiny_digits_workdir)
  message = run(
    export, [f'--workdir={tiny_digits_workdir}', f'--output={tiny_digits_workdir}']
  )
  assert message.startswith(f'Error: --output={tiny_digits_workdir} already holds ')
  assert checkpoint_hashes(tiny_digits_workdir) == before


@pytest.mark.parametrize(
  'command,argv',
  [
    (sample, ['--output={out}/x.png', '--num_samples=2']),
    (evaluate, ['--num_samples=10', '--metrics=memorization']),
    (export, ['--output={out}/export', '--platforms=cpu']),
    (visualize, ['sheet', '--output={out}/vis', '--num=2']),
    (linear_probe, ['--probe=mnist_1000']),
  ],
  ids=['sample', 'evaluate', 'export', 'visualize', 'linear_probe'],
)
def test_a_corrupt_checkpoint_is_one_line_and_stays_as_it_was(
  command, argv, tiny_digits_workdir, tmp_path
):
  workdir = str(tmp_path / 'run')
  shutil.copytree(tiny_digits_workdir, workdir)
  path = corrupt_latest_checkpoint(workdir)
  before = checkpoint_hashes(workdir)
  message = run(
    command, [f'--workdir={workdir}', *(a.format(out=tmp_path) for a in argv)]
  )
  assert message.startswith(
    f'Error: The latest checkpoint, {path}, cannot be restored ('
  ), message
  assert message.endswith(f'move {path} aside to start over.'), message
  assert checkpoint_hashes(workdir) == before


# ---------------------------------------------------------------------------
# The commands as processes: their whole output.


def run_process(argv: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
  """Runs `argv` from the repository root; stdout and stderr in one stream,
  in the order they were written."""
  return subprocess.run(
    argv,
    cwd=runs.REPO,
    env=dict(os.environ, PYTHONUNBUFFERED='1'),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    timeout=timeout,
  )


def whole_output_ends_in_error(proc: subprocess.CompletedProcess) -> str:
  """The `Error: ...` line that ends the output of a failed command, after
  checking that nothing follows it and that no traceback, Orbax read-only
  warning or closed-event-loop report is anywhere in the output."""
  output = proc.stdout
  lines = [line for line in output.splitlines() if line.strip()]
  assert proc.returncode == 1, output[-5000:]
  assert lines and lines[-1].startswith('Error: '), output[-5000:]
  for noise in ('Traceback', 'read_only', 'read only', 'Event loop is closed'):
    assert noise not in output, f'{noise!r} in the output:\n{output[-8000:]}'
  return lines[-1]


def tiny_launch(workdir, data_dir) -> list[str]:
  """launch.py for the session's tiny run (runs.tiny_config) in `workdir`."""
  config = runs.tiny_config(data_dir)
  return runs.launch_command(
    workdir, data_dir, **{key: config[key] for key in runs.SMALL_STEPS}
  )


# The small run's steps (a checkpoint every 3 steps), for 12 steps.
STEPS_12 = {**runs.SMALL_STEPS, 'num_train_steps': 12}

# launch.py on a disk that is full from checkpoint 6 on: committing that
# save fails with ENOSPC (Orbax's commit callback raises it).
_FULL_FROM_STEP_6 = """
import errno, os, runpy, sys
from orbax.checkpoint._src.checkpointers import async_checkpointer
commit = async_checkpointer._on_commit_callback
def full_disk_from_step_6(tmpdir, *args, **kwargs):
  if int(tmpdir.get_final().name) >= 6:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  return commit(tmpdir, *args, **kwargs)
async_checkpointer._on_commit_callback = full_disk_from_step_6
sys.argv[0] = 'launch.py'
runpy.run_path('launch.py', run_name='__main__')
"""


def test_launch_on_a_disk_that_fills_up(data_dir, tmp_path):
  workdir = tmp_path / 'run'
  command = runs.launch_command(workdir, data_dir, **STEPS_12)
  proc = run_process([sys.executable, '-c', _FULL_FROM_STEP_6, *command[2:]])
  assert whole_output_ends_in_error(proc) == (
    f'Error: Saving checkpoint 6 to {workdir / "checkpoints"} failed (OSError: '
    '[Errno 28] No space left on device); the last good checkpoint is step 3, '
    'where a relaunch resumes.'
  )


def _tmpfs_or_skip(directory, size_kb: int) -> list[str]:
  """The command prefix that runs a command with a tmpfs of `size_kb` KiB
  mounted on `directory`, in a mount namespace of its own; skips the test
  where this machine allows none."""
  os.makedirs(directory, exist_ok=True)
  prefix = [
    'unshare', '--mount', '--map-root-user', 'sh', '-c',
    f'mount -t tmpfs -o size={size_kb}k tmpfs "$0" && exec "$@"', str(directory),
  ]  # fmt: skip
  try:
    probe = subprocess.run([*prefix, 'true'], capture_output=True, timeout=60)
  except (OSError, subprocess.TimeoutExpired) as e:
    pytest.skip(f'no mount namespace: {e}')
  if probe.returncode != 0:
    pytest.skip(f'no mount namespace: {probe.stderr.decode().strip()}')
  return prefix


def test_launch_on_a_tmpfs_that_fills_up(data_dir, tiny_digits_workdir, tmp_path):
  """As above, on a real file system that runs out of space while Orbax's
  threads write checkpoint 6 (room for one checkpoint and the rest)."""
  checkpoint = os.path.join(tiny_digits_workdir, 'checkpoints', str(runs.NUM_STEPS))
  size = sum(
    os.path.getsize(os.path.join(d, name))
    for d, _, names in os.walk(checkpoint)
    for name in names
  )
  disk = tmp_path / 'disk'
  prefix = _tmpfs_or_skip(disk, size * 3 // 2 // 1024 + 256)
  workdir = disk / 'run'
  proc = run_process([*prefix, *runs.launch_command(workdir, data_dir, **STEPS_12)])
  line = whole_output_ends_in_error(proc)
  assert line.startswith(
    f'Error: Saving checkpoint 6 to {workdir / "checkpoints"} failed '
  )
  assert line.endswith('the last good checkpoint is step 3, where a relaunch resumes.')


def test_launch_resuming_a_corrupt_checkpoint(data_dir, tiny_digits_workdir, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(tiny_digits_workdir, workdir)
  path = corrupt_latest_checkpoint(workdir)
  line = whole_output_ends_in_error(run_process(tiny_launch(workdir, data_dir)))
  assert line.startswith(f'Error: The latest checkpoint, {path}, cannot be restored (')
  assert line.endswith(f'move {path} aside to start over.')


@pytest.mark.parametrize('command', ['reproduce', 'evaluate'])
def test_a_command_on_a_corrupt_checkpoint(command, tiny_digits_workdir, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(tiny_digits_workdir, workdir)
  path = corrupt_latest_checkpoint(workdir)
  proc = run_process(
    [sys.executable, '-m', f'dcgan_jax.{command}', f'--workdir={workdir}']
  )
  line = whole_output_ends_in_error(proc)
  assert line.startswith(f'Error: The latest checkpoint, {path}, cannot be restored (')


def test_evaluate_says_each_memory_estimate_once(tiny_digits_workdir, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(tiny_digits_workdir, workdir)
  proc = run_process(
    [
      sys.executable, '-m', 'dcgan_jax.evaluate', f'--workdir={workdir}',
      '--num_samples=10', '--metrics=memorization', '--memory_limit_gb=0.000001',
    ]
  )  # fmt: skip
  line = whole_output_ends_in_error(proc)
  assert line.startswith("Error: metric 'memorization' needs about ")
  estimates = [line for line in proc.stdout.splitlines() if 'Memory:' in line]
  assert len(estimates) == 1, proc.stdout
  assert estimates[0].startswith("Memory: metric 'memorization' needs about ")
