"""XLA:CPU's kernel choice (dcgan_jax/util/xla_cpu.py) takes effect, and yields."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
from jax import lax

from dcgan_jax.util import xla_cpu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Prints the optimised HLO of a stride-2 convolution and a matrix product.
_PROGRAM = """
import jax, jax.numpy as jnp
from jax import lax
x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((4, 4, 4, 8))
conv = lambda x, w: lax.conv_general_dilated(x, w, (2, 2), 'SAME',
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
print(jax.jit(conv).lower(x, w).compile().as_text())
print(jax.jit(jnp.matmul).lower(x[0, 0], w[0, 0]).compile().as_text())
"""


def optimised_hlo(xla_flags: str) -> str:
  env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS='cpu')
  result = subprocess.run(
    [sys.executable, '-c', _PROGRAM],
    env=env,
    cwd=REPO,
    capture_output=True,
    text=True,
    check=True,
  )
  return result.stdout


def test_adds_the_flags_unless_xla_flags_already_chooses():
  environ = {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  assert xla_cpu.use_project_kernels(environ)
  assert environ['XLA_FLAGS'].split() == [
    '--xla_force_host_platform_device_count=2',
    *xla_cpu.PROJECT_FLAGS,
  ]
  # Once is enough: a second call (a launched child process) adds nothing.
  assert not xla_cpu.use_project_kernels(environ)
  assert environ['XLA_FLAGS'].split().count(xla_cpu.PROJECT_FLAGS[0]) == 1
  users = '--xla_cpu_experimental_ynn_fusion_type=individual_dot'
  environ = {'XLA_FLAGS': users}
  assert not xla_cpu.use_project_kernels(environ)
  assert environ == {'XLA_FLAGS': users}
  environ = {}
  assert xla_cpu.use_project_kernels(environ)
  assert environ['XLA_FLAGS'] == ' '.join(xla_cpu.PROJECT_FLAGS)


def test_the_flags_change_the_compiled_kernels():
  """With the flags no convolution or dot goes to YNNPACK; without them (or
  with jaxlib's default list spelled out) both do. So the flags are known to
  this jaxlib and act."""
  ours = optimised_hlo(' '.join(xla_cpu.PROJECT_FLAGS))
  assert 'ynn_fusion' not in ours and 'convolution(' in ours and 'dot(' in ours
  default = optimised_hlo('')
  assert default.count('ynn_fusion') >= 2, default
  spelled_out = optimised_hlo(
    '--xla_cpu_experimental_ynn_fusion_type=individual_convolution,individual_dot'
  )
  assert spelled_out.count('ynn_fusion') >= 2


def test_this_test_process_runs_the_project_kernels():
  """conftest.py applies them, as launch.py does."""
  assert xla_cpu.PROJECT_FLAGS[0] in os.environ['XLA_FLAGS'].split()
  x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((4, 4, 4, 8))
  conv = jax.jit(
    lambda x, w: lax.conv_general_dilated(
      x, w, (2, 2), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    )
  )
  assert 'ynn_fusion' not in conv.lower(x, w).compile().as_text()
