"""The same global batch on 1, 2, 4 and 8 devices: the same training step.

z is drawn for the global batch and sliced per device, BatchNorm statistics
span the global batch and gradients are averaged, so only the order of
floating-point reductions depends on the device count. A count this process
lacks (conftest.py forces DCGAN_TEST_DEVICES) is run in a process of its own.
"""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
from flax import jax_utils

from dcgan_jax.core import state as gan_state
from dcgan_jax.core import step as step_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 10


def _setup(optimizer: str):
  """The digits step (16x16, small widths), its initial state and train key."""
  import dataclasses

  import optax

  from configs import digits

  config = digits.get_config()
  config.image_size = 16
  config.model.g_width = 64
  config.model.d_width = 16
  config.global_batch_size = 32
  hyper = step_lib.make_step_config(config)
  if optimizer == 'sgd':
    sgd = optax.sgd(0.01)
    hyper = dataclasses.replace(hyper, g_tx=sgd, d_tx=sgd)
  state = gan_state.create_state(
    hyper.generator,
    hyper.discriminator,
    hyper.g_tx,
    hyper.d_tx,
    gan_state.split_root_key(jax.random.key(config.seed))[0],
    z_dim=config.model.z_dim,
    image_shape=(16, 16, 1),
  )
  train_key = gan_state.split_root_key(jax.random.key(config.seed))[1]
  return hyper, state, train_key


def _make_step(hyper, num_devices: int):
  """state, global batch, key -> next state, on the first num_devices devices."""

  step = jax.pmap(
    lambda s, x, k: step_lib.train_step(s, x, k, hyper=hyper),
    axis_name='batch',
    in_axes=(0, 0, None),
  )
  devices = jax.local_devices()[:num_devices]

  def run(state, batch, key):
    state = jax_utils.replicate(state, devices=devices)
    state, _ = step(state, batch.reshape(num_devices, -1, 16, 16, 1), key)
    return jax.device_get(gan_state.unreplicate(state))

  return run


def _batches(num_steps: int):
  rng = np.random.default_rng(0)  # Fixed stand-in images: the step is tested.
  return [
    rng.uniform(-1, 1, (32, 16, 16, 1)).astype(np.float32) for _ in range(num_steps)
  ]


def final_state(num_devices: int, num_steps: int = NUM_STEPS, optimizer='sgd'):
  """The state after num_steps on the first num_devices devices (host arrays).

  optimizer 'sgd' (0.01) isolates the step itself; 'adam' is the paper's.
  """
  hyper, state, key = _setup(optimizer)
  step = _make_step(hyper, num_devices)
  for batch in _batches(num_steps):
    state = step(state, batch, key)
  return state


def step_differences(num_devices: int, num_steps: int = NUM_STEPS) -> list[float]:
  """Per step of a 1-device SGD run: one step from that state on num_devices
  devices against the same step on 1 device, max relative difference of the
  parameters.

  Each step starts from the same state, so only the step's own reduction
  order can differ; along a whole trajectory, round-off grows with the
  GAN's dynamics and says nothing about the step.
  """
  hyper, state, key = _setup('sgd')
  one, many = _make_step(hyper, 1), _make_step(hyper, num_devices)
  differences = []
  for batch in _batches(num_steps):
    want, got = one(state, batch, key), many(state, batch, key)
    differences.append(
      max_relative_difference(
        (want.g_params, want.d_params), (got.g_params, got.d_params)
      )
    )
    state = want
  return differences


def final_params(num_devices: int, num_steps: int = NUM_STEPS, optimizer='sgd'):
  state = final_state(num_devices, num_steps, optimizer)
  return state.g_params, state.d_params


def max_relative_difference(a, b) -> float:
  """max over parameter arrays of max|a - b| / max|a|."""
  return max(
    float(np.abs(x - y).max() / np.abs(x).max())
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


def on_devices(function: str, num_devices: int):
  """`function(num_devices)` of this module (JSON-serialisable), run here if
  this process has that many devices, else in a process with that many
  forced CPU devices."""
  if num_devices <= jax.local_device_count():
    return globals()[function](num_devices)
  script = (
    'import json\n'
    'from tests import device_count_test as t\n'
    f'print(json.dumps(t.{function}({num_devices})))\n'
  )
  force = '--xla_force_host_platform_device_count'
  flags = re.sub(rf'{force}=\d+', '', os.environ.get('XLA_FLAGS', ''))
  env = dict(os.environ, XLA_FLAGS=f'{flags} {force}={num_devices}'.strip())
  env['JAX_PLATFORMS'] = 'cpu'
  proc = subprocess.run(
    [sys.executable, '-c', script],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.splitlines()[-1])


def adam_first_moment_difference(num_devices: int) -> float:
  """max_relative_difference of D's Adam first moments after one step on
  num_devices devices against one step on 1."""
  one = final_state(1, 1, 'adam')
  other = final_state(num_devices, 1, 'adam')
  return max_relative_difference(one.d_opt_state[0].mu, other.d_opt_state[0].mu)


def test_one_two_four_eight_devices_agree_to_round_off():
  report = {n: on_devices('step_differences', n) for n in (2, 4, 8)}
  print(f'SGD, max relative difference vs 1 device, per step: {report}')
  # A pre-activation within round-off of 0 can land on the other side of its
  # (Leaky)ReLU on one device count: that step's gradient then differs by
  # one element's share (~1e-3 of the layer's update). Any error in how the
  # batch is split (z, BatchNorm statistics, gradient means) shows in every
  # step at 1e-2 or more.
  for n, differences in report.items():
    assert len(differences) == NUM_STEPS
    round_off = [d for d in differences if d < 1e-5]
    assert len(round_off) >= NUM_STEPS - 2, (n, report)
    assert max(differences) < 1e-2, (n, report)
  # The run moved: the steps compared are not those of untrained parameters.
  one, untrained = final_params(1), final_params(1, num_steps=0)
  assert max_relative_difference(one, untrained) > 1e-3


def test_adam_first_gradients_agree_across_device_counts():
  """D's Adam first moments after one step are 0.1 x D's first gradients.

  Adam's parameters are not compared: its first update is lr * sign(grad),
  so round-off in near-zero gradient components flips whole lr-sized steps
  (G's first gradient already sees such a D), and the GAN dynamics amplify
  them over later steps. The SGD test above covers the whole step.
  """
  for n in (2, 4):
    diff = on_devices('adam_first_moment_difference', n)
    print(f'Adam, D first moments after 1 step, {n} vs 1 device: {diff:.2e}')
    assert diff < 1e-5, (n, diff)
