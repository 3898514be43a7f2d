"""LSUN bedrooms at 64x64 with the paper's settings (its section 4.1).

  python launch.py --config=configs/lsun_bedroom.py --workdir=workdirs/lsun \
      --config.data_dir=~/tensorflow_datasets --config.cache_dir=/local/ssd

About 3 million images: decoded once into a memory-mapped cache (about
37 GB at 64x64x3) under cache_dir, which must be a local disk.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'lsun/bedroom'
  config.image_size = 64
  config.num_channels = 3
  config.crop = 'center'
  config.cache = 'disk'
  config.global_batch_size = 128
  config.num_train_steps = 100_000
  config.checkpoint_every_steps = 5000
  return config
