"""scikit-learn's bundled 8x8 digits as a local TFDS data set.

Importing this module registers the builder `sklearn_digits`, so
`tfds.builder('sklearn_digits', data_dir=...)` prepares it without any
download: the 1,797 images ship inside scikit-learn.
"""

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

NAME = 'sklearn_digits'
NUM_EXAMPLES = 1797


def scale_to_uint8(pixels: np.ndarray) -> np.ndarray:
  """Maps scikit-learn's 0..16 grey levels to 0..255 (rounded)."""
  return np.round(np.asarray(pixels, np.float64) * (255.0 / 16.0)).astype(np.uint8)


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
  """The UCI optical-recognition digits test set bundled with scikit-learn."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
    '1.0.0': 'Initial release.',
    '1.1.0': 'PNGs encoded by Pillow (prepared without TensorFlow); same pixels.',
  }

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=(
        "scikit-learn's 1,797 8x8 handwritten digits "
        '(sklearn.datasets.load_digits), grey levels 0..16 scaled to 0..255.'
      ),
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(shape=(8, 8, 1), dtype=np.uint8),
          'label': tfds.features.ClassLabel(num_classes=10),
        }
      ),
      supervised_keys=('image', 'label'),
      homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html',
      # Keep scikit-learn's order instead of TFDS's shuffle by key hash.
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download.
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    from sklearn.datasets import load_digits  # Slow import: only when built.

    digits = load_digits()
    images = scale_to_uint8(digits.images)
    for i, (image, label) in enumerate(zip(images, digits.target, strict=True)):
      # A Pillow image: TFDS encodes it without TensorFlow.
      yield i, {'image': Image.fromarray(image), 'label': int(label)}
