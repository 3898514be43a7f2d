"""Checkerboard artefacts of 'transpose' against 'resize_conv' upsampling.

  python benchmarks/checkerboard.py [--steps=1000] [--num_seeds=2] \
      [--num_samples=2000] [--workdir=/tmp/dcgan_checkerboard] \
      [--output=docs/gallery/checkerboard.png] [--json=PATH]

Trains the digits preset (configs/digits.py: 32x32, 4x4 kernels) twice,
differing only in --config.model.upsample, each run as `--num_seeds` GANs
(training seeds 0, 1, ...), then scores every GAN with the evaluator's
'checkerboard' metric (dcgan_jax/evaluation/checkerboard.py) on
`--num_samples` samples. Prints a line per GAN and a summary line, writes
every figure to `--json` (default WORKDIR/checkerboard.json) and draws
`--output`: per upsampling, samples of the first GAN (each pixel drawn
3x3) and the log relative spectrum (samples' over real images', bright =
more power than real images; the artefact frequencies are the lattice of
multiples of N/8), beside real images.

Launching again on the same --workdir resumes or reuses the trained runs.
"""

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from dcgan_jax.util import xla_cpu  # noqa: E402  (imports no JAX)

xla_cpu.use_project_kernels()  # As launch.py does.

import numpy as np  # noqa: E402

from dcgan_jax.core import generate, rundir  # noqa: E402
from dcgan_jax.data import loader  # noqa: E402
from dcgan_jax.evaluation import checkerboard, evaluator  # noqa: E402
from dcgan_jax.util import figures  # noqa: E402

UPSAMPLES = ('transpose', 'resize_conv')
SCORES = (
  'checkerboard_spike_ratio',
  'checkerboard_share',
  'checkerboard_real_share',
  'checkerboard_share_ratio',
)
GRID = 16  # Samples shown per upsampling.
ZOOM = 3  # Pixels drawn as ZOOM x ZOOM squares.


def train(workdir: str, upsample: str, steps: int, num_seeds: int) -> float:
  """Trains (or resumes) one run of the digits preset; returns the seconds."""
  command = [
    sys.executable,
    'launch.py',
    '--config=configs/digits.py',
    f'--workdir={workdir}',
    f'--config.model.upsample={upsample}',
    f'--config.num_train_steps={steps}',
    f'--config.num_seeds={num_seeds}',
    f'--config.checkpoint_every_steps={steps}',
    f'--config.sample_every_steps={steps}',
  ]
  print(' '.join(command[1:]), flush=True)
  start = time.perf_counter()
  subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
  return time.perf_counter() - start


def first_samples(run: rundir.Run, num: int) -> np.ndarray:
  """uint8 samples of a GAN for the z the evaluator scores (seed 0)."""
  variables = {'params': run.state.g_params, 'batch_stats': run.state.g_batch_stats}
  fn = generate.generator_fn(run.config, variables)
  return generate.images(fn, generate.eval_z(run.config, num))


def relative_spectrum_image(spectrum: np.ndarray, real_spectrum: np.ndarray):
  """uint8 [1, N, N, 1]: log10 of a mean normalised spectrum over the real
  images', centred (zero frequency in the middle), -1..2 -> 0..255."""
  ratio = spectrum / np.maximum(real_spectrum, 1e-12)
  logs = np.fft.fftshift(np.log10(np.maximum(ratio, 1e-12)))
  pixels = np.clip((logs + 1) / 3, 0, 1) * 255
  return np.round(pixels).astype(np.uint8)[None, :, :, None]


def panel(title: str, images: np.ndarray, spectrum: np.ndarray | None):
  """A grid of images (each pixel 3x3) with a title, the spectrum below."""
  images = images.repeat(ZOOM, axis=1).repeat(ZOOM, axis=2)
  grid = figures.labelled_grid(images, num_cols=4, title=title)
  if spectrum is None:
    return grid
  size = grid.width - 8
  factor = max(1, size // spectrum.shape[1])
  big = spectrum.repeat(factor, axis=1).repeat(factor, axis=2)
  caption = 'log10 spectrum / real (-1..2)'
  return figures.stacked([grid, figures.labelled_grid(big, num_cols=1, title=caption)])


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--steps', type=int, default=1000)
  p.add_argument('--num_seeds', type=int, default=2)
  p.add_argument('--num_samples', type=int, default=2000)
  p.add_argument('--workdir', default='/tmp/dcgan_checkerboard')
  p.add_argument(
    '--output', default=os.path.join(REPO, 'docs/gallery/checkerboard.png')
  )
  p.add_argument('--json', default=None)
  a = p.parse_args()
  result = {'steps': a.steps, 'num_seeds': a.num_seeds, 'num_samples': a.num_samples}
  panels, real = [], None
  for upsample in UPSAMPLES:
    workdir = os.path.join(a.workdir, upsample)
    seconds = train(workdir, upsample, a.steps, a.num_seeds)
    report = evaluator.evaluate(
      workdir, num_samples=a.num_samples, metrics=['checkerboard']
    )
    spread = report.get('spread', {})
    values = {
      k: spread[k]['values'] if k in spread else [report['metrics'][k]] for k in SCORES
    }
    runs = rundir.load_runs(workdir)
    if real is None:
      real = loader.load_data(runs[0].config, runs[0].workdir)
      real_spectrum = checkerboard.mean_spectrum(real)
      period = checkerboard.artefact_period(real.shape[1])
      result |= {'num_real_images': len(real), 'period': period}
    per_period = []
    for i, run in enumerate(runs):
      samples = first_samples(run, a.num_samples)  # The evaluator's z.
      spectrum = checkerboard.mean_spectrum(samples)
      ratios = checkerboard.spike_ratios(spectrum, real_spectrum, period)
      per_period.append({str(k): v for k, v in ratios.items()})
      line = ' '.join(f'{k}={values[k][i]:.4g}' for k in SCORES)
      by_period = ' '.join(f'spike_ratio_period{k}={v:.3f}' for k, v in ratios.items())
      print(
        f'upsample={upsample} seed={run.config.seed} {line} {by_period}', flush=True
      )
      if i == 0:
        title = (
          f'{upsample}, seed {run.config.seed}: spike ratio '
          f'{values[SCORES[0]][0]:.2f}, share ratio {values[SCORES[3]][0]:.2f}'
        )
        picture = relative_spectrum_image(spectrum, real_spectrum)
        panels.append(panel(title, samples[:GRID], picture))
    result[upsample] = {
      'train_seconds': round(seconds, 1),
      **values,
      'spike_ratio_per_period': per_period,
    }
  order = np.random.default_rng(0).permutation(len(real))[:GRID]
  panels.append(panel('real training images', real[np.sort(order)], None))
  figures.save_image(figures.side_by_side(panels), a.output)
  path = a.json or os.path.join(a.workdir, 'checkerboard.json')
  with open(path, 'w') as f:
    json.dump(result, f, indent=1)
  t, r = (result[u]['checkerboard_spike_ratio'] for u in UPSAMPLES)
  print(
    f'spike_ratio transpose={np.mean(t):.3f} (seeds {", ".join(f"{v:.3f}" for v in t)}) '
    f'resize_conv={np.mean(r):.3f} (seeds {", ".join(f"{v:.3f}" for v in r)}) '
    f'separated={min(t) > max(r)} figure={a.output} json={path}'
  )


if __name__ == '__main__':
  main()
