"""Trains a DCGAN: the only entry point that defines flags.

  python launch.py --config=configs/digits.py --workdir=workdirs/digits
  python launch.py --config=configs/celeba.py --workdir=gs://bucket/celeba \
      --config.data_dir=gs://bucket/tensorflow_datasets

Pointing --workdir at an existing run resumes it from its latest checkpoint.
Override any config key with --config.KEY=VALUE (unknown keys are errors).

Several hosts run the same command. In a cluster that JAX's
`jax.distributed.initialize()` detects by itself (a Cloud TPU slice, SLURM,
Open MPI, Kubernetes) no more flags are needed: with more than one process
it joins them. Elsewhere give every process --coordinator_address,
--num_processes and its own --process_id. One host needs none of them.
"""

import difflib
import logging as std_logging
import os
import re
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from dcgan_jax.util import xla_cpu  # noqa: E402  (imports no JAX)

xla_cpu.use_project_kernels()  # Before JAX starts: see dcgan_jax/util/xla_cpu.py.

import jax  # noqa: E402
import ml_collections  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from dcgan_jax import train  # noqa: E402
from dcgan_jax.core import config_checks  # noqa: E402
from dcgan_jax.util import errors, library_noise  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  'config', None, 'Config file (configs/*.py).', lock_config=True
)
flags.DEFINE_string('workdir', None, 'Checkpoints, TensorBoard logs and samples.')
flags.DEFINE_string(
  'coordinator_address',
  None,
  'host:port of process 0, for a multi-process run that JAX cannot detect by '
  'itself; with --num_processes and --process_id (all three or none). '
  'Without them, a cluster that jax.distributed.initialize() detects (Cloud '
  'TPU, SLURM, Open MPI, Kubernetes) is joined when it runs several '
  'processes; with none detected, this process trains alone.',
)
flags.DEFINE_integer(
  'num_processes', None, 'With --coordinator_address: how many processes.'
)
flags.DEFINE_integer(
  'process_id', None, 'With --coordinator_address: this one, in [0, num_processes).'
)
flags.DEFINE_bool(
  'allow_config_change',
  False,
  'Resume a workdir even though config keys that shape the trajectory (or '
  'the data set) changed since it was started.',
)
flags.mark_flags_as_required(['config', 'workdir'])


# --config.KEY=VALUE, --config.KEY VALUE, --noconfig.KEY: group 1 is KEY.
_OVERRIDE = re.compile(r'^--?(?:no)?config\.([^=]+)')
_TYPE_NAMES = {
  int: 'an integer',
  float: 'a number',
  bool: 'True or False',
  str: 'a string',
}


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, but a mistake is one line `Error: ...`, exit 1."""
  try:
    argv = FLAGS(argv)
    message = _config_file_error(FLAGS['config'].value)
    if message is None:
      return argv
  except flags.Error as e:
    message = _bad_value_message(e, argv) or ' '.join(str(e).split())
  except (AttributeError, KeyError):  # ml_collections on an unknown --config.KEY.
    message = _unknown_key_message(argv)
    if message is None:
      raise
  sys.exit(f'Error: {message}')


def _config_file_error(config) -> str | None:
  """Why the --config file did not load, or None where it did.

  ml_collections keeps the error for the first access of the config."""
  if config is None or isinstance(config, ml_collections.ConfigDict):
    return None
  reason = f'got {type(config).__name__}'
  try:
    config.seed  # noqa: B018
  except OSError as e:
    reason = str(e).strip().splitlines()[-1].strip()
  return f'cannot load the --config file: {reason}; give --config=configs/<preset>.py.'


def _config_keys(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  """Every dotted key of `config`: 'seed', ..., 'model', 'model.arch', ..."""
  keys = []
  for key, value in config.items():
    keys.append(prefix + key)
    if isinstance(value, ml_collections.ConfigDict):
      keys.extend(_config_keys(value, f'{prefix}{key}.'))
  return keys


def _unknown_key_message(argv: list[str]) -> str | None:
  """'unknown config key ...' for the first --config.KEY the config lacks."""
  argv = FLAGS.read_flags_from_files(argv, force_gnu=False)
  path = next(
    (
      arg.split('=', 1)[1] if '=' in arg else argv[i + 1]
      for i, arg in enumerate(argv)
      if re.match(r'^--?config(=|$)', arg) and ('=' in arg or i + 1 < len(argv))
    ),
    None,
  )
  if path is None:
    return None
  keys = _config_keys(FLAGS['config'].parser.parse(path))
  for arg in argv:
    match = _OVERRIDE.match(arg)
    if match and match[1] not in keys:
      key = match[1]
      nearest = _nearest_keys(key, keys)
      hint = f'did you mean {" or ".join(map(repr, nearest))}? ' if nearest else ''
      return (
        f"unknown config key '{key}' (--config.{key}): {hint}"
        'configs/default.py lists every key.'
      )
  return None


def _nearest_keys(key: str, keys: list[str]) -> list[str]:
  """What `key` was likely meant to be: the same name at another level
  ('z_dim' -> 'model.z_dim'), a longer name ending in it ('learning_rate' ->
  'g_learning_rate', 'd_learning_rate'), else difflib's nearest."""
  leaf = key.rsplit('.', 1)[-1]
  return (
    [k for k in keys if k.rsplit('.', 1)[-1] == leaf]
    or [k for k in keys if k.endswith(('_' + leaf, '.' + leaf))][:2]
    or difflib.get_close_matches(key, keys, n=1)
  )


