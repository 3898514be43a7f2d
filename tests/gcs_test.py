"""A gs:// workdir, on a real Cloud Storage API server (conftest `gcs_bucket`).

The small digits run trains into gs://dcgan-test/run as `launch.py`
processes, is SIGKILLed once its first checkpoint is in the bucket, is
relaunched, and must end bit for bit where the same run on a local workdir
ends. Then every tool reads that workdir and writes into the bucket, and
nothing is ever written under a local `gs:` directory.
"""

import io
import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
import runs
from PIL import Image

from dcgan_jax import evaluate, export, reproduce, sample, visualize
from dcgan_jax.core import rundir
from dcgan_jax.util import files

NUM_STEPS = 200
STEPS = dict(
  num_train_steps=NUM_STEPS,
  log_every_steps=20,
  sample_every_steps=100,
  checkpoint_every_steps=20,
)


def start(workdir, data_dir, log):
  """A launch.py process; its output goes to the file `log` (a pipe nobody
  reads while the test polls the bucket would fill and block it)."""
  with open(log, 'a') as f:
    return subprocess.Popen(
      runs.launch_command(workdir, data_dir, **STEPS),
      cwd=runs.REPO,
      stdout=f,
      stderr=subprocess.STDOUT,
    )


def finish(proc, log, timeout=300):
  proc.wait(timeout=timeout)
  assert proc.returncode == 0, open(log).read()[-3000:]


def committed_steps(workdir):
  directory = files.join(workdir, rundir.CHECKPOINT_DIR)
  if not files.isdir(directory):
    return []
  names = files.listdir(directory)
  return [
    int(n)
    for n in names
    if n.isdigit() and files.exists(files.join(directory, n, 'commit_success.txt'))
  ]


def leaves(workdir):
  state = runs.restored(workdir)
  assert int(state.step) == NUM_STEPS
  return jax.tree.leaves(state)


def no_local_gs_directory():
  return not any(
    os.path.exists(os.path.join(d, 'gs:')) for d in (runs.REPO, os.getcwd())
  )


@pytest.fixture(scope='module')
def gs_run(gcs_bucket, data_dir, tmp_path_factory):
  """(gs:// workdir, local workdir) of the same run; the gs:// one killed
  once part way and relaunched."""
  assert no_local_gs_directory()
  logs = tmp_path_factory.mktemp('logs')
  local = str(tmp_path_factory.mktemp('local') / 'run')
  workdir = f'{gcs_bucket}/run'
  # First, so that it alone prepares the session's TFDS digits.
  finish(start(local, data_dir, logs / 'local.log'), logs / 'local.log')
  proc = start(workdir, data_dir, logs / 'killed.log')
  deadline = time.time() + 300
  while not committed_steps(workdir):
    assert proc.poll() is None, open(logs / 'killed.log').read()[-3000:]
    assert time.time() < deadline, 'no checkpoint reached the bucket'
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = max(committed_steps(workdir))
  assert killed_at < NUM_STEPS, 'the run finished before it could be killed'
  finish(start(workdir, data_dir, logs / 'resumed.log'), logs / 'resumed.log')
  assert f'Resuming at step {killed_at}' in open(logs / 'resumed.log').read()
  return workdir, local


def test_killed_gs_run_resumes_onto_the_local_trajectory(gs_run):
  workdir, local = gs_run
  a, b = leaves(workdir), leaves(local)
  assert len(a) == len(b)
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x, y)
  assert no_local_gs_directory()


def test_the_bucket_holds_the_whole_run(gs_run, tmp_path):
  workdir, local = gs_run
  names = files.listdir(workdir)
  assert {'config.json', 'manifest.json', 'checkpoints', 'samples'} <= set(names)
  assert rundir.load_config(workdir).to_dict() == rundir.load_config(local).to_dict()
  manifest = files.read_json(files.join(workdir, 'manifest.json'))
  assert len(manifest['launches']) == 2  # The killed launch and the relaunch.
  samples = files.listdir(files.join(workdir, 'samples'))
  assert 'step_0000200.png' in samples
  png = files.read_bytes(files.join(workdir, 'samples', 'step_0000200.png'))
  with open(os.path.join(local, 'samples', 'step_0000200.png'), 'rb') as f:
    assert png == f.read()  # The same samples as the local run.
  events = [n for n in names if n.startswith('events.out.tfevents.')]
  assert events
  steps = set()
  for k, name in enumerate(events):
    copy = tmp_path / f'events{k}'
    copy.write_bytes(files.read_bytes(files.join(workdir, name)))
    for event in runs.events(str(copy)):
      if any(v.tag == 'g_loss' for v in event.summary.value):
        steps.add(event.step)
  assert max(steps) == NUM_STEPS


def test_every_tool_reads_the_gs_workdir_and_writes_to_the_bucket(gs_run, gcs_bucket):
  workdir, local = gs_run
  out = f'{gcs_bucket}/tools'
  sample.main([f'--workdir={workdir}', f'--output={out}/grid.png', '--num_samples=4'])
  sample.main([f'--workdir={local}', f'--output={out}/local.png', '--num_samples=4'])
  grid = files.read_bytes(f'{out}/grid.png')
  assert grid == files.read_bytes(f'{out}/local.png')
  assert Image.open(io.BytesIO(grid)).size[0] > 0

  visualize.main(['sheet', f'--workdir={workdir}', f'--output={out}/vis', '--num=4'])
  assert 'sheet_seed0.png' in files.listdir(f'{out}/vis')

  export.main([f'--workdir={workdir}', f'--output={out}/export', '--platforms=cpu'])
  assert set(files.listdir(f'{out}/export')) == set(export.ARTEFACT_FILES)

  evaluate.main([f'--workdir={workdir}', '--num_samples=10', '--metrics=classifier'])
  reports = files.listdir(files.join(workdir, rundir.EVAL_DIR))
  assert f'report_step_{NUM_STEPS}.json' in reports
  assert no_local_gs_directory()


def test_reproduce_verifies_the_gs_workdir(gs_run, tmp_path):
  """The killed and resumed gs:// run, trained again from scratch to its
  first two recorded checkpoints: bit-exact."""
  workdir, _ = gs_run
  assert reproduce.reproduce(workdir, steps=40, output=str(tmp_path / 'again')) == 40
  assert no_local_gs_directory()


def test_unsupported_schemes_are_one_line_errors(tmp_path):
  with pytest.raises(SystemExit, match=r'^Error: --output .*s3:// is not supported'):
    sample.main([f'--workdir={tmp_path}', '--output=s3://b/x.png'])
  proc = subprocess.run(
    runs.launch_command('http://example/run', str(tmp_path), num_train_steps=1),
    cwd=runs.REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith('Error: --workdir'), (
    proc.stderr[-2000:]
  )
