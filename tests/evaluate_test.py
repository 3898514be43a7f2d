"""The evaluation tool: reports, caches, and metrics that measure something.

The module works on its copy of the session's tiny digits run (16x16,
narrow models, a few dozen steps; see runs.py); the project's
classifier is trained once in it (the first evaluate call) and reused by the
later ones.
"""

import io
import json
import logging
import os
import subprocess
import sys
import uuid

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from runs import NUM_STEPS, tiny_config

from dcgan_jax import evaluate, train
from dcgan_jax.core import config_checks, generate, rundir
from dcgan_jax.core import state as gan_state
from dcgan_jax.data import loader
from dcgan_jax.evaluation import evaluator, label_classifier, memory
from dcgan_jax.networks import models
from dcgan_jax.util import errors, files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_SAMPLES = 300


@pytest.fixture(scope='module')
def workdir(tiny_digits_workdir):
  return tiny_digits_workdir


@pytest.fixture(scope='module')
def first_report(workdir):
  return evaluator.evaluate(workdir, num_samples=NUM_SAMPLES, metrics=['classifier'])


def classifier_files(workdir):
  directory = os.path.join(workdir, evaluator.CLASSIFIER_DIR)
  return {
    name: os.stat(os.path.join(directory, name)).st_mtime_ns
    for name in ('params.msgpack', 'classifier.json', 'real_stats.npz')
  }


def untrained_samples(config, num):
  generator, _ = models.create_models(
    config.model, image_size=config.image_size, num_channels=config.num_channels
  )
  state = gan_state.initial_state(config)
  variables = {'params': state.g_params, 'batch_stats': state.g_batch_stats}
  z = models.sample_z(jax.random.key(1), num, config.model.z_dim, config.model.z_dist)
  return generate.to_uint8(generate.generate(generator, variables, z))


def test_report_fields_ranges_and_tensorboard(workdir, first_report):
  path = os.path.join(workdir, 'eval', f'report_step_{NUM_STEPS}.json')
  with open(path) as f:
    report = json.load(f)
  assert report == json.loads(json.dumps(first_report))
  assert report['step'] == NUM_STEPS and report['num_samples'] == NUM_SAMPLES
  assert report['image_shape'] == [16, 16, 1]
  metrics = report['metrics']
  assert set(metrics) == {
    'classifier_fd',
    'class_fractions',
    'missing_classes',
    'mean_confidence',
    'classifier_test_accuracy',
  }
  assert set(report['descriptions']) == set(metrics)
  assert np.isfinite(metrics['classifier_fd']) and metrics['classifier_fd'] > 0
  fractions = np.asarray(metrics['class_fractions'])
  assert fractions.shape == (10,) and (fractions >= 0).all()
  assert fractions.sum() == pytest.approx(1.0)
  assert 0 <= metrics['missing_classes'] <= 10
  assert metrics['missing_classes'] == int((fractions < 0.01).sum())
  assert 0.1 <= metrics['mean_confidence'] <= 1.0
  assert report['details']['classifier']['cached'] is False
  assert 'dataset=digits' in report['details']['classifier']['fingerprint']
  events = os.listdir(os.path.join(workdir, 'eval'))
  assert any(name.startswith('events.out.tfevents') for name in events), events
  assert not any('.tmp-' in name for name in events)


def test_classifier_is_accurate_on_held_out_digits(first_report):
  accuracy = first_report['metrics']['classifier_test_accuracy']
  print(f'classifier held-out accuracy (16x16 digits): {accuracy:.4f}')
  assert accuracy > 0.95


def test_classifier_cache_is_reused(workdir, first_report):
  before = classifier_files(workdir)
  again = evaluator.evaluate(workdir, num_samples=NUM_SAMPLES, metrics=['classifier'])
  assert classifier_files(workdir) == before  # Nothing retrained or rewritten.
  assert again['details']['classifier']['cached'] is True
  assert again['metrics'] == first_report['metrics']  # Same z, same classifier.
  other_seed = evaluator.evaluate(
    workdir, num_samples=NUM_SAMPLES, metrics=['classifier'], seeds=[1]
  )
  assert (
    other_seed['metrics']['classifier_fd'] != first_report['metrics']['classifier_fd']
  )


