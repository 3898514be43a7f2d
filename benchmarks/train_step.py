"""Times the training step of a config on this machine's default backend.

  python benchmarks/train_step.py --config=benchmarks/torch_reference.py
  python benchmarks/train_step.py --config=configs/digits.py --steps=50

It builds exactly the step `launch.py` runs (pmap over the local devices,
donated state), feeds it a fixed batch already on the devices, and prints one
line:

  dcgan_jax images_per_s=... step_s=... gflop_per_step=... gflop_per_s=...
      compile_s=... peak_mem_mb=... backend=... devices=... batch=... ...

gflop_per_step counts the convolutions and matrix products of the
architecture (`dcgan_jax.flops`: 3 F_G + 8 F_D); gflop_per_s divides it by
the step time; utilisation divides that by the local chips' dense peak for
the compute dtype (chip_peak_tflop_s, from the vendors' data sheets for the
GPUs and TPUs listed in `_PEAK_TFLOP_S`; 'unknown' elsewhere, e.g. on
CPUs). peak_mem_mb is the device's peak where the backend reports it
(GPU, TPU), otherwise XLA's buffer plan for the step (arguments + outputs +
temporaries). xla_flags is XLA_FLAGS as the step ran: on CPU it holds the
kernel choice of `dcgan_jax/util/xla_cpu.py` unless XLA_FLAGS already made one.
With --config.num_seeds=K the step trains K GANs, and
images/s and FLOPs count all of them. Only the step is timed: the input pipeline has its own
benchmark (`benchmarks/input_pipeline.py`).
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from dcgan_jax.util import xla_cpu  # noqa: E402  (imports no JAX)

xla_cpu.use_project_kernels()  # As launch.py does.

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import jax_utils  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from dcgan_jax.core import config_checks, rundir  # noqa: E402
from dcgan_jax.core import state as gan_state  # noqa: E402
from dcgan_jax.core import step as step_lib  # noqa: E402
from dcgan_jax.networks import flops, models  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
flags.DEFINE_integer('steps', 10, 'Timed steps (after the warm-up).')
flags.DEFINE_integer('warmup', 2, 'Untimed steps after compilation.')
flags.mark_flags_as_required(['config'])


def _peak_memory_mb(compiled) -> float:
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 2**20
  mem = compiled.memory_analysis()
  planned = (
    mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
  )
  return planned / 2**20


# Dense peak TFLOP/s per chip from the vendors' data sheets: (device_kind
# substring, bfloat16, float32). float32 convolutions and dots run as TF32 on
# NVIDIA tensor cores and as bfloat16 passes on TPUs at JAX's default
# precision, so those rates are their float32 peaks. The first match wins.
_PEAK_TFLOP_S = (
  ('H100 PCIe', 756.0, 378.0),
  ('H100', 989.4, 494.7),
  ('H200', 989.4, 494.7),
  ('A100', 312.0, 156.0),
  ('TPU v4', 275.0, 275.0),
  ('TPU v5 lite', 197.0, 197.0),
  ('TPU v5', 459.0, 459.0),
  ('TPU v6 lite', 918.0, 918.0),
)


def peak_tflop_s(device_kind: str, compute_dtype: str) -> float | None:
  """One chip's dense peak for the step's compute dtype; None if unknown."""
  for name, bf16, f32 in _PEAK_TFLOP_S:
    if name in device_kind:
      return bf16 if compute_dtype == 'bfloat16' else f32
  return None


def benchmark(config, steps: int, warmup: int) -> dict[str, float | str]:
  config_checks.validate_config(config, jax.local_device_count())
  n = jax.local_device_count()
  size, channels = config.image_size, config.num_channels
  hyper = step_lib.make_step_config(
    config, bn_axis_name='batch' if step_lib.syncs_batchnorm(config) else None
  )
  members = rundir.seed_members(config, '')
  p_step = jax.pmap(
    step_lib.make_ensemble_step(hyper, len(members), config.ensemble),
    axis_name='batch',
    in_axes=(0, 0, None),
    donate_argnums=(0,),
  )
  inits = [gan_state.initial_state(m.config) for m in members]
  init = inits[0]
  # The architecture's FLOPs: counted on flax's own layers, whatever
  # config.model.conv_impl computes them with.
  plain = config.model.copy_and_resolve_references()
  plain.conv_impl = 'xla'
  generator, discriminator = models.create_models(
    plain, image_size=size, num_channels=channels
  )
  f_g, f_d = flops.model_flops(
    generator,
    discriminator,
    {'params': init.g_params, 'batch_stats': init.g_batch_stats},
    {'params': init.d_params, 'batch_stats': init.d_batch_stats},
    config.global_batch_size,
    config.model.z_dim,
  )
  step_flops = flops.train_step_flops(f_g, f_d) * len(members)
  state = jax_utils.replicate(jax.tree.map(lambda *xs: np.stack(xs), *inits))
  rng = np.random.default_rng(0)
  local_batch = config.global_batch_size // n
  images = rng.uniform(-1, 1, (n, len(members), local_batch, size, size, channels))
  # Put on the devices as the training loop's prefetch does.
  images = next(jax_utils.prefetch_to_device(iter([images.astype(np.float32)]), 1))
  train_key = jax.numpy.stack(
    [gan_state.split_root_key(jax.random.key(c.seed))[1] for c, _ in members]
  )

  t0 = time.perf_counter()
  compiled = p_step.lower(state, images, train_key).compile()
  compile_s = time.perf_counter() - t0

  for _ in range(warmup):
    state, _ = compiled(state, images, train_key)
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, step_metrics = compiled(state, images, train_key)
  jax.block_until_ready((state, step_metrics))
  step_s = (time.perf_counter() - t0) / steps

  peak = peak_tflop_s(jax.local_devices()[0].device_kind, config.model.compute_dtype)
  utilisation = 'unknown'
  if peak is not None:  # Against all the local chips' peak.
    utilisation = step_flops / step_s / (peak * 1e12 * n)
  return {
    'images_per_s': len(members) * config.global_batch_size / step_s,
    'step_s': step_s,
    'gflop_per_step': step_flops / 1e9,
    'gflop_per_s': step_flops / step_s / 1e9,
    'compile_s': compile_s,
    'peak_mem_mb': _peak_memory_mb(compiled),
    'utilisation': utilisation,
    'chip_peak_tflop_s': 'unknown' if peak is None else peak,
    'backend': jax.default_backend(),
    'device': jax.local_devices()[0].device_kind.replace(' ', '_'),
    'devices': n,
    'batch': config.global_batch_size,
    'image_size': size,
    'arch': config.model.arch,
    'g_width': config.model.g_width,
    'd_width': config.model.d_width,
    'kernel': config.model.kernel_size,
    'conv_impl': models.resolve_conv_impl(config.model.conv_impl),
    'seeds': len(members),
    'ensemble': config.ensemble,
    'xla_flags': '"' + os.environ.get('XLA_FLAGS', '') + '"',
  }


def main(argv):
  del argv
  result = benchmark(FLAGS.config, FLAGS.steps, FLAGS.warmup)
  fields = ' '.join(
    f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in result.items()
  )
  print(f'dcgan_jax {fields}', flush=True)


if __name__ == '__main__':
  app.run(main)