def _bad_value_message(error: flags.Error, argv: list[str]) -> str | None:
  """What a --config.KEY=VALUE of the wrong type should be, or None."""
  match = re.match(r'^flag --config\.([\w.]+)=', str(error))
  config = FLAGS['config'].value
  if match is None or not isinstance(config, ml_collections.ConfigDict):
    return None
  *parents, leaf = match[1].split('.')
  for name in parents:
    config = config[name]
  field_type, example = config.get_type(leaf), config[leaf]
  flag, given = f'--config.{match[1]}', ['...']
  for i, arg in enumerate(argv):
    if arg.startswith(flag + '='):
      given.append(arg.split('=', 1)[1])
    elif arg == flag and i + 1 < len(argv):
      given.append(argv[i + 1])
  value = given[-1]
  what = _TYPE_NAMES.get(field_type, field_type.__name__)
  example = f', as in --config.{match[1]}={example}' if example is not None else ''
  return f'--config.{match[1]}={value} is not {what}; give {what}{example}.'


class _QuietLibraries(std_logging.Filter):
  """Drops the INFO chatter of Orbax and TFDS; their warnings still show,
  but for TFDS's note that a data set's folder is not there yet (it is
  looking for one that is not prepared: the run says so itself)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    noisy = ('/orbax/', '/tensorflow_datasets/', '/jax/_src/xla_bridge')
    if '/tensorflow_datasets/' in record.pathname and (
      'has no dataset_info.json' in record.getMessage()
    ):
      return False
    return record.levelno >= std_logging.WARNING or not any(
      part in record.pathname for part in noisy
    )


_COORDINATOR_FLAGS = ('--coordinator_address', '--num_processes', '--process_id')


def _maybe_initialize_distributed() -> None:
  """Joins the other processes, if any: from the flags or the cluster."""
  given = (FLAGS.coordinator_address or None, FLAGS.num_processes, FLAGS.process_id)
  if given == (None, None, None):
    _join_detected_cluster()
    return
  address, num_processes, process_id = given
  missing = [
    name for name, v in zip(_COORDINATOR_FLAGS, given, strict=True) if v is None
  ]
  if missing:
    raise errors.ConfigError(
      f'Give {" and ".join(missing)} too: --coordinator_address, '
      '--num_processes and --process_id go together (or drop all three in '
      'a cluster that JAX detects, or on one host).'
    )
  host, _, port = address.rpartition(':')
  if not host or not port.isdigit():
    raise errors.ConfigError(
      f'--coordinator_address={address} must be host:port (of process 0).'
    )
  if num_processes < 1:
    raise errors.ConfigError(f'--num_processes={num_processes} must be at least 1.')
  if not 0 <= process_id < num_processes:
    raise errors.ConfigError(
      f'--process_id={process_id} must be in [0, {num_processes - 1}] '
      f'(--num_processes={num_processes}).'
    )
  jax.distributed.initialize(address, num_processes, process_id)


def _join_detected_cluster() -> None:
  """`jax.distributed.initialize()` where JAX detects several processes."""
  environments = _jax_cluster_environments()
  if environments is None:  # Unknown JAX internals: initialize() decides.
    try:
      jax.distributed.initialize()
    except ValueError as e:
      if 'coordinator_address' not in str(e):  # It found a cluster, but a bad one.
        raise _cluster_error('a cluster', e) from e
      logging.info('No cluster detected: one process.')
    return
  cluster = next((env for env in environments if env.is_env_present()), None)
  if cluster is None:
    return  # One host.
  name = f'a {getattr(cluster, "name", "") or cluster.__name__} cluster'
  try:
    num_processes = cluster.get_process_count()
  except (KeyError, ValueError) as e:
    raise _cluster_error(name, e) from e
  if num_processes == 1:
    logging.info('JAX detected %s of one process: no jax.distributed.', name)
    return
  try:
    jax.distributed.initialize()  # Parameters from the same detection.
  except (KeyError, TypeError, ValueError) as e:
    raise _cluster_error(name, e) from e


def _jax_cluster_environments() -> list[type] | None:
  """The cluster environments `jax.distributed.initialize()` tries, in its
  order, or None where this JAX does not have them where expected.

  JAX answers "is there a cluster, of how many processes?" only inside
  initialize() (which raises ValueError on a single host); this function is
  the one place that reads its private registry, jax._src.clusters (as of
  JAX 0.10). Each entry has is_env_present() and get_process_count().
  """
  try:
    from jax._src import clusters

    environments = list(clusters.ClusterEnv._cluster_types)
  except (ImportError, AttributeError):
    return None
  # Opt-in ones (mpi4py) run only when asked for by name; initialize() skips them.
  return [env for env in environments if not getattr(env, 'opt_in_only_method', False)]


def _cluster_error(name: str, error: Exception) -> errors.ConfigError:
  message = ' '.join(str(error).split()).rstrip('.') or type(error).__name__
  return errors.ConfigError(
    f'JAX detected {name} but cannot join it: {message}. Fix the '
    "cluster's environment variables, or pass --coordinator_address, "
    '--num_processes and --process_id.'
  )


def main(argv):
  if len(argv) > 1:
    sys.exit(
      f'Error: unexpected arguments {argv[1:]}: flags are --name=value, '
      'config keys --config.KEY=VALUE.'
    )
  logging.get_absl_handler().addFilter(_QuietLibraries())
  library_noise.install()  # Orbax's tracebacks of an error reported below.
  if FLAGS.config.deterministic_gpu:  # Read when the GPU backend starts.
    os.environ['XLA_FLAGS'] = (
      os.environ.get('XLA_FLAGS', '') + ' --xla_gpu_deterministic_ops=true'
    ).strip()
  try:
    config_checks.check_ranges(FLAGS.config)  # Before JAX or data start.
    _maybe_initialize_distributed()
    logging.info(
      'JAX process %d/%d, %d local / %d global %s devices.',
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
      jax.device_count(),
      jax.default_backend(),
    )
    train.train_and_evaluate(
      FLAGS.config, FLAGS.workdir, allow_config_change=FLAGS.allow_config_change
    )
  except (errors.ConfigError, errors.CheckpointError, FloatingPointError) as e:
    sys.exit(f'Error: {e}')  # A message that says what to change, no traceback.


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