def test_classifier_fd_separates_real_data_from_an_untrained_generator(
  workdir, first_report
):
  config = rundir.load_config(workdir)
  real = loader.load_data(config, workdir)
  subset = real[np.random.default_rng(0).permutation(len(real))[:NUM_SAMPLES]]
  real_metrics, _ = evaluator.compute_metrics(workdir, config, subset, ['classifier'])
  fake = untrained_samples(config, NUM_SAMPLES)
  fake_metrics, _ = evaluator.compute_metrics(workdir, config, fake, ['classifier'])
  trained_fd = first_report['metrics']['classifier_fd']
  print(
    f'classifier_fd: real {real_metrics["classifier_fd"]:.3f}, G after '
    f'{NUM_STEPS} steps {trained_fd:.3f}, untrained G '
    f'{fake_metrics["classifier_fd"]:.3f}'
  )
  assert real_metrics['classifier_fd'] * 20 < fake_metrics['classifier_fd']
  assert real_metrics['missing_classes'] == 0
  assert real_metrics['mean_confidence'] > 0.9
  assert max(real_metrics['class_fractions']) < 0.15


def test_folder_data_set_says_which_metrics_work(workdir):
  config = rundir.load_config(workdir)
  config.dataset = 'folder:/nonexistent/images'
  images = np.zeros((10, 16, 16, 1), np.uint8)
  with pytest.raises(ValueError, match='labelled data set.*--metrics=inception'):
    evaluator.compute_metrics(
      workdir, config, images, ['classifier'], real_images=images
    )
  with pytest.raises(ValueError, match='metrics must be some of'):
    evaluator.compute_metrics(workdir, config, images, ['fid'], real_images=images)


class StandInInception(nn.Module):
  """Same outputs as FIDInceptionV3 ({'pool3', 'logits'}), a tiny network."""

  @nn.compact
  def __call__(self, x):
    assert x.shape[1:] == (299, 299, 3)  # Went through inception.preprocess.
    x = nn.avg_pool(x, (23, 23), strides=(23, 23)).reshape(len(x), -1)
    pool3 = jnp.tanh(nn.Dense(32)(x))
    return {'pool3': pool3, 'logits': nn.Dense(1008)(pool3)}


def test_inception_path_with_a_stand_in_network(workdir, tmp_path, monkeypatch):
  module = StandInInception()
  variables = module.init(jax.random.key(3), jnp.zeros((1, 299, 299, 3)))
  loads = []

  def fake_load(path=None, *, download=True):
    loads.append(path)
    return module, variables

  monkeypatch.setattr(evaluator.inception, 'load_fid_inception', fake_load)
  monkeypatch.setattr(
    evaluator.inception,
    'weights_identity',
    lambda path=None: {
      'inception_weights_sha256': 'stand-in',
      'inception_weights_official': False,
    },
  )
  config = rundir.load_config(workdir)
  real = loader.load_data(config, workdir)[:250]
  fake = untrained_samples(config, 120)
  eval_dir = str(tmp_path)  # Own cache: the real data here is a subset.
  kwargs = dict(real_images=real, inception_weights='stand_in.pth')
  metrics, details = evaluator.compute_metrics(
    eval_dir, config, fake, ['inception'], **kwargs
  )
  details = details['inception']
  assert loads == ['stand_in.pth']
  assert set(metrics) == {'fid', 'kid', 'kid_std', 'is', 'is_std'}
  assert metrics['fid'] > 0 and np.isfinite(metrics['kid'])
  assert 1.0 <= metrics['is'] <= 1008 and metrics['is_std'] >= 0
  assert details['cached'] is False
  assert 'stand_in.pth pool3' in details['fingerprint']
  assert 'n=250' in details['fingerprint']
  cache = os.path.join(eval_dir, 'eval', 'inception_real.npz')
  mtime = os.stat(cache).st_mtime_ns
  with np.load(cache) as data:
    assert data['kid_features'].shape == (250, 32)

  again, details = evaluator.compute_metrics(
    eval_dir, config, fake, ['inception'], **kwargs
  )
  assert details['inception']['cached'] is True and os.stat(cache).st_mtime_ns == mtime
  assert again == metrics
  real_again, _ = evaluator.compute_metrics(
    eval_dir, config, real[:120], ['inception'], **kwargs
  )
  assert real_again['fid'] * 5 < metrics['fid']
  assert real_again['kid'] < metrics['kid']


