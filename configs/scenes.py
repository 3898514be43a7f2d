"""Synthetic rooms with windows at 32x32 RGB: the data of `visualize forget`.

  python launch.py --config=configs/scenes.py --workdir=workdirs/scenes

The 10,000 scenes (dcgan_jax/data/scenes.py) are drawn offline, once, as
the local TFDS data set `synthetic_scenes`. Every window's box is known and
a colour detector finds windows in generated images, so the paper's
section 6.3.1 (making G forget to draw windows) runs without boxing them by
hand. A model narrow enough to draw recognisable windows in minutes on a
CPU.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'scenes'
  config.image_size = 32
  config.num_channels = 3
  config.model.g_width = 128
  config.model.d_width = 32
  config.model.kernel_size = 4
  config.global_batch_size = 64
  config.num_train_steps = 3000
  config.log_every_steps = 100
  config.sample_every_steps = 500
  config.checkpoint_every_steps = 1000
  return config
