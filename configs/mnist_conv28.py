"""The 28x28 DCGAN of the MNIST write-ups, with the paper's recipe, on the
real MNIST files.

  python launch.py --config=configs/mnist_conv28.py --workdir=workdirs/mnist_conv28

`model.arch='conv28'`: G treats z as a 1x1 image (a 7x7 valid transposed
convolution to 7x7x256, then 5x5 stride-2 ones to 14x14x128 and 28x28);
D mirrors it and ends in a 7x7 valid convolution. BatchNorm, ReLU / LeakyReLU
0.2, N(0, 0.02) weights, z ~ U[-1, 1], Adam(2e-4, beta1 0.5), batch 128, D
then G: the paper's choices. Offline, on the 10,000 MNIST test digits of
../shared/data/mnist (or $DCGAN_MNIST_DIR).
"""

from configs import mnist_files


def get_config():
  config = mnist_files.get_config()
  config.image_size = 28
  config.model.arch = 'conv28'
  config.global_batch_size = 128
  config.num_train_steps = 4000
  return config
