"""The picture tools on a small trained digits run: files, and what they show."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from runs import NUM_STEPS, SAMPLE_EVERY_STEPS

from dcgan_jax import visualize
from dcgan_jax.core import generate
from dcgan_jax.data import loader
from dcgan_jax.evaluation import d_features
from dcgan_jax.networks import models


@pytest.fixture(scope='module')
def workdir(tiny_digits_workdir):
  return tiny_digits_workdir


@pytest.fixture(scope='module')
def run(workdir):
  return visualize.load_run(workdir)


def frames_of(path):
  with Image.open(path) as gif:
    frames = []
    for i in range(gif.n_frames):
      gif.seek(i)
      frames.append(np.asarray(gif.convert('RGB')))
  return frames


def test_reference_batchnorm_renders_each_z_on_its_own(run):
  config, variables = run.config, run.g_variables
  z_ref = generate.reference_z(config.seed, config.model.z_dim, config.model.z_dist)
  reference = generate.generator_fn(config, variables, batchnorm='reference')
  batch = generate.generator_fn(config, variables, batchnorm='batch')
  running = generate.generator_fn(config, variables, batchnorm='running')
  # On the reference batch itself it is batch-statistics mode ...
  np.testing.assert_allclose(reference(z_ref), batch(z_ref), atol=1e-5)
  # ... and any z is drawn independently of the rest of its batch.
  z = z_ref[:8] * -1.0
  np.testing.assert_allclose(reference(z[:1]), reference(z)[:1], atol=1e-6)
  np.testing.assert_allclose(running(z[:1]), running(z)[:1], atol=1e-6)
  assert np.abs(batch(z[:2])[:1] - batch(z)[:1]).max() > 1e-3  # Batch-dependent.
  assert np.abs(reference(z) - running(z)).max() > 1e-2  # Visibly different.


def test_sheet_and_arithmetic(run, tmp_path):
  png, npz = visualize.sheet(run, str(tmp_path), num=20, seed=3)
  with np.load(npz) as data:
    z, images = data['z'], data['images']
  assert z.shape == (20, 100) and images.shape == (20, 16, 16, 1)
  np.testing.assert_array_equal(images, run.generate(z))
  with Image.open(png) as image:
    assert image.width >= 5 * 64 and image.height >= 4 * 64

  (path,) = visualize.arithmetic(
    run, str(tmp_path), a='1,2,3', b=[4, 5, 6], c='7,8,9', sheet_seed=3, sheet_size=20
  )
  assert os.path.basename(path) == 'arithmetic_1-2-3_minus_4-5-6_plus_7-8-9.png'
  with Image.open(path) as image:
    assert image.width >= 4 * 64 and image.height >= 5 * 64
  with pytest.raises(ValueError, match='sheet numbers in 0..19'):
    visualize.arithmetic(run, str(tmp_path), a='1,2,30', b='4', c='7', sheet_size=20)


def test_arithmetic_uses_mean_z_of_each_concept(run, tmp_path, monkeypatch):
  drawn = []
  original = visualize.Run.generate

  def spy(self, z):
    drawn.append(np.asarray(z))
    return original(self, z)

  monkeypatch.setattr(visualize.Run, 'generate', spy)
  visualize.arithmetic(
    run,
    str(tmp_path),
    a='0,1,2',
    b='3,4,5',
    c='6,7,8',
    sheet_size=10,
    num_perturbed=4,
    noise=0.1,
  )
  z = run.z(0, visualize._SHEET_KEY_TAG, 10)
  means = np.stack([z[0:3].mean(0), z[3:6].mean(0), z[6:9].mean(0)])
  np.testing.assert_allclose(drawn[3], means, atol=1e-6)
  result = drawn[4]
  np.testing.assert_allclose(result[0], means[0] - means[1] + means[2], atol=1e-6)
  offsets = result[1:] - result[0]
  assert offsets.shape == (4, 100) and np.abs(offsets).max() <= 0.1 + 1e-6
  assert np.abs(offsets).max() > 0.05


def test_interpolations(run, tmp_path):
  files = visualize.interpolate(run, str(tmp_path), pairs=2, steps=5, seed=1)
  assert [os.path.basename(f) for f in files] == [
    'interpolate_linear.png',
    'interpolate_slerp.png',
    'interpolate.gif',
  ]
  frames = frames_of(files[2])
  assert len(frames) == 2 * 5 - 1  # The walks join up.
  assert not np.array_equal(frames[0], frames[4])  # The walk moves.
  ends = run.z(1, visualize._WALK_KEY_TAG, 3)
  t = np.linspace(0, 1, 5)
  for walk in (visualize.lerp, visualize.slerp):
    path = walk(ends[0], ends[1], t)
    np.testing.assert_allclose(path[0], ends[0], atol=1e-6)
    np.testing.assert_allclose(path[-1], ends[1], atol=1e-6)
  # Slerp: equal angles between steps, norms interpolated linearly.
  path = visualize.slerp(ends[0], ends[1], t).astype(np.float64)
  unit = path / np.linalg.norm(path, axis=1, keepdims=True)
  angles = np.arccos(np.clip(np.sum(unit[1:] * unit[:-1], axis=1), -1, 1))
  np.testing.assert_allclose(angles, angles[0], rtol=1e-4)
  norms = np.linalg.norm(path, axis=1)
  np.testing.assert_allclose(np.diff(norms), np.diff(norms)[0], atol=1e-4)
  assert np.linalg.norm(visualize.lerp(ends[0], ends[1], t)[2]) < norms[2]


def test_training_movie(workdir, tmp_path):
  (path,) = visualize.movie(workdir, str(tmp_path), fps=4)
  frames = frames_of(path)
  grids = sorted(os.listdir(os.path.join(workdir, 'samples')))
  steps = range(0, NUM_STEPS + 1, SAMPLE_EVERY_STEPS)
  assert grids == [f'step_{s:07d}.png' for s in steps] and len(grids) >= 3
  assert len(frames) == len(grids)
  with Image.open(path) as gif:
    gif.seek(len(grids) - 1)
    assert gif.info['duration'] > 1000  # The last frame is held.
  assert not np.array_equal(frames[0], frames[-1])
  with pytest.raises(ValueError, match='at least two'):
    visualize.movie(str(tmp_path), str(tmp_path))


def test_guided_leaky_relu_gradient():
  lyr = models.LayerSettings(guided_backprop=True)
  x = jnp.array([-2.0, -0.5, 0.5, 2.0])
  g = jnp.array([1.0, -1.0, 1.0, -1.0])
  _, vjp = jax.vjp(lyr.leaky_relu, x)
  np.testing.assert_array_equal(vjp(g)[0], [0.0, 0.0, 1.0, 0.0])
  np.testing.assert_array_equal(lyr.leaky_relu(x), models.LayerSettings().leaky_relu(x))


def test_map_statistics():
  ramp = np.tile(np.arange(16, dtype=np.float64), (16, 1))[None, :, :, None]
  image = (ramp * 16).astype(np.uint8)
  same = visualize.map_statistics(-ramp, image)  # |map| is the image.
  assert same['image_correlation'] == pytest.approx(1.0)
  assert same['roughness'] < 0.02  # A smooth ramp.
  checker = np.indices((16, 16)).sum(0) % 2 * 2.0 - 1.0
  rough = visualize.map_statistics(checker[None, :, :, None], image)
  assert rough['roughness'] == pytest.approx(2.0)
  noise = np.random.default_rng(0).normal(size=(4, 64, 64, 1))
  stats = visualize.map_statistics(noise, np.zeros((4, 64, 64, 1), np.uint8))
  assert stats['roughness'] == pytest.approx(1.0, abs=0.05)
  assert stats['image_correlation'] == 0.0  # A constant image: no correlation.


def test_guided_backprop_trained_against_random(run, tmp_path):
  from dcgan_jax.data import input_pipeline

  images = loader.load_data(run.config, run.workdir)[:64]
  units, image_idx, maps = visualize.guided_backprop_maps(
    run.config, run.d_variables, images, layer=-1, units=4, images_per_unit=2
  )
  assert maps.shape == (4, 2, 16, 16, 1) and image_idx.shape == (4, 2)
  assert len(set(units.tolist())) == 4
  assert (np.abs(maps).reshape(8, -1).max(axis=1) > 0).all()
  # The layer's strongest units, each with its strongest images first.
  d = d_features.discriminator_for(run.config)
  x = jnp.asarray(input_pipeline.scale_images(images))
  acts = d_features.layer_activations(d, run.d_variables, x)[-1]
  strongest = np.asarray(acts.max(axis=(1, 2)))  # [N, C]
  per_unit = strongest.max(axis=0)
  assert per_unit[units].min() >= np.delete(per_unit, units).max() - 1e-5
  for j, unit in enumerate(units):
    top = strongest[image_idx[j], unit]
    assert top[0] == pytest.approx(strongest[:, unit].max(), rel=1e-5)
    assert top[0] >= top[1] - 1e-5

  png, report_path = visualize.guided_backprop(
    run, str(tmp_path), units=4, images_per_unit=2, num_images=64
  )
  with open(report_path) as f:
    report = json.load(f)
  for key in ('trained', 'random'):
    assert len(report[key]['units']) == 4
    assert -1 <= report[key]['image_correlation'] <= 1
    assert 0 < report[key]['roughness'] <= 2
  with Image.open(png) as image:
    assert image.width > 2 * 4 * 64  # Trained and random D side by side.
    assert image.height > 4 * 64  # A row per unit.


def test_batchnorm_modes(run, tmp_path):
  png, report_path = visualize.batchnorm_modes(run, str(tmp_path), num=8, small_batch=2)
  with open(report_path) as f:
    report = json.load(f)
  assert report['running'] == {'mean_abs_diff': 0.0, 'max_abs_diff': 0}
  z = jnp.asarray(run.z(0, visualize._SHEET_KEY_TAG, 8))
  batch = generate.generator_fn(run.config, run.g_variables, batchnorm='batch')
  pairs = np.concatenate(
    [generate.to_uint8(batch(z[i : i + 2])) for i in range(0, 8, 2)]
  )
  diff = np.abs(pairs.astype(np.int16) - run.generate(z))
  assert report['batch of 2']['mean_abs_diff'] == pytest.approx(diff.mean())
  assert report['batch of 2']['max_abs_diff'] == diff.max() > 0
  for mode in ('batch', 'reference'):
    assert report[mode]['max_abs_diff'] > 0
  with Image.open(png) as image:
    assert image.width > 5 * 3 * 64  # Three modes, batches of 2, difference.
  with pytest.raises(ValueError, match='small_batch must be in 1..8'):
    visualize.batchnorm_modes(run, str(tmp_path), num=8, small_batch=9)


def test_gallery_and_command_line(run, workdir, tmp_path, capsys):
  out = str(tmp_path / 'gallery')
  visualize.main(['gallery', f'--workdir={workdir}', f'--output={out}'])
  printed = capsys.readouterr().out.split()
  with open(os.path.join(out, 'gallery.json')) as f:
    assert json.load(f)['files'] == printed
  names = sorted(os.path.basename(p) for p in printed)
  assert names == sorted(
    [
      'batchnorm_modes.png',
      'batchnorm_modes.json',
      'sheet_seed0.png',
      'sheet_seed0.npz',
      'interpolate_linear.png',
      'interpolate_slerp.png',
      'interpolate.gif',
      'arithmetic_0-1-2_minus_3-4-5_plus_6-7-8.png',
      'training.gif',
      'guided_backprop_layer-1.png',
      'guided_backprop_layer-1.json',
    ]
  )
  with pytest.raises(SystemExit, match='needs --a, --b and --c'):
    visualize.main(['arithmetic', f'--workdir={workdir}', f'--output={out}'])
  with pytest.raises(SystemExit, match='not a dcgan_jax workdir'):
    visualize.main(['sheet', f'--workdir={tmp_path}'])
