"""The exported generator: self-contained, and equal to the in-process one."""

import hashlib
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from runs import NUM_STEPS

from dcgan_jax import export
from dcgan_jax.core import generate, rundir
from dcgan_jax.networks import models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run in a fresh interpreter (`python -S`: no site-packages) whose path holds
# only jax, its dependencies and flatbuffers: what a user installs with
# `pip install jax flatbuffers`.
LOADER = """
import json, sys
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
stdlib = set(sys.stdlib_module_names) | set(sys.builtin_module_names)
top = {m.split('.')[0] for m in sys.modules} - stdlib
# Not packages: Cython's runtime registrations and the build's sysconfig.
top = {m for m in top if not m.startswith('_') and m != 'cython_runtime'}
print('imported', json.dumps(sorted(top)))
"""


def jax_only_site(path):
  """A directory of links to the distributions `pip install jax flatbuffers`
  would install (jax's requirements without extras, recursively), taken
  from this environment."""
  from importlib import metadata

  from packaging.requirements import Requirement
  from packaging.utils import canonicalize_name

  os.makedirs(path)
  todo, seen = ['jax', 'flatbuffers'], set()
  while todo:
    name = canonicalize_name(todo.pop())
    if name in seen:
      continue
    seen.add(name)
    dist = metadata.distribution(name)
    for spec in dist.requires or []:
      req = Requirement(spec)
      if req.marker is None or req.marker.evaluate({'extra': ''}):
        todo.append(req.name)
    for top in {f.parts[0] for f in dist.files if f.parts[0] not in ('..', 'bin')}:
      target = os.path.join(path, top)
      if os.path.exists(dist.locate_file(top)) and not os.path.exists(target):
        os.symlink(dist.locate_file(top), target)
  return sorted(seen)


@pytest.fixture(scope='module')
def workdir(tiny_digits_workdir):
  return tiny_digits_workdir


def in_process_images(workdir, z):
  config = rundir.load_config(workdir)
  generator, _ = models.create_models(
    config.model, image_size=config.image_size, num_channels=config.num_channels
  )
  state = rundir.restore_latest(workdir, config)
  variables = {'params': state.g_params, 'batch_stats': state.g_batch_stats}
  return np.asarray(generate.generate(generator, variables, z, batchnorm='running'))


@pytest.mark.parametrize('conv_impl', ['xla', 'phases'])
def test_exported_generator_runs_with_only_jax(workdir, tmp_path, conv_impl):
  output = export.export_workdir(
    workdir,
    str(tmp_path / 'export'),
    platforms=['cpu', 'cuda', 'tpu'],
    conv_impl=conv_impl,
  )
  with open(os.path.join(output, 'signature.json')) as f:
    signature = json.load(f)
  assert signature['step'] == NUM_STEPS and signature['z_dim'] == 100
  assert signature['image_shape'] == ['batch', 16, 16, 1]
  assert signature['platforms'] == ['cpu', 'cuda', 'tpu']
  assert signature['load_requires'] == [f'jax>={jax.__version__}', 'flatbuffers']
  assert rundir.load_config(output).to_dict() == rundir.load_config(workdir).to_dict()

  z = np.asarray(models.sample_z(jax.random.key(5), 8, 100, 'uniform'))
  np.save(tmp_path / 'z.npy', z)
  site = str(tmp_path / 'site')
  installed = jax_only_site(site)
  assert 'flax' not in installed and 'tensorflow' not in installed
  result = subprocess.run(
    [sys.executable, '-S', '-c', LOADER, output, str(tmp_path / 'z.npy')],
    cwd=tmp_path,  # Not the repository: nothing importable by accident.
    env=dict(os.environ, PYTHONPATH=site),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  imported = set(json.loads(result.stdout.split('imported ', 1)[1]))
  allowed = {n.replace('-', '_') for n in installed}
  assert 'jax' in imported and imported <= allowed, imported - allowed
  with np.load(tmp_path / 'z.npy.out.npz') as data:
    images, odd = data['images'], data['odd']
  expected = in_process_images(workdir, z)
  assert images.shape == (8, 16, 16, 1) and images.dtype == np.float32
  np.testing.assert_allclose(images, expected, atol=1e-5, rtol=0)
  np.testing.assert_allclose(odd, images[:3], atol=1e-6, rtol=0)
  assert np.abs(images[0] - images[1]).max() > 1e-3  # Depends on z.


def test_export_never_deletes_what_it_did_not_write(workdir, tmp_path):
  output = str(tmp_path / 'export')
  os.makedirs(output)
  with open(os.path.join(output, 'notes.txt'), 'w') as f:
    f.write('a user file')
  with pytest.raises(SystemExit, match='already holds other files .*notes.txt'):
    export.main([f'--workdir={workdir}', f'--output={output}', '--platforms=cpu'])
  with pytest.raises(SystemExit, match='already holds other files'):
    export.main([f'--workdir={workdir}', f'--output={workdir}', '--platforms=cpu'])
  assert os.listdir(output) == ['notes.txt']
  assert rundir.restore_latest(workdir, rundir.load_config(workdir)) is not None

  # A previous export is overwritten, file by file, and nothing is left over.
  os.remove(os.path.join(output, 'notes.txt'))
  for _ in range(2):
    export.main([f'--workdir={workdir}', f'--output={output}', '--platforms=cpu'])
  assert sorted(os.listdir(output)) == [
    'config.json',
    'generator.jaxexport',
    'signature.json',
  ]
  with open(os.path.join(output, 'generator.jaxexport'), 'rb') as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  with open(os.path.join(output, 'signature.json')) as f:
    assert json.load(f)['generator_sha256'] == digest


def test_export_errors_say_what_to_change(workdir, tmp_path):
  with pytest.raises(SystemExit, match='platforms must be some of'):
    export.main([f'--workdir={workdir}', '--platforms=cpu,gpu'])
  with pytest.raises(SystemExit, match='not a dcgan_jax workdir'):
    export.main([f'--workdir={tmp_path}'])
