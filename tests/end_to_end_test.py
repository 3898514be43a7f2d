"""End to end on real data: the digits preset learns digits a classifier reads.

The run is the README's first command (configs/digits.py, unchanged but for
the TFDS data directory) on the 4 forced CPU devices; its samples are read by
an SVM fit on the real digits. The same check fails for the untrained
generator, so it measures learning, not plumbing.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from configs import digits as digits_config
from configs import digits_conditional as digits_conditional_config
from configs import folder as folder_config
from dcgan_jax import sample, train
from dcgan_jax.core import generate
from dcgan_jax.core import state as gan_state
from dcgan_jax.evaluation import digits_svm
from dcgan_jax.networks import models

NUM_STEPS = 1000  # Of the preset's 2,000.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def trained_workdir(data_dir, tmp_path_factory):
  """The digits preset (the README's first command), 1,000 of its 2,000 steps.

  Its samples already pass the check below at step 1,000. Measured on the
  preset's own run: at step 1,000, classes 6.1-16.4% and mean confidence
  0.880; at 2,000, 6.5-13.7% and 0.883.
  """
  config = digits_config.get_config()
  config.data_dir = data_dir
  config.num_train_steps = NUM_STEPS
  workdir = str(tmp_path_factory.mktemp('digits'))
  train.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope='module')
def digit_reader():
  return digits_svm.fit_classifier('digits')


def test_digits_preset_learns_recognisable_digits(trained_workdir, digit_reader):
  images = sample.sample_from_workdir(trained_workdir, 1000)
  assert images.shape == (1000, 32, 32, 1) and images.dtype == np.uint8
  result = digits_svm.recognise(images, digit_reader)
  print(f'trained generator: {result}')
  assert result.passes(), str(result)


def test_untrained_generator_fails_the_same_check(digit_reader):
  config = digits_config.get_config()
  generator, _ = models.create_models(config.model, image_size=32, num_channels=1)
  state = gan_state.initial_state(config)
  z = models.sample_z(jax.random.key(1), 1000, config.model.z_dim, 'uniform')
  variables = {'params': state.g_params, 'batch_stats': state.g_batch_stats}
  images = generate.to_uint8(generate.generate(generator, variables, z))
  result = digits_svm.recognise(images, digit_reader)
  print(f'untrained generator: {result}')
  assert not result.passes(), str(result)


def test_outputs_of_the_run(trained_workdir):
  samples = sorted(os.listdir(os.path.join(trained_workdir, 'samples')))
  assert samples[0] == 'step_0000000.png' and samples[-1] == f'step_{NUM_STEPS:07d}.png'
  grid = np.asarray(Image.open(os.path.join(trained_workdir, 'samples', samples[-1])))
  assert grid.ndim == 2 and grid.std() > 10  # An 8x8 grid of digits, not blank.
  assert str(NUM_STEPS) in os.listdir(os.path.join(trained_workdir, 'checkpoints'))
  assert any(f.startswith('events.out') for f in os.listdir(trained_workdir))


def run_module(*args, timeout=300):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run(
    [sys.executable, *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def test_sample_command_writes_npz_and_png(trained_workdir, tmp_path):
  npz, png = str(tmp_path / 's.npz'), str(tmp_path / 'grid.png')
  for output, n in ((npz, 12), (png, 9)):
    proc = run_module(
      '-m', 'dcgan_jax.sample', f'--workdir={trained_workdir}',
      f'--num_samples={n}', f'--output={output}', '--seed=3',
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
  images = np.load(npz)['images']
  assert images.shape == (12, 32, 32, 1) and images.dtype == np.uint8
  grid = np.asarray(Image.open(png))
  assert grid.shape == (3 * 34 + 2, 3 * 34 + 2)


def test_sample_command_errors_are_clear(tmp_path):
  proc = run_module(
    '-m', 'dcgan_jax.sample', f'--workdir={tmp_path}', '--output=x.npz'
  )  # fmt: skip
  assert proc.returncode != 0 and 'not a dcgan_jax workdir' in proc.stderr
  proc = run_module(
    '-m', 'dcgan_jax.sample', f'--workdir={tmp_path}', '--output=x.jpg'
  )  # fmt: skip
  assert proc.returncode != 0 and '.npz or .png' in proc.stderr


def test_launch_rejects_an_unknown_config_key(tmp_path):
  proc = run_module(
    'launch.py', '--config=configs/digits.py', f'--workdir={tmp_path}',
    '--config.learning_rte=1e-3',
  )  # fmt: skip
  assert proc.returncode != 0
  assert 'learning_rte' in proc.stderr
  assert not os.listdir(tmp_path)  # Nothing written for a bad command.


def test_launch_reports_a_bad_config_in_one_line(tmp_path):
  proc = run_module(
    'launch.py', '--config=configs/digits.py', f'--workdir={tmp_path / "run"}',
    '--config.image_size=48',
  )  # fmt: skip
  assert proc.returncode == 1
  assert 'Error: Invalid config:' in proc.stderr and '48' in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not os.path.exists(tmp_path / 'run')


def test_folder_preset_learns_a_folder_of_mnist_pngs(tmp_path, tmp_path_factory):
  """28x28 grayscale MNIST digits as PNG files in class subfolders."""
  images, labels = digits_svm.read_mnist()
  root = tmp_path / 'pngs'
  for i, (image, label) in enumerate(zip(images[:5000], labels, strict=False)):
    os.makedirs(root / str(label), exist_ok=True)
    Image.fromarray(image).save(root / str(label) / f'{i:05d}.png')
  config = folder_config.get_config()
  config.dataset = f'folder:{root}'
  config.num_channels = 1
  # Smaller than the preset (32x32, widths 256 and 64): the check reads the
  # samples at 8x8. The check: every class drawn, none above 25%, mean
  # confidence >= 0.8. Measured at 16x16 with widths 64 and 16: confidence
  # 0.872 after 500 steps and 0.871 after 1,000, each class 2.4-18.3% of the
  # samples after 500 and 5.3-15.8% after 1,000.
  config.image_size = 16
  config.model.g_width = 64
  config.model.d_width = 16
  config.num_train_steps = 1000
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  result = digits_svm.recognise(
    sample.sample_from_workdir(workdir, 1000),
    digits_svm.fit_classifier('mnist'),
  )
  print(f'folder of MNIST PNGs: {result}')
  assert result.passes(), str(result)


def test_conditional_preset_draws_the_digits_asked_for(
  data_dir, digit_reader, tmp_path
):
  """configs/digits_conditional.py, 1,000 of its 2,000 steps: the SVM reads
  at least 90% of the samples as the digit G was asked for (as many of each
  digit); the same G asked for the next digit scores near 10%."""
  config = digits_conditional_config.get_config()
  config.data_dir = data_dir
  config.num_train_steps = NUM_STEPS
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  asked = np.repeat(np.arange(10), 50)
  images = sample.sample_from_workdir(workdir, 500, labels=asked)
  read = digit_reader.predict(digits_svm.to_features(images))
  accuracy = float(np.mean(read == asked))
  shifted = sample.sample_from_workdir(workdir, 500, labels=(asked + 1) % 10)
  wrong = float(np.mean(digit_reader.predict(digits_svm.to_features(shifted)) == asked))
  print(
    f'conditional digits: {accuracy:.3f} read as asked; asked for the next: {wrong:.3f}'
  )
  assert accuracy >= 0.9
  assert wrong < 0.2
