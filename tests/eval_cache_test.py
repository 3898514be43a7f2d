"""The evaluation caches are keyed by the images' content and the weights' hash."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dcgan_jax.evaluation import evaluator, inception, label_classifier


class StandInInception(nn.Module):
  """Same outputs as FIDInceptionV3 ({'pool3', 'logits'}), a tiny network."""

  @nn.compact
  def __call__(self, x):
    x = nn.avg_pool(x, (23, 23), strides=(23, 23)).reshape(len(x), -1)
    pool3 = jnp.tanh(nn.Dense(16)(x))
    return {'pool3': pool3, 'logits': nn.Dense(1008)(pool3)}


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
  """A weights file (any bytes: the network is a stand-in) and the loader."""
  module = StandInInception()
  variables = module.init(jax.random.key(0), jnp.zeros((1, 299, 299, 3)))
  monkeypatch.setattr(
    inception, 'load_fid_inception', lambda *a, **k: (module, variables)
  )
  weights = tmp_path / 'weights.pth'
  weights.write_bytes(b'stand-in weights')
  return str(weights)


def _config():
  config = ml_collections.ConfigDict()
  config.dataset = 'folder:/somewhere'
  config.split = 'train'
  return config


def _run(workdir, real, weights):
  fake = np.random.default_rng(1).integers(0, 256, (12, 8, 8, 1), np.uint8)
  return evaluator.inception_metrics(
    str(workdir), _config(), fake, real, weights=weights, batch_size=8
  )


def test_one_changed_pixel_invalidates_the_inception_cache(tmp_path, stand_in):
  real = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 1), np.uint8)
  first, details = _run(tmp_path, real, stand_in)
  assert details['cached'] is False
  again, details = _run(tmp_path, real.copy(), stand_in)  # Same content.
  assert details['cached'] is True and again == first
  edited = real.copy()
  edited[7, 3, 4, 0] ^= 1  # Same count, same name: one pixel differs.
  changed, details = _run(tmp_path, edited, stand_in)
  assert details['cached'] is False and changed['fid'] != first['fid']
  _, details = _run(tmp_path, edited, stand_in)
  assert details['cached'] is True


def test_inception_cache_is_keyed_by_the_weights_hash(tmp_path, stand_in):
  real = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 1), np.uint8)
  _, details = _run(tmp_path, real, stand_in)
  sha = details['inception_weights_sha256']
  assert details['inception_weights_official'] is False
  assert sha in details['fingerprint']
  with open(stand_in, 'ab') as f:  # Same name, other content.
    f.write(b'!')
  os.utime(stand_in, ns=(0, 0))  # A new mtime: hashed again.
  _, details = _run(tmp_path, real, stand_in)
  assert details['cached'] is False and details['inception_weights_sha256'] != sha


def test_only_process_zero_writes_the_caches(tmp_path, stand_in, monkeypatch):
  real = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 1), np.uint8)
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  _, details = _run(tmp_path, real, stand_in)
  assert details['cached'] is False
  assert not (tmp_path / 'eval').exists()
  monkeypatch.setattr(jax, 'process_index', lambda: 0)
  _run(tmp_path, real, stand_in)
  assert sorted(os.listdir(tmp_path / 'eval')) == [
    'inception_real.npz',
    'inception_real.npz.stats.npz',
  ]


def test_one_changed_pixel_invalidates_the_classifier_cache(tmp_path, monkeypatch):
  """The classifier's cache (and so its real-image statistics) too."""
  trained = []

  def fake_train(images, labels, num_classes, training):
    trained.append(images.copy())
    module = label_classifier.FeatureClassifier(num_classes)
    x0 = jnp.zeros((1, *images.shape[1:]), jnp.float32)
    params = module.init(jax.random.key(training.seed), x0)['params']
    return module, params, 0.5

  monkeypatch.setattr(label_classifier, 'train_classifier', fake_train)
  real = np.random.default_rng(0).integers(0, 256, (20, 16, 16, 1), np.uint8)
  labels = (np.arange(20) % 10, 10)

  def load(images):
    return evaluator.load_or_train_classifier(
      str(tmp_path), _config(), images, labels=labels
    )

  assert load(real).cached is False
  assert load(real.copy()).cached is True and len(trained) == 1
  edited = real.copy()
  edited[0, 0, 0, 0] ^= 1
  assert load(edited).cached is False and len(trained) == 2
  assert load(edited).cached is True
