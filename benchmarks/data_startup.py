"""Times start-up to data ready: N processes (jax.distributed on localhost)
each calling `loader.load_data`, as `launch.py` does before training.

  python benchmarks/data_startup.py --dataset=folder:/tmp/images --processes=2

Starts the processes together, with a fresh workdir (no cache), and prints
one line:

  data_startup processes=... wall_s=... load_s=... decodes=... num_images=...

wall_s: from starting the processes to the last one holding the images
(Python, JAX and TensorFlow imports included). load_s: the seconds each
process spent in `load_data`. decodes: how many times each process ran the
decoding pipeline (with several processes, only process 0 should).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--dataset', required=True, help='config.dataset')
  parser.add_argument('--processes', type=int, default=2)
  parser.add_argument('--image_size', type=int, default=32)
  parser.add_argument('--num_channels', type=int, default=3)
  parser.add_argument('--cache', default='memory', help='config.cache')
  parser.add_argument('--workdir', default='', help='default: a new temporary one')
  # Set by the launcher for each process.
  parser.add_argument('--coordinator', default='')
  parser.add_argument('--process_id', type=int, default=-1)
  return parser.parse_args()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _launch(args) -> None:
  workdir = args.workdir or tempfile.mkdtemp(prefix='dcgan_jax_startup_')
  port = _free_port()
  env = dict(
    os.environ,
    PYTHONPATH=REPO,
    JAX_PLATFORMS='cpu',
    XLA_FLAGS='--xla_force_host_platform_device_count=1',
    TF_CPP_MIN_LOG_LEVEL='2',
  )
  common = [
    sys.executable,
    os.path.abspath(__file__),
    f'--dataset={args.dataset}',
    f'--processes={args.processes}',
    f'--image_size={args.image_size}',
    f'--num_channels={args.num_channels}',
    f'--cache={args.cache}',
    f'--workdir={workdir}',
    f'--coordinator=localhost:{port}',
  ]
  logs = tempfile.mkdtemp(prefix='dcgan_jax_startup_logs_')
  start = time.time()
  procs = []
  for i in range(args.processes):  # Output to files: a full pipe would block.
    with (
      open(os.path.join(logs, f'stdout{i}'), 'w') as out,
      open(os.path.join(logs, f'stderr{i}'), 'w') as err,
    ):
      procs.append(
        subprocess.Popen(
          [*common, f'--process_id={i}'], cwd=REPO, env=env, stdout=out, stderr=err
        )
      )
  for i, p in enumerate(procs):
    if p.wait():
      sys.exit(f'Process {i} failed; its log: {os.path.join(logs, f"stderr{i}")}')
  reports = []
  for i in range(args.processes):
    with open(os.path.join(logs, f'stdout{i}')) as f:
      reports.append(json.loads(f.read().splitlines()[-1]))
  load_s = ','.join(f'{r["load_s"]:.1f}' for r in reports)
  decodes = ','.join(str(r['decodes']) for r in reports)
  print(
    f'data_startup processes={args.processes} '
    f'wall_s={max(r["ready"] for r in reports) - start:.1f} '
    f'load_s={load_s} decodes={decodes} '
    f'num_images={reports[0]["num_images"]} dataset={args.dataset} '
    f'cache={args.cache} workdir={workdir}',
    flush=True,
  )


def _work(args) -> None:
  """One process: load the data as training does, then report."""
  import jax

  from configs import default
  from dcgan_jax.data import input_pipeline, loader

  if args.processes > 1:
    jax.distributed.initialize(args.coordinator, args.processes, args.process_id)
  decodes = []
  build = input_pipeline._build_array

  def counted(**kwargs):
    decodes.append(1)
    return build(**kwargs)

  input_pipeline._build_array = counted
  config = default.get_config()
  config.dataset = args.dataset
  config.image_size = args.image_size
  config.num_channels = args.num_channels
  config.cache = args.cache
  start = time.perf_counter()
  images = loader.load_data(config, args.workdir)
  load_s = time.perf_counter() - start
  report = dict(
    ready=time.time(), load_s=load_s, decodes=len(decodes), num_images=len(images)
  )
  print(json.dumps(report), flush=True)


if __name__ == '__main__':
  arguments = _parse_args()
  if arguments.process_id < 0:
    _launch(arguments)
  else:
    _work(arguments)
