"""A tiny digits GAN (16x16, narrow models, a few dozen steps) for tool tests.

conftest.py trains `tiny_config` once per test session; the export,
visualisation and evaluation tests each work on their own copy of that run
(the `tiny_digits_workdir` fixture).
"""

from configs import digits as digits_config

NUM_STEPS = 40
SAMPLE_EVERY_STEPS = 20  # Sample grids at steps 0, 20 and 40.


def tiny_config(data_dir: str):
  config = digits_config.get_config()
  config.data_dir = data_dir
  config.image_size = 16
  config.model.g_width = 32
  config.model.d_width = 8
  config.global_batch_size = 16
  config.num_train_steps = NUM_STEPS
  config.log_every_steps = 20
  config.sample_every_steps = SAMPLE_EVERY_STEPS
  config.checkpoint_every_steps = NUM_STEPS
  config.num_sample_images = 4
  return config
