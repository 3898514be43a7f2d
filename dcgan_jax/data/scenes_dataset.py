"""The synthetic scenes (scenes.py) as a local TFDS data set.

Importing this module registers the builder `synthetic_scenes`, so
`tfds.builder('synthetic_scenes', data_dir=...)` prepares it offline: every
scene is drawn from its index and the data set's seed. Besides the image,
each example holds its windows' boxes (`objects/bbox`, TFDS's normalised
ymin, xmin, ymax, xmax), for tools that want them without `scenes.render`.
"""

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from dcgan_jax.data import scenes

TFDS_NAME = 'synthetic_scenes'


class SyntheticScenes(tfds.core.GeneratorBasedBuilder):
  """Rooms with one or two windows of a colour nothing else in them has."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
    '1.0.0': 'Initial release.',
    '1.1.0': 'PNGs encoded by Pillow (prepared without TensorFlow); same pixels.',
  }

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=(
        f'{scenes.NUM_EXAMPLES:,} synthetic {scenes.SIZE}x{scenes.SIZE} rooms '
        '(wall, floor, furniture) with one or two blue windows at known boxes '
        f'(dcgan_jax/data/scenes.py, seed {scenes.SEED}).'
      ),
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(
            shape=(scenes.SIZE, scenes.SIZE, 3), dtype=np.uint8
          ),
          'objects': tfds.features.Sequence({'bbox': tfds.features.BBoxFeature()}),
        }
      ),
      # Keep the scenes' order (index i is scenes.render(i)).
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download.
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    for i in range(scenes.NUM_EXAMPLES):
      image, boxes = scenes.render(i)
      bbox = (boxes / scenes.SIZE).astype(np.float32)
      # A Pillow image: TFDS encodes it without TensorFlow.
      yield i, {'image': Image.fromarray(image), 'objects': {'bbox': bbox}}