def test_missing_inception_weights_say_where_to_put_them(workdir, tmp_path):
  config = rundir.load_config(workdir)
  images = np.zeros((10, 16, 16, 1), np.uint8)
  missing = str(tmp_path / 'pt_inception.pth')
  with pytest.raises(FileNotFoundError, match='FID Inception weights not found'):
    evaluator.compute_metrics(
      str(tmp_path),
      config,
      images,
      ['inception'],
      real_images=images,
      inception_weights=missing,
    )


def test_command_line(workdir, first_report):
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'dcgan_jax.evaluate',
      f'--workdir={workdir}',
      f'--num_samples={NUM_SAMPLES}',  # --metrics=auto: all that can run.
    ],
    cwd=REPO,
    env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'step {NUM_STEPS}, {NUM_SAMPLES} samples' in result.stdout
  assert 'classifier_fd' in result.stdout
  fd = first_report['metrics']['classifier_fd']
  assert f'{fd:.4g}' in result.stdout
  assert 'not run: inception: FID Inception weights not found' in result.stdout
  for metric in ('classifier', 'memorization', 'checkerboard'):  # Estimated peaks.
    assert f'memory: {metric} about ' in result.stdout
  with open(os.path.join(workdir, 'eval', f'report_step_{NUM_STEPS}.json')) as f:
    report = json.load(f)
  assert 'memorization_pixels_share_below_train_p01' in report['metrics']
  assert 'memorization_dfeatures_median_ratio' in report['metrics']
  for name in ('class_coverage', 'memorization_neighbours_pixels'):
    assert os.path.exists(report['figures'][name]), name
    assert report['figures'][name] in result.stdout


def test_memorization_of_a_generator_that_copies_training_images(workdir):
  """Samples that are training images are flagged; real held-out-like
  samples (other training images, not copies) are not."""
  config = rundir.load_config(workdir)
  state = rundir.restore_latest(workdir, config)
  real = loader.load_data(config, workdir)
  order = np.random.default_rng(0).permutation(len(real))
  copies = real[order[:200]]
  metrics, details = evaluator.memorization_metrics(
    str(workdir), config, state, copies, real
  )
  assert metrics['memorization_pixels_exact_copies'] == 200
  assert metrics['memorization_dfeatures_share_below_train_p01'] > 0.9
  assert details['pixels']['memorisation_suspected']
  half = len(real) // 2
  metrics, details = evaluator.memorization_metrics(
    str(workdir), config, state, real[order[:half]][:300], real[order[half:]]
  )
  assert metrics['memorization_pixels_exact_copies'] == 0
  assert metrics['memorization_pixels_share_below_train_p01'] < 0.05
  assert 0.8 < metrics['memorization_pixels_median_ratio'] < 1.25
  for name, path in details['figures'].items():
    with Image.open(path) as image:
      assert image.width > 100, name


def test_classifier_is_retrained_when_its_fingerprint_changes(workdir, tmp_path):
  config = rundir.load_config(workdir)
  real = loader.load_data(config, workdir)
  few = label_classifier.ClassifierTraining(steps=3)
  first = evaluator.load_or_train_classifier(str(tmp_path), config, real, few)
  again = evaluator.load_or_train_classifier(str(tmp_path), config, real, few)
  assert (first.cached, again.cached) == (False, True)
  assert jax.tree.all(
    jax.tree.map(np.array_equal, jax.device_get(first.params), again.params)
  )
  other = label_classifier.ClassifierTraining(steps=4)
  changed = evaluator.load_or_train_classifier(str(tmp_path), config, real, other)
  assert changed.cached is False and 'steps=4' in changed.fingerprint
  with open(tmp_path / evaluator.CLASSIFIER_DIR / 'classifier.json') as f:
    assert json.load(f)['fingerprint'] == changed.fingerprint


