"""The checkerboard score: hand-made patterns, real digits, the evaluator."""

import json
import os

import numpy as np
import pytest
from runs import NUM_STEPS
from scipy import ndimage

from dcgan_jax import evaluate
from dcgan_jax.core import rundir
from dcgan_jax.data import idx, loader
from dcgan_jax.evaluation import checkerboard, digits_svm, evaluator

SIZE = 32
PERIOD = 8  # 32x32 from 4x4 by three doublings.


def mnist32(num: int | None = None) -> np.ndarray:
  """Real MNIST test digits, padded from 28x28 to 32x32 (uint8)."""
  images = idx.idx_images(digits_svm.MNIST_DIR, 'test')[:num]
  return np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))


def share(images, period=PERIOD):
  return checkerboard.share(checkerboard.mean_spectrum(images), period)


def tiled(block: np.ndarray, size: int = SIZE) -> np.ndarray:
  """[size, size, C] tiles of a [p, p, C] block."""
  reps = size // block.shape[0]
  return np.tile(block, (reps, reps, 1))


def test_artefact_period_and_frequencies():
  assert [checkerboard.artefact_period(n) for n in (16, 28, 32, 64, 128)] == [
    4,
    4,
    8,
    16,
    32,
  ]
  with pytest.raises(ValueError, match='not made by stride-2 doublings'):
    checkerboard.artefact_period(9)
  nyquist = checkerboard.artefact_mask(SIZE, SIZE, 2)
  assert sorted(zip(*np.nonzero(nyquist), strict=True)) == [(0, 16), (16, 0), (16, 16)]
  lattice = checkerboard.artefact_mask(SIZE, SIZE, PERIOD)
  assert lattice.sum() == 8 * 8 - 1 and lattice[4, 12] and not lattice[4, 13]
  with pytest.raises(ValueError, match='divide the image size'):
    checkerboard.artefact_mask(SIZE, SIZE, 3)


def test_periodic_textures_have_all_their_power_there():
  rng = np.random.default_rng(0)
  y, x = np.mgrid[:SIZE, :SIZE]
  board = np.where((x + y) % 2, 1.0, -1.0)[None, :, :, None]
  assert share(board, 2) == pytest.approx(1.0)
  texture2 = np.stack([tiled(rng.uniform(-1, 1, (2, 2, 3))) for _ in range(5)])
  assert share(texture2, 2) == pytest.approx(1.0)
  # A period-8 texture: all of it on the 8-lattice, little on the Nyquist.
  texture8 = np.stack([tiled(rng.uniform(-1, 1, (8, 8, 1))) for _ in range(20)])
  assert share(texture8) == pytest.approx(1.0)
  assert share(texture8, 2) < 0.3


def test_smooth_images_have_almost_none():
  rng = np.random.default_rng(1)
  y, x = np.mgrid[:SIZE, :SIZE] + 0.5 - SIZE / 2
  # Gradients that meet themselves across the edges (the DFT wraps around).
  radial = np.hypot(x, y)
  ramp = np.cos(2 * np.pi * x / SIZE) + 0.5 * np.sin(2 * np.pi * y / SIZE)
  gradients = np.stack([radial[..., None], ramp[..., None], (radial * ramp)[..., None]])
  blurred = ndimage.gaussian_filter(
    rng.normal(size=(16, SIZE, SIZE, 1)), sigma=(0, 3, 3, 0), mode='wrap'
  )
  assert share(gradients) < 0.01
  assert share(blurred) < 0.005
  # White noise spreads evenly: the lattice's count of the 32^2 - 1 frequencies.
  noise = rng.normal(size=(400, SIZE, SIZE, 1))
  assert share(noise) == pytest.approx(63 / 1023, rel=0.05)


def test_real_digits_have_a_small_share():
  real = mnist32()
  value = share(real)
  print(f'MNIST 32x32 share at the 8-lattice: {value:.4f}')
  assert 0 < value < 0.05
  assert share(real, 2) < 0.002  # Hardly anything at the Nyquist frequencies.


def test_uint8_and_unit_range_floats_give_the_same_scores():
  real = mnist32(500)
  as_floats = real.astype(np.float32) / 127.5 - 1
  a = checkerboard.checkerboard_metrics(real[:250], real[250:])
  b = checkerboard.checkerboard_metrics(as_floats[:250], as_floats[250:])
  assert a.keys() == b.keys()
  for key in a:
    assert a[key] == pytest.approx(b[key], rel=1e-6), key
  # Nor on the batch size, and indices pick rows.
  spectrum = checkerboard.mean_spectrum(real, batch_size=256)
  np.testing.assert_allclose(
    checkerboard.mean_spectrum(real, batch_size=7), spectrum, rtol=1e-10, atol=1e-15
  )
  rows = np.arange(100, 300)
  np.testing.assert_allclose(
    checkerboard.mean_spectrum(real, indices=rows),
    checkerboard.mean_spectrum(real[rows]),
  )


