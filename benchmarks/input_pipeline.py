"""Times the input pipeline of a config: decoding once, then batches.

  python benchmarks/input_pipeline.py --config=configs/folder.py \
      --config.dataset=folder:/path/to/images --config.image_size=64

Prints one line:

  input_pipeline decode_images_per_s=... batch_images_per_s=...
      device_images_per_s=... num_images=... batch=... image_size=...

decode_images_per_s: the one-time pass that decodes, crops and resizes the
data set into the cache (a later launch reads the cache instead).
batch_images_per_s: steady-state batches from `host_batches` (shuffled
gather + scaling to [-1, 1], in its prefetch thread). device_images_per_s:
the same batches through `prefetch_to_device`, as the training loop takes
them. Compare the last with `benchmarks/train_step.py` for the same config.
"""

import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import jax_utils  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from dcgan_jax.data import input_pipeline, loader

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
flags.DEFINE_integer('batches', 200, 'Timed batches.')
flags.mark_flags_as_required(['config'])


def _rate(batches, num: int, batch_size: int) -> float:
  next(batches)  # Starts the prefetch thread.
  t0 = time.perf_counter()
  for _ in range(num):
    jax.block_until_ready(next(batches))
  return num * batch_size / (time.perf_counter() - t0)


def main(argv):
  del argv
  config = FLAGS.config
  cache_dir = tempfile.mkdtemp(prefix='dcgan_jax_bench_')
  try:
    t0 = time.perf_counter()
    images = loader.load_data(config, cache_dir)
    decode = len(images) / (time.perf_counter() - t0)
  finally:
    shutil.rmtree(cache_dir, ignore_errors=True)
  n = jax.local_device_count()

  def batches():
    return input_pipeline.host_batches(
      images, seed=config.seed, global_batch_size=config.global_batch_size
    )

  host = _rate(batches(), FLAGS.batches, config.global_batch_size)
  on_device = _rate(
    jax_utils.prefetch_to_device(
      (b.reshape(n, -1, *b.shape[1:]) for b in batches()), 2
    ),
    FLAGS.batches,
    config.global_batch_size,
  )
  print(
    f'input_pipeline decode_images_per_s={decode:.1f} '
    f'batch_images_per_s={host:.1f} device_images_per_s={on_device:.1f} '
    f'num_images={len(images)} batch={config.global_batch_size} '
    f'image_size={config.image_size} channels={config.num_channels}',
    flush=True,
  )


if __name__ == '__main__':
  app.run(main)
