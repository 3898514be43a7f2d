"""Bad input to every command: one line, `Error: ...`, and nothing written.

Each `python -m dcgan_jax.<command>` is called in-process (its `main`), as
its module's `__main__` does. A user error must end in SystemExit with a
one-line message (exit status 1: the message is the exit code), never in
another exception; and the workdir's checkpoints must be byte-identical
afterwards.
"""

import hashlib
import os
import shutil

import pytest

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
  latest = max(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')))
  data = os.path.join(workdir, 'checkpoints', str(latest), 'default')
  for directory, _, names in os.walk(data):  # Every array file: garbage.
    for name in names:
      if name not in ('_METADATA', 'commit_success.txt', '_sharding'):
        with open(os.path.join(directory, name), 'wb') as f:
          f.write(b'not a checkpoint')
  before = checkpoint_hashes(workdir)
  message = run(
    command, [f'--workdir={workdir}', *(a.format(out=tmp_path) for a in argv)]
  )
  path = os.path.join(workdir, 'checkpoints', str(latest))
  assert message.startswith(
    f'Error: The latest checkpoint, {path}, cannot be restored ('
  ), message
  assert message.endswith(f'move {path} aside to start over.'), message
  assert checkpoint_hashes(workdir) == before
