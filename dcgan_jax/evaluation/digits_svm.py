"""Do generated digits look like digits? An SVM fit on real ones decides.

An SVM is fit on real handwritten digits (scikit-learn's 8x8 digits, or the
MNIST files) and reads generated samples at 8x8. A generator that learned
the data gives samples it recognises with confidence, spread over all ten
classes; an untrained or collapsed one does not.

`python -m dcgan_jax.digits_classifier` runs it on saved samples.
"""

from __future__ import annotations

import dataclasses
import gzip
import os

import numpy as np
from PIL import Image
from sklearn import calibration, datasets, svm

from dcgan_jax.util import progress

# The MNIST test set's IDX files: $DCGAN_MNIST_DIR, or ../shared/data/mnist
# beside this checkout.
MNIST_DIR = os.environ.get(
  'DCGAN_MNIST_DIR',
  os.path.normpath(
    os.path.join(os.path.dirname(__file__), *[os.pardir] * 3, 'shared', 'data', 'mnist')
  ),
)


@dataclasses.dataclass(frozen=True)
class Recognition:
  class_fractions: np.ndarray  # [10], fraction of samples given each class
  mean_confidence: float  # mean of the top-class probability

  def passes(self, *, max_fraction: float = 0.25, min_confidence: float = 0.8):
    """All ten classes seen, none above max_fraction, confident on average."""
    return (
      bool(np.all(self.class_fractions > 0))
      and float(self.class_fractions.max()) <= max_fraction
      and self.mean_confidence >= min_confidence
    )

  def __str__(self):
    fractions = ' '.join(f'{d}:{f:.3f}' for d, f in enumerate(self.class_fractions))
    return f'classes {fractions}; mean confidence {self.mean_confidence:.3f}'


def to_features(images: np.ndarray) -> np.ndarray:
  """uint8 [N, H, W, C] -> float [N, 64] in [0, 1]: gray, area-resized to 8x8."""
  images = np.asarray(images)
  if images.ndim == 4:
    images = images.mean(axis=-1)
  small = [
    np.asarray(
      Image.fromarray(im.astype(np.float32), mode='F').resize((8, 8), Image.BOX)
    )
    for im in progress.track(images, 'Resizing images to 8x8')
  ]
  return np.stack(small).reshape(len(images), 64) / 255.0


def read_mnist(mnist_dir: str = MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
  """The MNIST IDX files in `mnist_dir`: uint8 [N, 28, 28], labels [N]."""
  if not os.path.exists(os.path.join(mnist_dir, 't10k-images-idx3-ubyte.gz')):
    raise FileNotFoundError(
      f'MNIST test set not found in {os.path.abspath(mnist_dir)}: put '
      't10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz there or set '
      '$DCGAN_MNIST_DIR (or --mnist_dir).'
    )
  with gzip.open(os.path.join(mnist_dir, 't10k-images-idx3-ubyte.gz')) as f:
    images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
  with gzip.open(os.path.join(mnist_dir, 't10k-labels-idx1-ubyte.gz')) as f:
    labels = np.frombuffer(f.read(), np.uint8, offset=8)
  return images, labels


def fit_classifier(reference: str = 'digits', mnist_dir: str = MNIST_DIR):
  """An SVM with calibrated probabilities, fit on real digits at 8x8."""
  if reference == 'digits':
    digits = datasets.load_digits()
    features, labels = digits.data / 16.0, digits.target
  elif reference == 'mnist':
    images, labels = read_mnist(mnist_dir)
    features = to_features(images)
  else:
    raise ValueError(f"reference must be 'digits' or 'mnist', got {reference!r}.")
  classifier = calibration.CalibratedClassifierCV(svm.SVC(), ensemble=False)
  with progress.timed(f'Fitting the SVM on {len(labels)} {reference} images'):
    return classifier.fit(features, labels)


def recognise(images: np.ndarray, classifier) -> Recognition:
  features = to_features(images)
  with progress.timed(f'SVM predictions for {len(images)} images'):
    probs = classifier.predict_proba(features)
  counts = np.bincount(probs.argmax(axis=1), minlength=10)
  return Recognition(counts / len(images), float(probs.max(axis=1).mean()))
