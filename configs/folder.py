"""Any directory of images (e.g. anime faces) at 64x64 RGB.

  python launch.py --config=configs/folder.py --workdir=workdirs/faces \
      --config.dataset=folder:/path/to/images

Every PNG/JPEG/BMP/GIF under the folder (recursively) is centre-cropped and
resized. The model is the PyTorch DCGAN tutorial's size (G from 4x4x512,
D from 64 channels, 4x4 kernels). For small grayscale images such as 28x28
digits, add `--config.image_size=32 --config.num_channels=1`.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'folder:'  # Set --config.dataset=folder:/path/to/images.
  config.image_size = 64
  config.num_channels = 3
  config.model.g_width = 512
  config.model.d_width = 64
  config.model.kernel_size = 4
  config.global_batch_size = 128
  config.num_train_steps = 20_000
  return config
