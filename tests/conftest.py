"""Test set-up: several host devices, so every pmap path runs on more than one."""

import gc
import os

import pytest

# Must happen before jax is imported anywhere.
os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=4'
).strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')


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
