"""Your own images: every PNG/JPEG/BMP/GIF under a folder, at 32x32 RGB.

  python launch.py --config=configs/folder.py --workdir=workdirs/folder \
      --config.dataset=folder:/path/to/images

Images are found recursively, centre-cropped and resized; grayscale ones are
repeated to RGB (or add --config.num_channels=1). The model is small enough
to learn e.g. a folder of MNIST-like digits in minutes on a CPU. For 64x64
faces (anime faces, as in the PyTorch DCGAN tutorial) on an accelerator, add
  --config.image_size=64 --config.model.g_width=512 --config.model.d_width=64 \
  --config.global_batch_size=128 --config.num_train_steps=20000
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'folder:'  # Set --config.dataset=folder:/path/to/images.
  config.image_size = 32
  config.num_channels = 3
  config.model.g_width = 256
  config.model.d_width = 64
  config.model.kernel_size = 4
  config.global_batch_size = 64
  config.num_train_steps = 3000
  config.log_every_steps = 100
  config.sample_every_steps = 250
  config.checkpoint_every_steps = 500
  return config
