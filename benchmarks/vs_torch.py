"""Side-by-side: this project's train step against a PyTorch DCGAN step.

  python benchmarks/vs_torch.py --torch_python=/path/to/venv/bin/python \
      --torch_script=/path/to/torch_dcgan_step.py --batch=64 --rounds=5

PyTorch is not a dependency: point --torch_python at an interpreter that has
it (e.g. a separate venv with `pip install torch==2.13.0 numpy`, CPU build)
and --torch_script at a script that times one PyTorch step and prints
`images_per_s=<float>` (the reference DCGAN step: 4x4 kernels, ngf=ndf=64,
BCE, Adam 2e-4 / 0.5, one D update on a real and a fake batch, then one G
update reusing the fake batch).

The two alternate, one process each, `--rounds` times, so that both see the
same machine state; the line printed last gives each side's median
images/s and their ratio (> 1: this project is faster).
"""

import argparse
import math
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _images_per_s(command: list[str]) -> float:
  out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
  match = re.search(r'images_per_s=([0-9.]+)', out)
  if not match:
    raise RuntimeError(f'No images_per_s in the output of {command}:\n{out}')
  return float(match.group(1))


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--torch_python', required=True)
  p.add_argument('--torch_script', required=True)
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--image_size', type=int, default=64)
  p.add_argument('--kernel', type=int, default=4)
  p.add_argument('--channels', type=int, default=3)
  p.add_argument('--ngf', type=int, default=64, help="G's last hidden width.")
  p.add_argument('--ndf', type=int, default=64, help="D's first width.")
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument(
    '--config',
    default=os.path.join(HERE, 'torch_reference.py'),
    help="This project's config for the same model.",
  )
  a = p.parse_args()
  # The reference's G has ngf * 2^(n-1) channels at 4x4 (n = log2(size / 4)).
  g_width = a.ngf * 2 ** (int(math.log2(a.image_size // 4)) - 1)
  torch_cmd = [
    a.torch_python,
    a.torch_script,
    f'--image_size={a.image_size}',
    f'--batch={a.batch}',
    f'--kernel={a.kernel}',
    f'--channels={a.channels}',
    f'--ngf={a.ngf}',
    f'--ndf={a.ndf}',
    f'--steps={a.steps}',
  ]
  jax_cmd = [
    sys.executable,
    os.path.join(HERE, 'train_step.py'),
    f'--config={a.config}',
    f'--config.image_size={a.image_size}',
    f'--config.global_batch_size={a.batch}',
    f'--config.model.kernel_size={a.kernel}',
    f'--config.num_channels={a.channels}',
    f'--config.model.g_width={g_width}',
    f'--config.model.d_width={a.ndf}',
    f'--steps={a.steps}',
  ]
  torch_runs, jax_runs = [], []
  for r in range(a.rounds):
    torch_runs.append(_images_per_s(torch_cmd))
    jax_runs.append(_images_per_s(jax_cmd))
    print(
      f'round {r + 1}: torch {torch_runs[-1]:.2f} images/s, '
      f'dcgan_jax {jax_runs[-1]:.2f} images/s',
      flush=True,
    )
  t, j = statistics.median(torch_runs), statistics.median(jax_runs)
  print(
    f'median images/s: torch {t:.2f}, dcgan_jax {j:.2f}; ratio dcgan_jax/torch '
    f'{j / t:.2f} (batch {a.batch}, {a.image_size}x{a.image_size}x{a.channels}, '
    f'ngf {a.ngf}, ndf {a.ndf}, kernel {a.kernel}; {a.rounds} rounds of '
    f'{a.steps} steps)'
  )


if __name__ == '__main__':
  main()
