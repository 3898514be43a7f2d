"""TensorFlow's DCGAN tutorial, its recipe exactly, on the real MNIST files.

  python launch.py --config=configs/mnist_tf_tutorial.py --workdir=workdirs/mnist_tf_tutorial

The tutorial's model (`model.arch='tf_tutorial'`: Dense 7x7x256 and three
5x5 transposed convolutions in G; two 5x5 stride-2 convolutions with
Dropout 0.3 in D) with its Keras settings: Glorot-uniform kernels and
BatchNorm scales of 1, LeakyReLU 0.3, BatchNorm momentum 0.99 and epsilon
1e-3, z ~ N(0, 1) of 100 dimensions, Adam(1e-4) with Keras' beta1 0.9 and
epsilon 1e-7 for both networks, batch 256, BCE losses, and D and G updated
simultaneously from one pass of G and one of D (its `train_step` with two
gradient tapes). It trains for as many images as the tutorial's 50 epochs
of the 60,000 training digits (11,719 steps of 256). Offline: the data are
the 10,000 MNIST test digits of ../shared/data/mnist (or $DCGAN_MNIST_DIR),
at the tutorial's 28x28.

Its samples are dots on a regular grid for some 500 steps, and the
tutorial's Keras code draws the same dots from the same weights and data
(compared up to step 300); by step 750 (seed 0) they are blob- and
digit-like shapes, by step 2500 strokes of digits. The evaluation
classifier's FD (5,000 samples, `python -m dcgan_jax.evaluate`) at steps
500, 1500, 2000 and 2500: 2028, 419, 1077, 506.
tests/tf_tutorial_keras_test.py checks the models, the losses, one
simultaneous step's gradients and the BatchNorm moving averages against the
tutorial's Keras code. One difference remains: Keras adds Adam's epsilon to
the square root of the uncorrected second moment, optax to the
bias-corrected one, so Keras' epsilon is in effect 1e-7 / sqrt(1 - 0.999^t)
(3.2e-6 at step 1, 1.3e-7 at step 1000); it changes only the updates of
gradients about that small.
"""

from configs import mnist_files


def get_config():
  config = mnist_files.get_config()
  config.image_size = 28
  config.model.arch = 'tf_tutorial'
  config.model.init = 'glorot_uniform'
  config.model.z_dist = 'normal'
  config.model.leaky_slope = 0.3
  config.model.bn_momentum = 0.99
  config.model.bn_epsilon = 1e-3
  config.model.dropout_rate = 0.3
  config.g_learning_rate = 1e-4
  config.d_learning_rate = 1e-4
  config.b1 = 0.9
  config.b2 = 0.999
  config.adam_eps = 1e-7
  config.global_batch_size = 256
  config.update_order = 'simultaneous'
  config.num_train_steps = 11_719  # 50 x 60,000 images / 256.
  config.log_every_steps = 100
  config.sample_every_steps = 1000
  config.checkpoint_every_steps = 1000
  return config
