"""CIFAR-10 (TFDS 'cifar10', 50,000 training images) at 32x32 RGB.

python launch.py --config=configs/cifar10.py --workdir=workdirs/cifar10
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'cifar10'
  config.image_size = 32
  config.num_channels = 3
  config.model.g_width = 512
  config.model.d_width = 128
  config.model.kernel_size = 4
  config.global_batch_size = 128
  config.num_train_steps = 50_000
  return config