def test_spike_ratio_sees_periodic_patterns_not_broadband_noise():
  real = mnist32(4000).astype(np.float64) / 127.5 - 1
  samples, reference = real[:2000], real[2000:]
  rng = np.random.default_rng(2)

  def metrics(images):
    return checkerboard.checkerboard_metrics(images, reference)

  same = metrics(samples)
  assert same['checkerboard_spike_ratio'] == pytest.approx(1.0, abs=0.1)
  assert same['checkerboard_share_ratio'] == pytest.approx(1.0, abs=0.1)
  # Faint periodic gains where the strokes are, as a transposed
  # convolution's uneven overlap leaves: they barely change the pixels.
  for period, amplitude in ((2, 0.1), (8, 0.3)):  # Nyquist only; every period.
    gain = tiled(1 + amplitude * rng.uniform(-1, 1, (period, period, 1)))
    patterned = (samples + 1) * gain - 1
    assert np.abs(patterned - samples).mean() < 0.03
    ratios = checkerboard.spike_ratios(
      checkerboard.mean_spectrum(patterned), checkerboard.mean_spectrum(reference), 8
    )
    print(f'gain of period {period} (+-{amplitude}): spike ratios {ratios}')
    if period == 2:
      assert ratios[2] > 2 and ratios[4] < 1.1 and ratios[8] < 1.1
    else:
      assert min(ratios.values()) > 1.2
    assert metrics(patterned)['checkerboard_spike_ratio'] > 1.3
  # White noise raises the share (periodic or not, it counts all power
  # there); the spike ratio stays near 1.
  noisy = samples + rng.normal(scale=0.2, size=samples.shape)
  noise = metrics(noisy)
  print(f'white noise: {noise}')
  assert noise['checkerboard_share'] > same['checkerboard_share']
  assert noise['checkerboard_spike_ratio'] == pytest.approx(1.0, abs=0.1)
  # Blurring removes high frequencies: no spikes either.
  blurred = ndimage.gaussian_filter(samples, sigma=(0, 1, 1, 0))
  assert metrics(blurred)['checkerboard_spike_ratio'] < 1.1
  assert metrics(blurred)['checkerboard_share_ratio'] < 1


def test_checks_its_inputs():
  real = mnist32(10)
  with pytest.raises(ValueError, match=r'\[N, H, W, C\]'):
    checkerboard.checkerboard_metrics(real[0], real)
  with pytest.raises(ValueError, match='artefact frequencies differ'):
    checkerboard.checkerboard_metrics(real[:, :28, :28], real)


def test_memory_does_not_grow_with_the_images(tmp_path):
  """A memory-mapped set streams through batches; the estimate is one batch."""
  path = tmp_path / 'images.npy'
  images = np.lib.format.open_memmap(path, 'w+', np.uint8, (3000, SIZE, SIZE, 1))
  images[:] = mnist32(1000).repeat(3, axis=0)
  images.flush()
  mapped = np.load(path, mmap_mode='r')
  expected = checkerboard.mean_spectrum(mnist32(1000))
  np.testing.assert_allclose(checkerboard.mean_spectrum(mapped), expected, rtol=1e-9)
  shape = (64, 64, 3)
  small = evaluator.checkerboard_estimate(1000, shape, 5000).bytes
  assert evaluator.checkerboard_estimate(100_000, shape, 10**7).bytes == small
  assert small == checkerboard.workspace_bytes(shape) < 1 << 30


def test_the_evaluate_command_scores_a_trained_run(tiny_digits_workdir, capsys):
  workdir = tiny_digits_workdir
  config = rundir.load_config(workdir)
  assert 'checkerboard' in evaluator.available_metrics(config)[0]  # In 'auto'.
  evaluate.main([f'--workdir={workdir}', '--num_samples=300', '--metrics=checkerboard'])
  out = capsys.readouterr().out
  with open(os.path.join(workdir, 'eval', f'report_step_{NUM_STEPS}.json')) as f:
    report = json.load(f)
  metrics = report['metrics']
  assert set(metrics) == {
    'checkerboard_spike_ratio',
    'checkerboard_share',
    'checkerboard_real_share',
    'checkerboard_share_ratio',
  }
  assert set(report['descriptions']) == set(metrics)
  assert report['details']['checkerboard']['period'] == 4  # 16x16 from 4x4.
  assert 'memory: checkerboard about ' in out
  assert f'checkerboard_spike_ratio: {metrics["checkerboard_spike_ratio"]:.4g}' in out
  # The same numbers as the library's, from the same samples and real images.
  real = loader.load_data(config, workdir)
  assert metrics['checkerboard_real_share'] == pytest.approx(
    checkerboard.share(checkerboard.mean_spectrum(real), 4)
  )
  assert metrics['checkerboard_share_ratio'] == pytest.approx(
    metrics['checkerboard_share'] / metrics['checkerboard_real_share']
  )
  assert all(np.isfinite(v) and v > 0 for v in metrics.values())
