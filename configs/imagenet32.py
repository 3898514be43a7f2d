"""ImageNet at 32x32 (TFDS 'imagenet_resized/32x32', 1,281,167 images), the
paper's architecture: D for the CIFAR-10 representation probe.

  python launch.py --config=configs/imagenet32.py --workdir=workdirs/imagenet32 \
      --config.data_dir=~/tensorflow_datasets --config.cache_dir=/local/ssd
  python -m dcgan_jax.linear_probe --workdir=workdirs/imagenet32 --probe=cifar10 \
      --data_dir=~/tensorflow_datasets

The paper (Radford et al. 2015, section 5.1.1) trains DCGAN on ImageNet-1k
and reaches 82.8% on CIFAR-10 with an L2-SVM on D's features (all 50,000
training labels). Here G goes 4x4x1024 -> 8x8x512 -> 16x16x256 -> 32x32x3
with 5x5 kernels, and D mirrors it (256 -> 512 -> 1024 channels), so the
probe's features number 16 * (256 + 512 + 1024) = 28,672, the paper's count.
imagenet_resized needs ImageNet's manual download (see the TFDS catalogue);
its preprocessed images (about 3.9 GB at 32x32x3) are cached once on a local
disk (cache_dir). The probe holds 60,000 x 28,672 features and fits
LinearSVC on 45,000-50,000 of them: expect to need about 40 GB of memory.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'imagenet_resized/32x32'
  config.image_size = 32
  config.num_channels = 3
  config.model.g_width = 1024
  config.model.d_width = 256
  config.model.kernel_size = 5
  config.global_batch_size = 128
  config.num_train_steps = 100_000
  config.cache = 'disk'
  config.checkpoint_every_steps = 5000
  return config
