"""Trains a DCGAN: the only entry point that defines flags.

  python launch.py --config=configs/digits.py --workdir=workdirs/digits
  python launch.py --config=configs/celeba.py --workdir=gs://bucket/celeba \
      --config.data_dir=gs://bucket/tensorflow_datasets

Pointing --workdir at an existing run resumes it from its latest checkpoint.
Override any config key with --config.KEY=VALUE (unknown keys are errors).
"""

import logging as std_logging
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from dcgan_jax.util import xla_cpu  # noqa: E402  (imports no JAX)

xla_cpu.use_project_kernels()  # Before JAX starts: see dcgan_jax/util/xla_cpu.py.

import jax  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from dcgan_jax import train  # noqa: E402
from dcgan_jax.util import errors  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  'config', None, 'Config file (configs/*.py).', lock_config=True
)
flags.DEFINE_string('workdir', None, 'Checkpoints, TensorBoard logs and samples.')
flags.DEFINE_string(
  'coordinator_address',
  None,
  'host:port of process 0, for multi-process runs outside managed clusters '
  '(Cloud TPU, SLURM and Open MPI are detected automatically).',
)
flags.DEFINE_integer('num_processes', None, 'With --coordinator_address.')
flags.DEFINE_integer('process_id', None, 'With --coordinator_address.')
flags.DEFINE_bool(
  'allow_config_change',
  False,
  'Resume a workdir even though config keys that shape the trajectory (or '
  'the data set) changed since it was started.',
)
flags.mark_flags_as_required(['config', 'workdir'])

# Environment variables that mean "one of several hosts".
_MULTIHOST_ENV = ('TPU_WORKER_HOSTNAMES', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE')


class _QuietLibraries(std_logging.Filter):
  """Drops the INFO chatter of Orbax and TFDS; their warnings still show."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    noisy = ('/orbax/', '/tensorflow_datasets/', '/jax/_src/xla_bridge')
    return record.levelno >= std_logging.WARNING or not any(
      part in record.pathname for part in noisy
    )


def _maybe_initialize_distributed() -> None:
  if FLAGS.coordinator_address:
    jax.distributed.initialize(
      FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
    )
    return
  for name in _MULTIHOST_ENV:
    value = os.environ.get(name, '')
    if ',' in value or (value.isdigit() and int(value) > 1):
      jax.distributed.initialize()  # Cluster parameters are auto-detected.
      return


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if FLAGS.config.deterministic_gpu:  # Read when the GPU backend starts.
    os.environ['XLA_FLAGS'] = (
      os.environ.get('XLA_FLAGS', '') + ' --xla_gpu_deterministic_ops=true'
    ).strip()
  # TensorFlow only feeds data: keep it off the accelerators JAX uses.
  tf.config.set_visible_devices([], 'GPU')
  _maybe_initialize_distributed()
  logging.info(
    'JAX process %d/%d, %d local / %d global %s devices.',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.default_backend(),
  )
  try:
    train.train_and_evaluate(
      FLAGS.config, FLAGS.workdir, allow_config_change=FLAGS.allow_config_change
    )
  except (errors.ConfigError, errors.CheckpointError, FloatingPointError) as e:
    sys.exit(f'Error: {e}')  # A message that says what to change, no traceback.


if __name__ == '__main__':
  app.run(main)