def test_several_z_seeds_report_mean_and_spread(workdir, first_report):
  report = evaluator.evaluate(
    workdir, num_samples=NUM_SAMPLES, metrics=['classifier'], seeds=[0, 1, 2]
  )
  fds = report['spread']['classifier_fd']['values']
  assert fds[0] == first_report['metrics']['classifier_fd']  # Seed 0 again.
  assert len(set(fds)) == 3
  assert report['metrics']['classifier_fd'] == pytest.approx(np.mean(fds))
  assert report['spread']['classifier_fd']['std'] == pytest.approx(np.std(fds, ddof=1))
  assert len(report['metrics']['class_fractions']) == 10
  assert 'class_fractions' not in report['spread']
  assert report['seeds'] == [0, 1, 2]
  assert 'mean (std) over them' in evaluator.summary(report)


def test_class_coverage_figure(workdir, first_report):
  path = first_report['figures']['class_coverage']
  assert path == os.path.join(workdir, 'eval', f'class_coverage_step_{NUM_STEPS}.png')
  with Image.open(path) as image:
    assert image.width > 400 and image.height > 200
    pixels = np.asarray(image.convert('RGB'))
  bars = (pixels == (60, 110, 200)).all(-1) | (pixels == (200, 40, 40)).all(-1)
  assert bars.any(axis=0).sum() >= 10 * 30  # Ten bars, each ~36 px wide.


def test_missing_inception_weights_fail_before_sampling(workdir, tmp_path, monkeypatch):
  def no_sampling(*args, **kwargs):
    raise AssertionError('sampled before checking the weights')

  monkeypatch.setattr(evaluator.generate, 'images', no_sampling)
  with pytest.raises(FileNotFoundError, match='FID Inception weights not found'):
    evaluator.evaluate(
      workdir,
      num_samples=NUM_SAMPLES,
      metrics=['classifier', 'inception'],
      inception_weights=str(tmp_path / 'missing.pth'),
    )


def test_periodic_evaluation_of_a_seed_ensemble(data_dir, tmp_path_factory):
  """eval_every_steps during training, for two GANs in one program; then the
  command-line tool on the ensemble workdir: per-GAN reports plus mean/spread."""
  config = tiny_config(data_dir)
  config.num_train_steps = 30
  config.checkpoint_every_steps = 30
  config.sample_every_steps = 30
  config.num_seeds = 2
  config.eval_every_steps = 20
  config.eval_num_samples = 100
  workdir = str(tmp_path_factory.mktemp('ensemble'))
  train.train_and_evaluate(config, workdir)
  for seed in (0, 1):
    eval_dir = os.path.join(workdir, f'seed_{seed}', 'eval')
    names = os.listdir(eval_dir)
    assert {'report_step_20.json', 'report_step_30.json'} <= set(names), names
    assert any(name.startswith('events.out.tfevents') for name in names)
    with open(os.path.join(eval_dir, 'report_step_30.json')) as f:
      assert json.load(f)['num_samples'] == 100
  # One classifier, shared by the GANs, trained once.
  assert os.path.exists(
    os.path.join(workdir, evaluator.CLASSIFIER_DIR, 'params.msgpack')
  )
  assert not os.path.exists(os.path.join(workdir, 'seed_0', evaluator.CLASSIFIER_DIR))

  report = evaluator.evaluate(workdir, num_samples=100, metrics=['classifier'])
  members = []
  for path in report['member_reports']:
    with open(path) as f:
      members.append(json.load(f))
  fds = [m['metrics']['classifier_fd'] for m in members]
  assert report['training_seeds'] == [0, 1]
  assert report['spread']['classifier_fd']['values'] == fds
  assert report['metrics']['classifier_fd'] == pytest.approx(np.mean(fds))
  assert fds[0] != fds[1]
  assert os.path.exists(os.path.join(workdir, 'eval', 'report_step_30.json'))


