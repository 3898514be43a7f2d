"""The exported generator: self-contained, and equal to the in-process one."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import digits as digits_config
from dcgan_jax import export, models, sample, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run in a fresh interpreter in which `import dcgan_jax` fails.
LOADER = """
import json, sys
sys.modules['dcgan_jax'] = None  # Any import of dcgan_jax now raises.
import numpy as np
from jax import export
out, z_path = sys.argv[1], sys.argv[2]
with open(out + '/generator.jaxexport', 'rb') as f:
  generator = export.deserialize(f.read())
with open(out + '/signature.json') as f:
  signature = json.load(f)
z = np.load(z_path)
assert z.shape[1] == signature['z_dim']
images = np.asarray(generator.call(z))
odd = np.asarray(generator.call(z[:3]))  # Another batch size, same function.
np.savez(z_path + '.out.npz', images=images, odd=odd)
print('loaded', sorted(m for m, v in sys.modules.items() if m.split('.')[0] == 'dcgan_jax' and v))
"""


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  config = digits_config.get_config()
  config.data_dir = str(tmp_path_factory.mktemp('tfds'))
  config.image_size = 16
  config.model.g_width = 32
  config.model.d_width = 8
  config.global_batch_size = 16
  config.num_train_steps = 20
  config.checkpoint_every_steps = 20
  config.sample_every_steps = 20
  config.num_sample_images = 4
  workdir = str(tmp_path_factory.mktemp('digits16'))
  train.train_and_evaluate(config, workdir)
  return workdir


def in_process_images(workdir, z):
  config = train.load_config(workdir)
  generator, _ = models.create_models(
    config.model, image_size=config.image_size, num_channels=config.num_channels
  )
  state = train.restore_latest(workdir, config)
  variables = {'params': state.g_params, 'batch_stats': state.g_batch_stats}
  return np.asarray(sample.generate(generator, variables, z, batchnorm='running'))


@pytest.mark.parametrize('conv_impl', ['xla', 'phases'])
def test_exported_generator_runs_without_dcgan_jax(workdir, tmp_path, conv_impl):
  output = export.export_workdir(
    workdir,
    str(tmp_path / 'export'),
    platforms=['cpu', 'cuda', 'tpu'],
    conv_impl=conv_impl,
  )
  with open(os.path.join(output, 'signature.json')) as f:
    signature = json.load(f)
  assert signature['step'] == 20 and signature['z_dim'] == 100
  assert signature['image_shape'] == ['batch', 16, 16, 1]
  assert signature['platforms'] == ['cpu', 'cuda', 'tpu']
  assert train.load_config(output).to_dict() == train.load_config(workdir).to_dict()

  z = np.asarray(models.sample_z(jax.random.key(5), 8, 100, 'uniform'))
  np.save(tmp_path / 'z.npy', z)
  result = subprocess.run(
    [sys.executable, '-c', LOADER, output, str(tmp_path / 'z.npy')],
    cwd=tmp_path,  # Not the repository: nothing importable by accident.
    env=dict(os.environ, PYTHONPATH=''),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'loaded []' in result.stdout
  with np.load(tmp_path / 'z.npy.out.npz') as data:
    images, odd = data['images'], data['odd']
  expected = in_process_images(workdir, z)
  assert images.shape == (8, 16, 16, 1) and images.dtype == np.float32
  np.testing.assert_allclose(images, expected, atol=1e-5, rtol=0)
  np.testing.assert_allclose(odd, images[:3], atol=1e-6, rtol=0)
  assert np.abs(images[0] - images[1]).max() > 1e-3  # Depends on z.


def test_export_replaces_an_older_artefact_whole(workdir, tmp_path):
  output = str(tmp_path / 'export')
  os.makedirs(output)
  with open(os.path.join(output, 'stale.txt'), 'w') as f:
    f.write('from an older export')
  export.main([f'--workdir={workdir}', f'--output={output}', '--platforms=cpu'])
  assert sorted(os.listdir(output)) == [
    'config.json',
    'generator.jaxexport',
    'signature.json',
  ]
  assert not [n for n in os.listdir(tmp_path) if '.tmp-' in n]


def test_export_errors_say_what_to_change(workdir, tmp_path):
  with pytest.raises(SystemExit, match='platforms must be some of'):
    export.main([f'--workdir={workdir}', '--platforms=cpu,gpu'])
  with pytest.raises(SystemExit, match='not a dcgan_jax workdir'):
    export.main([f'--workdir={tmp_path}'])
