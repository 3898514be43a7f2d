"""The MLP GAN baseline of the DCGAN write-ups, on the real MNIST files.

  python launch.py --config=configs/mnist_mlp.py --workdir=workdirs/mnist_mlp

`model.arch='mlp'`: G is Dense(128) + ReLU -> Dense(784) + tanh, D is
Dense(128) + ReLU -> Dense(1), without BatchNorm: the fully connected GAN
the write-ups compare DCGAN against. The training recipe is the DCGAN
one (Adam 2e-4, beta1 0.5, batch 128, z ~ U[-1, 1], N(0, 0.02) weights), so
only the architecture differs from configs/mnist_conv28.py. Offline, on the
10,000 MNIST test digits of ../shared/data/mnist (or $DCGAN_MNIST_DIR), at
28x28.
"""

from configs import mnist_files


def get_config():
  config = mnist_files.get_config()
  config.image_size = 28
  config.model.arch = 'mlp'
  config.model.mlp_hidden = 128
  config.global_batch_size = 128
  config.num_train_steps = 4000
  return config
