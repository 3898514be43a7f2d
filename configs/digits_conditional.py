"""The digits preset, class-conditional: G draws the digit it is asked for.

  python launch.py --config=configs/digits_conditional.py --workdir=workdirs/digits_conditional
  python -m dcgan_jax.sample --workdir=workdirs/digits_conditional --labels=7 --num_samples=64 --output=sevens.png
  python -m dcgan_jax.evaluate --workdir=workdirs/digits_conditional --metrics=classifier

configs/digits.py with `conditional=True`: the one-hot label is joined to z
and to every G and D layer (the authors' conditional MNIST model); fake
images get uniformly drawn labels. Sample grids have a row per digit, and
`evaluate` reports conditional_accuracy, the share of samples the
evaluation classifier reads as the requested digit.
"""

from configs import digits


def get_config():
  config = digits.get_config()
  config.conditional = True
  config.num_sample_images = 100  # 10 per digit: a row each.
  return config
