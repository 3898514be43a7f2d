"""SVHN (TFDS 'svhn_cropped', 73,257 training digits) at 32x32 RGB.

  python launch.py --config=configs/svhn.py --workdir=workdirs/svhn
  python -m dcgan_jax.linear_probe --workdir=workdirs/svhn --probe=svhn_1000

The second command is the paper's SVHN experiment (Radford et al. 2015,
section 5.1.2, 22.48% test error): an L2-SVM on D's features of 1,000
labelled training digits, C chosen on 10,000 further training digits,
tested on the test split. TFDS downloads SVHN on first use; offline, run
`tfds build svhn_cropped --data_dir=DIR` elsewhere and pass
--config.data_dir=DIR (and --data_dir=DIR to the probe).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'svhn_cropped'
  config.image_size = 32
  config.num_channels = 3
  config.model.g_width = 512
  config.model.d_width = 128
  config.model.kernel_size = 4
  config.global_batch_size = 128
  config.num_train_steps = 30_000
  return config
