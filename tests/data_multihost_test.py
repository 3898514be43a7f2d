"""Two processes (jax.distributed on localhost) load a data set: decoded once.

Process 0 decodes the folder and shares the array in WORKDIR/data_cache;
process 1 reads that copy and decodes nothing, whether the workdir is a
local directory both see or a gs:// URL (then into its own local cache).
With a workdir each process has to itself, process 1 has to decode too, and
gets the same array. Run as a script, this file is one such process.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import uuid

import jax
import numpy as np
import pytest
from PIL import Image

from configs import folder as folder_config
from dcgan_jax.data import input_pipeline, loader
from dcgan_jax.util import files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('images')
  rng = np.random.default_rng(0)
  for i in range(40):
    pixels = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).resize((20 + i % 7, 24), Image.Resampling.BILINEAR)
    os.makedirs(root / f'{i // 10}', exist_ok=True)
    image.save(root / f'{i // 10}' / f'{i:02d}.png')
  return root


def _load_in_two_processes(tmp_path, dataset, workdirs, cache, cache_dirs):
  """Runs this file as processes 0 and 1; their reports and arrays."""
  port = _free_port()
  env = dict(
    os.environ,
    PYTHONPATH=REPO,
    XLA_FLAGS='--xla_force_host_platform_device_count=1',
    JAX_PLATFORMS='cpu',
    TF_CPP_MIN_LOG_LEVEL='2',
  )
  procs = []
  for i in range(2):
    cwd = tmp_path / f'cwd{i}'
    cwd.mkdir(parents=True)
    # Output to files: a full pipe would block a process.
    out, err = open(tmp_path / f'stdout{i}', 'w'), open(tmp_path / f'stderr{i}', 'w')
    procs.append(
      subprocess.Popen(
        [
          sys.executable,
          os.path.abspath(__file__),
          f'--coordinator=localhost:{port}',
          f'--process_id={i}',
          f'--dataset={dataset}',
          f'--workdir={workdirs[i]}',
          f'--cache={cache}',
          f'--cache_dir={cache_dirs[i]}',
          f'--out={tmp_path / f"images{i}.npy"}',
        ],
        cwd=cwd,
        env=env,
        stdout=out,
        stderr=err,
      )
    )
    out.close()  # The process has its own copies.
    err.close()
  for p in procs:
    p.wait(timeout=240)
  logs = [(tmp_path / f'stderr{i}').read_text()[-3000:] for i in range(2)]
  assert [p.returncode for p in procs] == [0, 0], '\n-----\n'.join(logs)
  reports = [
    json.loads((tmp_path / f'stdout{i}').read_text().splitlines()[-1]) for i in range(2)
  ]
  arrays = [np.load(tmp_path / f'images{i}.npy') for i in range(2)]
  for i in range(2):  # Nothing local is named after a URL.
    assert os.listdir(tmp_path / f'cwd{i}') == []
  return reports, arrays


def _expected(dataset):
  return input_pipeline.load_images(dataset=dataset, image_size=16, num_channels=3)


def test_shared_local_workdir_process_1_reads_what_process_0_decoded(
  tmp_path, image_folder
):
  workdir = str(tmp_path / 'run')
  dataset = f'folder:{image_folder}'
  reports, arrays = _load_in_two_processes(
    tmp_path, dataset, [workdir] * 2, 'memory', [''] * 2
  )
  assert [r['decodes'] for r in reports] == [1, 0]
  expected = _expected(dataset)
  for images in arrays:
    np.testing.assert_array_equal(images, expected)
  shared = sorted(os.listdir(os.path.join(workdir, 'data_cache')))
  assert [os.path.splitext(name)[1] for name in shared] == ['.json', '.npy']
  # A second launch: process 0 finds its copy shared already.
  reports, arrays = _load_in_two_processes(
    tmp_path / 'again', dataset, [workdir] * 2, 'disk', [''] * 2
  )
  assert [r['decodes'] for r in reports] == [1, 0]
  assert reports[1]['file'] == os.path.join(workdir, 'data_cache', shared[1])
  np.testing.assert_array_equal(arrays[1], expected)


def test_gs_workdir_process_1_downloads_into_its_own_cache(
  tmp_path, image_folder, gcs_bucket
):
  workdir = f'{gcs_bucket}/{uuid.uuid4().hex[:8]}/run'
  dataset = f'folder:{image_folder}'
  cache_dirs = [str(tmp_path / f'cache{i}') for i in range(2)]
  reports, arrays = _load_in_two_processes(
    tmp_path, dataset, [workdir] * 2, 'disk', cache_dirs
  )
  assert [r['decodes'] for r in reports] == [1, 0]
  assert os.path.dirname(reports[1]['file']) == cache_dirs[1]
  expected = _expected(dataset)
  for images in arrays:
    np.testing.assert_array_equal(images, expected)
  shared = files.listdir(files.join(workdir, 'data_cache'))
  assert [os.path.splitext(name)[1] for name in shared] == ['.json', '.npy']


def test_unshared_workdirs_both_decode_the_same(tmp_path, image_folder):
  workdirs = [str(tmp_path / f'host{i}' / 'run') for i in range(2)]
  dataset = f'folder:{image_folder}'
  reports, arrays = _load_in_two_processes(
    tmp_path, dataset, workdirs, 'memory', [''] * 2
  )
  assert [r['decodes'] for r in reports] == [1, 1]
  np.testing.assert_array_equal(arrays[0], arrays[1])


# --------------------------------------------------------------------------
# One process of the tests above.


def _worker():
  parser = argparse.ArgumentParser()
  for flag in ('coordinator', 'process_id', 'dataset', 'workdir', 'cache'):
    parser.add_argument(f'--{flag}', required=True)
  parser.add_argument('--cache_dir', default='')
  parser.add_argument('--out', required=True)
  args = parser.parse_args()
  jax.distributed.initialize(args.coordinator, 2, int(args.process_id))
  decodes = []
  build = input_pipeline._build_array

  def counted(**kwargs):
    decodes.append(1)
    return build(**kwargs)

  input_pipeline._build_array = counted
  config = folder_config.get_config()
  config.dataset = args.dataset
  config.image_size = 16
  config.cache = args.cache
  config.cache_dir = args.cache_dir or None
  images = loader.load_data(config, args.workdir)
  np.save(args.out, images)
  report = {'decodes': len(decodes), 'file': getattr(images, 'filename', None)}
  print(json.dumps(report), flush=True)


if __name__ == '__main__':
  _worker()
