"""CelebA faces at 64x64 with the paper's settings.

  python launch.py --config=configs/celeba.py --workdir=workdirs/celeba \
      --config.data_dir=~/tensorflow_datasets

The paper's 64x64 model (G from 4x4x1024, halving the channels at each of
four fractionally-strided 5x5 layers; D mirrored), Adam(2e-4, b1=0.5),
batch 128, z ~ U[-1, 1]^100, the usual centred 108x108 face crop.
TFDS 'celeb_a' downloads from Google Drive, which often refuses for quota;
the error message says how to place the files by hand. The decoded 64x64
images (about 2.4 GB) are cached on disk under WORKDIR/data_cache.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'celeb_a'
  config.image_size = 64
  config.num_channels = 3
  config.crop = 'celeba'
  config.cache = 'disk'
  config.global_batch_size = 128
  config.num_train_steps = 50_000
  return config
