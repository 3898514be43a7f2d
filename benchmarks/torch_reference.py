"""The model of the PyTorch reference DCGAN step, as a dcgan_jax config.

64x64 RGB, 4x4 kernels, G from 512 channels at 4x4 down to 64 (ngf=64), D
from 64 up to 512 (ndf=64), z ~ N(0, 1) of dimension 100, Adam 2e-4 / 0.5,
batch 64. Layer for layer the same multiply-adds as the reference.

  python benchmarks/train_step.py --config=benchmarks/torch_reference.py
  python benchmarks/train_step.py --config=benchmarks/torch_reference.py \
      --config.global_batch_size=128
"""

from configs import default


def get_config():
  config = default.get_config()
  config.image_size = 64
  config.num_channels = 3
  config.model.g_width = 512
  config.model.d_width = 64
  config.model.kernel_size = 4
  config.model.z_dist = 'normal'
  config.global_batch_size = 64
  return config
