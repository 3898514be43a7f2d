"""The evaluation classifier: a small CNN fit on a data set's real images and
labels, whose predictions and penultimate features score samples
(`evaluator`'s 'classifier' metrics: classifier FD, class coverage)."""

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dcgan_jax.data import input_pipeline
from dcgan_jax.evaluation import batching, gan_metrics
from dcgan_jax.util import progress

_CLASSIFIER_VERSION = 'cnn-v1'  # Bump when the architecture or training changes.


class FeatureClassifier(nn.Module):
  """Conv-conv-conv-dense CNN: returns (logits, 128-d penultimate features).

  Inputs larger than 32x32 are average-pooled down to at most 32x32 first,
  so training cost does not grow with the image size.
  """

  num_classes: int
  feature_dim: int = 128

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    while x.shape[1] > 32 and x.shape[1] % 2 == 0:
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(nn.Conv(32, (3, 3))(x))
    x = nn.relu(nn.Conv(64, (3, 3), strides=(2, 2))(x))
    x = nn.relu(nn.Conv(64, (3, 3), strides=(2, 2))(x))
    features = nn.relu(nn.Dense(self.feature_dim)(x.reshape(len(x), -1)))
    return nn.Dense(self.num_classes)(features), features


@dataclasses.dataclass(frozen=True)
class Classifier:
  module: FeatureClassifier
  params: Any
  fingerprint: str
  test_accuracy: float
  cached: bool  # Read from the cache rather than trained by this call.


@dataclasses.dataclass(frozen=True)
class ClassifierTraining:
  """How the classifier is fit (part of its fingerprint)."""

  steps: int = 1000
  batch_size: int = 64
  learning_rate: float = 1e-3
  test_fraction: float = 0.15
  seed: int = 0

  def describe(self) -> str:
    return (
      f'{_CLASSIFIER_VERSION} steps={self.steps} batch={self.batch_size} '
      f'lr={self.learning_rate} test={self.test_fraction} seed={self.seed}'
    )


def split_train_test(
  num: int, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """(train, test) indices: a fixed permutation of range(num) from `seed`."""
  order = np.random.default_rng(seed).permutation(num)
  num_test = max(1, int(round(num * test_fraction)))
  return np.sort(order[num_test:]), np.sort(order[:num_test])


def train_classifier(
  images: np.ndarray,
  labels: np.ndarray,
  num_classes: int,
  training: ClassifierTraining = ClassifierTraining(),
) -> tuple[FeatureClassifier, Any, float]:
  """(module, params, held-out accuracy): Adam with cosine decay, fit on all
  but `test_fraction` of the images; deterministic given `training.seed`."""
  train_idx, test_idx = split_train_test(
    len(images), training.test_fraction, training.seed
  )
  module = FeatureClassifier(num_classes)
  init_key, _ = jax.random.split(jax.random.key(training.seed))
  x0 = jnp.zeros((1, *images.shape[1:]), jnp.float32)
  params = module.init(init_key, x0)['params']
  tx = optax.adam(optax.cosine_decay_schedule(training.learning_rate, training.steps))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(params):
      logits, _ = module.apply({'params': params}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  rng = np.random.default_rng(training.seed)
  order = np.empty(0, np.int64)
  count = progress.Progress(
    'Training the evaluation classifier', training.steps, unit='steps'
  )
  for i in range(training.steps):
    if len(order) < training.batch_size:
      order = np.concatenate([order, rng.permutation(train_idx)])
    batch, order = order[: training.batch_size], order[training.batch_size :]
    x = input_pipeline.scale_images(images[np.sort(batch)])
    if i == 0:
      with progress.timed('Compiling the classifier training step'):
        params, opt_state = jax.block_until_ready(
          step(params, opt_state, x, labels[np.sort(batch)])
        )
    else:
      params, opt_state = step(params, opt_state, x, labels[np.sort(batch)])
    count.update()
  count.close()
  correct, start = 0, 0  # Held-out accuracy, batch by batch.
  outputs = _outputs(module, params, images, 256, test_idx, 'Classifier test accuracy')
  for logits, _ in outputs:
    predicted = logits.argmax(axis=1)
    correct += int((predicted == labels[test_idx[start : start + len(logits)]]).sum())
    start += len(logits)
  return module, params, correct / len(test_idx)


def classifier_outputs(
  module: FeatureClassifier, params: Any, images: np.ndarray, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
  """(logits [N, K], features [N, 128]) of uint8 images [N, H, W, C]."""
  return batching.batched_apply(
    functools.partial(_apply_classifier, module),
    params,
    images,
    batch_size,
    what='Classifier outputs of samples',
  )


def feature_stats(
  module: FeatureClassifier, params: Any, images: np.ndarray, batch_size: int = 256
) -> gan_metrics.FeatureStats:
  """Mean and covariance of the features of uint8 images [N, H, W, C] (any
  N, e.g. a memory-mapped training set): one pass, batch by batch."""
  return gan_metrics.streamed_feature_stats(
    features
    for _, features in _outputs(
      module, params, images, batch_size, what='Classifier features of real images'
    )
  )


def _outputs(module, params, images, batch_size, indices=None, what='Classifier pass'):
  return batching.batched_outputs(
    functools.partial(_apply_classifier, module),
    params,
    images,
    batch_size,
    indices,
    what,
  )


@functools.partial(jax.jit, static_argnums=0)
def _apply_classifier(module: FeatureClassifier, params: Any, x: jax.Array):
  return module.apply({'params': params}, x)
