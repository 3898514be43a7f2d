"""Small digits runs for the tests, and what tests read back from a workdir.

`small_config` is the digits preset shrunk to 16x16 with narrow models and
batch 16: it compiles and trains in seconds. `launch_command` is the same
run as a `launch.py` command line, for tests that run real processes.
conftest.py trains `tiny_config` (40 steps) once per session for the tools'
tests (the `tiny_digits_workdir` fixture gives each test module a copy).
"""

import os
import sys

import jax

from configs import digits as digits_config
from dcgan_jax.core import rundir
from dcgan_jax.core import step as step_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What makes the digits preset small (as --config.KEY=VALUE overrides).
SMALL = {
  'image_size': 16,
  'model.g_width': 32,
  'model.d_width': 8,
  'global_batch_size': 16,
  'num_sample_images': 4,
}
# The run steps of small_config (tests override them as they need).
SMALL_STEPS = {
  'num_train_steps': 6,
  'log_every_steps': 2,
  'sample_every_steps': 3,
  'checkpoint_every_steps': 3,
}

NUM_STEPS = 40  # tiny_config's run.
SAMPLE_EVERY_STEPS = 20  # Its sample grids: steps 0, 20 and 40.


def small_config(data_dir: str, **overrides):
  """The small digits run; `overrides` by dotted key ('model.d_width')."""
  config = digits_config.get_config()
  config.data_dir = data_dir
  for key, value in {**SMALL, **SMALL_STEPS, **overrides}.items():
    target = config
    *path, leaf = key.split('.')
    for name in path:
      target = target[name]
    target[leaf] = value
  return config


def tiny_config(data_dir: str):
  """The session's tiny digits run (see conftest.py): 40 steps."""
  return small_config(
    data_dir,
    num_train_steps=NUM_STEPS,
    log_every_steps=20,
    sample_every_steps=SAMPLE_EVERY_STEPS,
    checkpoint_every_steps=NUM_STEPS,
  )


def launch_command(workdir, data_dir, **overrides) -> list[str]:
  """`python launch.py` for the small digits run in `workdir` (run from REPO)."""
  settings = {'data_dir': data_dir, **SMALL, **overrides}
  return [
    sys.executable,
    'launch.py',
    '--config=configs/digits.py',
    f'--workdir={workdir}',
    *(f'--config.{key}={value}' for key, value in settings.items()),
  ]


def restored(workdir):
  """The latest checkpointed state of a single-GAN workdir."""
  return rundir.restore_latest(str(workdir), rundir.load_config(str(workdir)))


def checkpoint_leaves(workdir):
  return jax.tree.leaves(restored(workdir))


def events(path: str):
  """The Event protos of a local TensorBoard event file, read by TensorBoard."""
  from tensorboard.backend.event_processing import event_file_loader

  return event_file_loader.EventFileLoader(path).Load()


def logged_metrics(workdir) -> dict[tuple[int, str], bytes]:
  """The training scalars in a workdir's TensorBoard events, as raw bytes."""
  names = set(step_lib.TrainMetrics.__annotations__)
  found = {}
  for name in os.listdir(workdir):
    if name.startswith('events.out'):
      for event in events(os.path.join(workdir, name)):
        for value in event.summary.value:
          if value.tag in names:
            found[(event.step, value.tag)] = value.tensor.SerializeToString()
  return found
