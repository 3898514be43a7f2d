"""Class-conditional G and D: models, labels from every kind of data set,
the step, resume, sampling by class and conditional_accuracy."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from runs import REPO, checkpoint_leaves, small_config

from dcgan_jax import sample, train
from dcgan_jax.core import generate, rundir
from dcgan_jax.data import input_pipeline, loader
from dcgan_jax.evaluation import evaluator, label_classifier
from dcgan_jax.networks import models
from dcgan_jax.util import errors


@pytest.mark.parametrize('arch', models.ARCHS)
def test_conditional_models_take_labels(arch):
  config = small_config('', conditional=True, **{'model.arch': arch})
  config.model.num_classes = 10
  size = 16 if arch in ('dcgan', 'mlp') else 28
  g, d = models.create_models(config.model, image_size=size, num_channels=1)
  z = models.sample_z(jax.random.key(0), 2, config.model.z_dim, 'uniform')
  latent = jnp.concatenate([jnp.stack([z[0], z[0]]), jnp.eye(10)[:2]], axis=-1)
  g_vars = g.init(jax.random.key(1), latent)
  images = g.apply(g_vars, latent)
  assert images.shape == (2, size, size, 1)
  assert not np.allclose(images[0], images[1])  # Same z, labels 0 and 1.
  d_vars = d.init(jax.random.key(2), images, labels=jnp.array([0, 1]))
  as_index = d.apply(d_vars, images, labels=jnp.array([3, 4]))
  as_onehot = d.apply(d_vars, images, labels=jnp.eye(10)[jnp.array([3, 4])])
  np.testing.assert_array_equal(as_index, as_onehot)
  assert not np.allclose(as_index, d.apply(d_vars, images, labels=jnp.array([5, 6])))
  with pytest.raises(ValueError, match='class-conditional .* pass labels='):
    d.apply(d_vars, images)


def _save(path, value):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


def test_folder_labels_are_the_sorted_subfolders(tmp_path):
  root = tmp_path / 'classes'
  for name, value in [('cat/1.png', 10), ('cat/sub/2.png', 20), ('ant/3.png', 30)]:
    _save(root / name, value)
  labels, num_classes = input_pipeline.load_labels(
    dataset=f'folder:{root}', folder_classes=True
  )
  images = input_pipeline.load_images(
    dataset=f'folder:{root}', image_size=8, num_channels=1
  )
  assert num_classes == 2
  # Rows: ant/3 (30), cat/1 (10), cat/sub/2 (20); ant = 0, cat = 1.
  np.testing.assert_array_equal(images[:, 0, 0, 0], [30, 10, 20])
  np.testing.assert_array_equal(labels, [0, 1, 1])
  with pytest.raises(ValueError, match='no labels'):  # Not asked: shards.
    input_pipeline.load_labels(dataset=f'folder:{root}')
  _save(root / 'loose.png', 40)
  with pytest.raises(ValueError, match='outside class subfolders .* loose.png'):
    input_pipeline.folder_labels(str(root))


def test_batches_of_labels_follow_the_batches_of_images():
  images = np.arange(50, dtype=np.uint8).reshape(50, 1, 1, 1)
  labels = np.arange(50, dtype=np.int32) % 7
  kwargs = dict(seed=3, global_batch_size=8, start_step=9)
  image_batches = input_pipeline.host_batches(images, prefetch=0, **kwargs)
  label_batches = input_pipeline.host_labels(labels, **kwargs)
  for _ in range(12):
    x, y = next(image_batches), next(label_batches)
    rows = np.round((x[:, 0, 0, 0] + 1) * 127.5).astype(int)
    np.testing.assert_array_equal(y, rows % 7)


def test_a_data_set_without_labels_is_a_one_line_error(tmp_path):
  _save(tmp_path / 'flat' / 'a.png', 1)
  config = small_config('', conditional=True, dataset=f'folder:{tmp_path / "flat"}')
  with pytest.raises(errors.ConfigError, match='needs class labels') as e:
    loader.load_labels(config)
  assert '\n' not in str(e.value)


@pytest.fixture(scope='module')
def conditional_workdir(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('conditional') / 'run'
  config = small_config(data_dir, conditional=True, num_sample_images=20)
  train.train_and_evaluate(config, str(workdir))
  return workdir


def test_conditional_run_resumes_bit_exact(data_dir, conditional_workdir, tmp_path):
  assert rundir.load_config(str(conditional_workdir)).model.num_classes == 10
  config = small_config(data_dir, conditional=True, num_sample_images=20)
  stopped = config.copy_and_resolve_references()
  stopped.num_train_steps = 3
  train.train_and_evaluate(stopped, str(tmp_path / 'resumed'))
  train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  for x, y in zip(
    checkpoint_leaves(conditional_workdir),
    checkpoint_leaves(tmp_path / 'resumed'),
    strict=True,
  ):
    np.testing.assert_array_equal(x, y)
  # The sample grid: a row of 2 per class.
  grid = np.asarray(Image.open(conditional_workdir / 'samples' / 'step_0000006.png'))
  assert grid.shape[:2] == (10 * 18 + 2, 2 * 18 + 2)


def test_sample_by_label(conditional_workdir, tiny_digits_workdir, tmp_path):
  workdir = str(conditional_workdir)
  sevens = sample.sample_from_workdir(workdir, 4, labels=[7])
  threes = sample.sample_from_workdir(workdir, 4, labels=[3])
  assert not np.array_equal(sevens, threes)  # Same z, other class.
  np.testing.assert_array_equal(
    sample.sample_from_workdir(workdir, 4, labels=[7, 3]),
    np.stack([sevens[0], threes[1], sevens[2], threes[3]]),
  )
  config = rundir.load_config(workdir)
  np.testing.assert_array_equal(generate.default_labels(config, 5), [0, 1, 2, 3, 4])
  np.testing.assert_array_equal(
    generate.default_labels(config, 25)[:6], [0, 0, 0, 1, 1, 1]
  )

  def run(*args):
    return subprocess.run(
      [sys.executable, '-m', 'dcgan_jax.sample', *args],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
    )

  out = run(f'--workdir={workdir}', '--labels=7', f'--output={tmp_path}/7.png')
  assert out.returncode == 0, out.stderr[-2000:]
  assert os.path.exists(tmp_path / '7.png')
  for args, message in [
    (
      [f'--workdir={workdir}', '--labels=12'],
      'Error: --labels must be class numbers in [0, 10), one per sample; got '
      '[12, 12, 12, 12, 12, 12, 12, 12, 12, 12]....',
    ),
    (
      [f'--workdir={workdir}', '--labels=seven'],
      "Error: --labels must be class numbers separated by commas, got 'seven'.",
    ),
    (
      [f'--workdir={tiny_digits_workdir}', '--labels=1'],
      'Error: This run is not class-conditional (config.conditional=False): '
      'leave out --labels.',
    ),
  ]:
    out = run(*args, f'--output={tmp_path}/x.png')
    assert out.returncode == 1 and 'Traceback' not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == message


def test_conditional_accuracy_reads_requested_classes(data_dir, tmp_path):
  """Real digits 'requested' as their own labels score as the classifier's
  accuracy; with the labels shifted by one, almost nothing."""
  config = small_config(data_dir, conditional=True)
  real = loader.load_data(config, str(tmp_path))
  labels, _ = loader.load_labels(config)
  training = label_classifier.ClassifierTraining(steps=300)
  shown = real[:600]
  right, _ = evaluator.classifier_metrics(
    str(tmp_path), config, shown, real, training, requested=labels[:600]
  )
  wrong, _ = evaluator.classifier_metrics(
    str(tmp_path), config, shown, real, training, requested=(labels[:600] + 1) % 10
  )
  assert right['conditional_accuracy'] > 0.85
  assert wrong['conditional_accuracy'] < 0.1
  assert right['conditional_accuracy'] + wrong['conditional_accuracy'] <= 1.0
