"""A trained generator as a self-contained artefact that needs only JAX
(and flatbuffers, which jax.export's deserialiser imports).

  python -m dcgan_jax.export --workdir=W [--output=W/export] \
      [--platforms=cpu,cuda,tpu] [--conv_impl=xla]

Serialises G(z) of W's latest checkpoint with `jax.export`: the weights are
baked in as constants, BatchNorm uses its running averages (inference mode,
so each image depends on its own z only), and the batch size is symbolic.
OUTPUT/ holds

  generator.jaxexport  the serialised function z [B, z_dim] float32 ->
                       images [B, H, W, C] float32 in [-1, 1]
  signature.json       z_dim, z_dist, the image shape, step, platforms, ...
  config.json          the full training config

and loads in any Python with `jax` and `flatbuffers` installed (`pip
install jax flatbuffers`; not dcgan_jax, flax or TensorFlow):

  from jax import export
  with open('OUTPUT/generator.jaxexport', 'rb') as f:
    generator = export.deserialize(f.read())
  images = generator.call(z)  # z: float32 [B, z_dim], see signature.json

`z_dist` 'uniform' means z ~ U[-1, 1]^z_dim, 'normal' z ~ N(0, I).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax import export as jax_export

from dcgan_jax import cli
from dcgan_jax.core import generate, rundir
from dcgan_jax.networks import models
from dcgan_jax.util import files, progress

EXPORT_FILE = 'generator.jaxexport'
SIGNATURE_FILE = 'signature.json'
# What a Python needs to load and call the artefact: jax and its own
# dependencies, and flatbuffers (jax.export's deserialiser imports it, but
# jax does not require it).
LOAD_REQUIRES = (f'jax>={jax.__version__}', 'flatbuffers')
CONFIG_FILE = 'config.json'
ARTEFACT_FILES = (EXPORT_FILE, SIGNATURE_FILE, CONFIG_FILE)
PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')
DEFAULT_PLATFORMS = ('cpu', 'cuda', 'tpu')


def export_generator(
  config: ml_collections.ConfigDict,
  g_variables: dict[str, Any],
  *,
  platforms: Sequence[str] = DEFAULT_PLATFORMS,
  conv_impl: str = 'xla',
) -> jax_export.Exported:
  """G(z) with BatchNorm in inference mode and the variables as constants,
  exported for `platforms` with a symbolic batch size.

  `conv_impl` picks the convolution code baked in ('xla': XLA's convolutions,
  right for accelerators; 'phases': dcgan_jax/networks/strided.py, faster on CPU);
  both compute the same function of the same parameters.
  """
  unknown = [p for p in platforms if p not in PLATFORMS]
  if unknown or not platforms:
    raise ValueError(f'platforms must be some of {list(PLATFORMS)}, got {platforms}.')
  model_config = config.model.copy_and_resolve_references()
  model_config.conv_impl = conv_impl
  generator, _ = models.create_models(
    model_config, image_size=config.image_size, num_channels=config.num_channels
  )
  variables = jax.device_get(g_variables)

  def generate_fn(z: jax.Array) -> jax.Array:
    return generate.generate(generator, variables, z, batchnorm='running').astype(
      jnp.float32
    )

  (batch,) = jax_export.symbolic_shape('batch')
  width = config.model.z_dim + generate.num_classes(config)  # [z, one-hot].
  z_spec = jax.ShapeDtypeStruct((batch, width), jnp.float32)
  return jax_export.export(jax.jit(generate_fn), platforms=tuple(platforms))(z_spec)


def signature(
  config: ml_collections.ConfigDict, exported: jax_export.Exported, step: int
) -> dict[str, Any]:
  """What a user of the artefact needs to know to call it."""
  classes = generate.num_classes(config)
  conditional = (
    {
      'num_classes': classes,
      'z_layout': f'[z (z_dim), one-hot class ({classes})]: a class-conditional G',
    }
    if classes
    else {}
  )
  return {
    'function': 'images = generator.call(z)',
    'z_shape': ['batch', config.model.z_dim + classes],
    'z_dim': config.model.z_dim,
    **conditional,
    'z_dist': config.model.z_dist,
    'z_dtype': 'float32',
    'image_shape': ['batch', config.image_size, config.image_size, config.num_channels],
    'image_range': [-1.0, 1.0],
    'image_to_uint8': 'clip(round((images + 1) * 127.5), 0, 255)',
    'batchnorm': 'running averages (inference mode)',
    'step': step,
    'dataset': config.dataset,
    'seed': config.seed,
    'platforms': list(exported.platforms),
    'jax_version': jax.__version__,
    'load_requires': list(LOAD_REQUIRES),
    'calling_convention_version': exported.calling_convention_version,
  }


def write_artefact(
  output: str,
  config: ml_collections.ConfigDict,
  exported: jax_export.Exported,
  step: int,
  generator: str = 'raw',
) -> None:
  """Writes OUTPUT/{generator.jaxexport, config.json, signature.json}; the
  signature records which `generator` ('ema' or 'raw') was exported.

  Each file is written atomically, the signature (with the generator's
  SHA-256) last, so a crash leaves at worst an old signature that does not
  match the new generator, never a half-written file. Nothing else is
  touched: an OUTPUT holding other files is refused, not replaced.
  """
  files.check(output, '--output')
  if files.isdir(output):
    others = [
      name
      for name in files.listdir(output)
      if name not in ARTEFACT_FILES  # Nor a killed write's temporary file:
      and not any(name.startswith(f'{a}.tmp-') for a in ARTEFACT_FILES)
    ]
    if others:
      raise FileExistsError(
        f'--output={output} already holds other files ({", ".join(others[:5])}); '
        'give a new directory, or one holding only a previous export.'
      )
  serialized = exported.serialize()
  files.write_atomic(files.join(output, EXPORT_FILE), bytes(serialized))
  files.write_atomic(
    files.join(output, CONFIG_FILE), config.to_json(indent=2, sort_keys=True)
  )
  files.write_json(
    files.join(output, SIGNATURE_FILE),
    signature(config, exported, step)
    | {
      'generator': generator,
      'generator_sha256': hashlib.sha256(serialized).hexdigest(),
    },
  )


def export_workdir(
  workdir: str,
  output: str | None = None,
  *,
  platforms: Sequence[str] = DEFAULT_PLATFORMS,
  conv_impl: str = 'xla',
  generator: str = 'auto',
) -> str:
  """Exports the latest checkpoint of `workdir` (its `generator`, see
  `rundir.resolve_generator`) to `output` (default W/export); returns the
  output directory."""
  with progress.timed(f'Restoring the checkpoint of {workdir}'):
    run = rundir.load_run(workdir, generator)  # Errors say what to pass.
  with progress.timed(f'Exporting G for {", ".join(platforms)} (lowering)'):
    exported = export_generator(
      run.config, run.g_variables, platforms=platforms, conv_impl=conv_impl
    )
  output = output or files.join(workdir, 'export')
  with progress.timed(f'Writing the artefact to {output}'):
    write_artefact(output, run.config, exported, run.step, run.generator)
  return output


COMMAND = cli.Command('export', __doc__)
COMMAND.path('workdir', None, 'Training workdir (a single GAN).')
COMMAND.path('output', None, 'Directory of the artefact (default: W/export).')
COMMAND.string(
  'platforms', ','.join(DEFAULT_PLATFORMS), f'Comma-separated, of {list(PLATFORMS)}.'
)
COMMAND.enum(
  'conv_impl',
  'xla',
  ('xla', 'phases'),
  "'xla' (accelerators) or 'phases' (faster on CPU); the same function.",
)
COMMAND.enum('generator', 'auto', rundir.GENERATORS, rundir.GENERATOR_HELP)
COMMAND.required('workdir')


def _export(args) -> None:
  platforms = [p.strip() for p in args.platforms.split(',') if p.strip()]
  output = export_workdir(
    args.workdir,
    args.output,
    platforms=platforms,
    conv_impl=args.conv_impl,
    generator=args.generator,
  )
  print(f'Exported the generator to {output}/ ({EXPORT_FILE}, {SIGNATURE_FILE}).')


def main(argv: Sequence[str]) -> None:
  COMMAND.run(_export, argv)


if __name__ == '__main__':
  main(cli.main_argv())
