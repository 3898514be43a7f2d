"""Which kernels XLA:CPU runs this project's convolutions and products with.

jaxlib 0.10 hands CPU convolutions and matrix products to YNNPACK by
default. On the DCGAN train step XLA's other kernels (Eigen's) are faster on
the machines measured: at 64x64, batch 64 the step runs at 40 images/s
instead of 33 on 2 AMD EPYC cores (benchmarks/README.md). `launch.py` and
`benchmarks/train_step.py` call `use_project_kernels()` before JAX starts.

This module imports nothing from JAX: XLA reads XLA_FLAGS once, when its
first backend starts, so the flags must be in place before that.
"""

import importlib.metadata
import os
from collections.abc import MutableMapping

# Turns the YNNPACK rewrite of convolutions and dots off; XLA then uses its
# own runtime kernels. The flag exists in jaxlib 0.10.
_FLAG_NAME = 'xla_cpu_experimental_ynn_fusion_type'
PROJECT_FLAGS = (f'--{_FLAG_NAME}=-individual_convolution,-individual_dot',)
_JAXLIB_WITH_FLAG = ('0.10.',)


def use_project_kernels(environ: MutableMapping[str, str] = os.environ) -> bool:
  """Adds PROJECT_FLAGS to XLA_FLAGS in `environ`; True if it did.

  Leaves XLA_FLAGS alone when it already sets the flag (the user's choice
  wins: `--xla_cpu_experimental_ynn_fusion_type=individual_convolution,individual_dot`
  restores jaxlib's default), and with jaxlib versions not known to have the flag (XLA
  stops on flags it does not know).
  """
  flags = environ.get('XLA_FLAGS', '')
  if _FLAG_NAME in flags:
    return False
  try:
    jaxlib_version = importlib.metadata.version('jaxlib')
  except importlib.metadata.PackageNotFoundError:
    return False
  if not jaxlib_version.startswith(_JAXLIB_WITH_FLAG):
    return False
  environ['XLA_FLAGS'] = ' '.join([flags, *PROJECT_FLAGS]).strip()
  return True
