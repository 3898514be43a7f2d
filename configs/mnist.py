"""MNIST (TFDS 'mnist', 60,000 training digits) at 32x32 grayscale.

  python launch.py --config=configs/mnist.py --workdir=workdirs/mnist

TFDS downloads MNIST on first use; offline, prepare it elsewhere with
`tfds build mnist --data_dir=DIR` and add `--config.data_dir=DIR`.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'mnist'
  config.image_size = 32
  config.num_channels = 1
  config.model.g_width = 512
  config.model.d_width = 128
  config.model.kernel_size = 4
  config.global_batch_size = 128
  config.num_train_steps = 10_000
  return config