def test_evaluation_config_that_cannot_run_stops_before_training(data_dir, tmp_path):
  config = tiny_config(data_dir)
  config.eval_every_steps = 10
  config.eval_metrics = 'classifier,inception'
  config.inception_weights = str(tmp_path / 'missing.pth')
  with pytest.raises(errors.ConfigError, match='eval_every_steps=10.*FID Inception'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')
  config.eval_metrics = 'classifier,fid'
  with pytest.raises(errors.ConfigError, match='eval_metrics must be'):
    config_checks.validate_config(config, 1)


# ----------------------------------------------------------------------------
# Bounded memory: streamed training images, estimates checked first.


def test_memorization_streams_d_features_a_chunk_at_a_time(workdir, monkeypatch):
  """D's features of the training images are made chunk_rows at a time, and
  the metrics do not depend on the chunk size."""
  config = rundir.load_config(workdir)
  state = rundir.restore_latest(workdir, config)
  real = loader.load_data(config, workdir)
  samples = real[np.random.default_rng(1).permutation(len(real))[:150]]
  calls = []
  features_fn = evaluator.d_features.features_fn

  def recording(*args, **kwargs):
    fn = features_fn(*args, **kwargs)
    return lambda images: calls.append(len(images)) or fn(images)

  monkeypatch.setattr(evaluator.d_features, 'features_fn', recording)
  chunked, details = evaluator.memorization_metrics(
    workdir, config, state, samples, real, chunk_rows=256
  )
  # The samples; then the training images: the train pairs (1,000) and
  # chunks of 256, never all of them at once.
  assert calls[0] == len(samples) and max(calls) < len(real)
  assert calls.count(256) >= len(real) // 256 and sum(calls) >= len(real)
  assert details['num_train'] == len(real)
  whole, _ = evaluator.memorization_metrics(
    workdir, config, state, samples, real, chunk_rows=len(real)
  )
  assert chunked == whole
  assert chunked['memorization_pixels_exact_copies'] == len(samples)


def test_a_metric_that_does_not_fit_is_a_one_line_error(workdir, monkeypatch, caplog):
  config = rundir.load_config(workdir)
  state = rundir.restore_latest(workdir, config)
  real = loader.load_data(config, workdir)
  samples = untrained_samples(config, 50)
  for metric in ('classifier', 'inception'):
    with pytest.raises(memory.MemoryLimitError) as error:
      evaluator.compute_metrics(
        workdir, config, samples, [metric], real_images=real, memory_limit=1 << 20
      )
    message = str(error.value)
    assert message.startswith(f"metric '{metric}' needs about ") and '\n' not in message
    assert '0.00 GB is available (memory_limit)' in message
    assert '--num_samples' in message
  with pytest.raises(memory.MemoryLimitError, match="metric 'memorization'"):
    evaluator.memorization_metrics(
      workdir, config, state, samples, real, memory_limit=1 << 20
    )
  # Too little memory for the largest chunk: a smaller one that fits.
  small = evaluator.memorization_estimate(config, 50, len(real), 512).bytes
  caplog.clear()  # Only this call's lines.
  with caplog.at_level(logging.INFO, logger=memory.logger.name):
    evaluator.memorization_metrics(
      workdir, config, state, samples, real, memory_limit=small
    )
  logged = [r.getMessage() for r in caplog.records]
  logged = [line for line in logged if line.startswith('Memory:')]
  assert len(logged) == 1, logged  # One line per metric.
  assert logged[0].startswith("Memory: metric 'memorization' needs about ")
  assert 'streamed 512 at a time' in logged[0]
  # The command says it in one line, naming the metric and what to change.
  monkeypatch.setattr(
    evaluator.memory, 'available_bytes', lambda: (1 << 20, 'MemAvailable')
  )
  with pytest.raises(SystemExit) as exit_info:
    evaluate.main(
      [f'--workdir={workdir}', '--num_samples=10', '--metrics=memorization']
    )
  message = str(exit_info.value.code)
  assert message.startswith("Error: metric 'memorization' needs about ")
  assert '(MemAvailable)' in message and '\n' not in message


def test_memory_estimates_do_not_grow_with_the_training_set(workdir):
  config = rundir.load_config(workdir)
  shape = (16, 16, 1)
  for n in (10_000, 10_000_000):
    assert evaluator.memorization_estimate(config, 2000, n).bytes == (
      evaluator.memorization_estimate(config, 2000, 5000).bytes
    )
    assert evaluator.classifier_estimate(2000, shape, 10, n).bytes == (
      evaluator.classifier_estimate(2000, shape, 10, 5000).bytes
    )
    assert evaluator.inception_estimate(2000, shape, n).bytes == (
      evaluator.inception_estimate(2000, shape, 5000).bytes
    )
  more = evaluator.memorization_estimate(config, 2000, 10**6, 4096).bytes
  assert evaluator.memorization_estimate(config, 2000, 10**6, 256).bytes < more
  available, source = memory.available_bytes()
  assert available > 0 and source


# ----------------------------------------------------------------------------
# A gs:// workdir (the test Cloud Storage server).


def test_caches_reports_and_figures_in_a_gs_workdir(workdir, gcs_bucket, monkeypatch):
  """Every file the evaluator writes goes to the bucket and is read back
  from there (caches reused, not recomputed); nothing lands in a local
  'gs:' directory."""
  config = rundir.load_config(workdir)
  state = rundir.restore_latest(workdir, config)
  real = loader.load_data(config, workdir)
  samples = untrained_samples(config, 60)
  url = f'{gcs_bucket}/evaluator-{uuid.uuid4().hex[:8]}'
  few = label_classifier.ClassifierTraining(steps=3)
  kwargs = dict(real_images=real, classifier_training=few)
  first, details = evaluator.compute_metrics(
    url, config, samples, ['classifier'], **kwargs
  )
  cache = files.join(url, evaluator.CLASSIFIER_DIR)
  assert files.listdir(cache) == ['classifier.json', 'params.msgpack', 'real_stats.npz']
  assert (
    files.read_json(files.join(cache, 'classifier.json'))['fingerprint']
    == (details['classifier']['fingerprint'])
  )
  again, details = evaluator.compute_metrics(
    url, config, samples, ['classifier'], **kwargs
  )
  assert details['classifier']['cached'] is True and again == first

  module = StandInInception()
  variables = module.init(jax.random.key(3), jnp.zeros((1, 299, 299, 3)))
  monkeypatch.setattr(
    evaluator.inception, 'load_fid_inception', lambda *a, **k: (module, variables)
  )
  monkeypatch.setattr(
    evaluator.inception,
    'weights_identity',
    lambda path=None: {
      'inception_weights_sha256': 'stand-in',
      'inception_weights_official': False,
    },
  )
  kwargs = dict(real_images=real[:150], inception_weights='gs://weights/stand_in.pth')
  fid, details = evaluator.compute_metrics(
    url, config, samples, ['inception'], **kwargs
  )
  assert {'inception_real.npz', 'inception_real.npz.stats.npz'} <= set(
    files.listdir(files.join(url, 'eval'))
  )
  again, details = evaluator.compute_metrics(
    url, config, samples, ['inception'], **kwargs
  )
  assert details['inception']['cached'] is True and again == fid
  assert 'stand_in.pth pool3' in details['inception']['fingerprint']

  values, details = evaluator.memorization_metrics(url, config, state, samples, real)
  for path in details['figures'].values():
    assert path.startswith(url + '/eval/memorization_step_')
    with Image.open(io.BytesIO(files.read_bytes(path))) as image:
      assert image.width > 100

  report = {'step': 7, 'metrics': {**first, **values}, 'spread': {}}
  path = evaluator.write_report(url, report)
  assert path == f'{url}/eval/report_step_7.json'
  assert files.read_json(path) == json.loads(json.dumps(report))
  assert any(n.startswith('events.out.tfevents') for n in files.listdir(f'{url}/eval'))
  assert not any(os.path.exists(os.path.join(d, 'gs:')) for d in (REPO, os.getcwd()))
