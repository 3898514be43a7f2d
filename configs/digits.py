"""The embedded default: scikit-learn's 1,797 digits at 32x32, trains on a CPU.

  python launch.py --config=configs/digits.py --workdir=workdirs/digits

The 8x8 digits ship with scikit-learn, so this runs offline. A 32x32 DCGAN
(three fractionally-strided layers) narrow enough to learn recognisable
digits in a few minutes on two CPU cores.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'digits'
  config.image_size = 32
  config.num_channels = 1
  config.model.g_width = 128
  config.model.d_width = 32
  config.model.kernel_size = 4
  config.global_batch_size = 64
  config.num_train_steps = 2000
  config.log_every_steps = 100
  config.sample_every_steps = 250
  config.checkpoint_every_steps = 500
  return config
