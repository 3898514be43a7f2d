"""The MNIST write-ups side by side: DCGAN, the TensorFlow tutorial, the
28x28 DCGAN and the MLP GAN, trained on the same data for the same number
of images, scored by the same classifier.

  python benchmarks/mnist_presets.py --output=/tmp/mnist_presets [--images=128000]

Trains configs/mnist_files.py (32x32; with ema_decay=0.99, so the same run
also gives its EMA's scores), mnist_tf_tutorial.py, mnist_conv28.py and
mnist_mlp.py (28x28) on the 10,000 MNIST test digits, each for --images
images (steps = images / its batch size), in OUTPUT/<preset>; an existing
run is resumed, not retrained. Then draws 5,000 samples of each (z of
evaluation seed 0, BatchNorm running averages) and scores them with one
classifier, the evaluation classifier of the 28x28 data (32x32 samples are
resized to 28x28 with TensorFlow's bilinear resize, as the input pipeline
resizes): classifier FD against the 28x28 real digits, missing classes,
mean confidence; and with the scikit-learn SVM of `digits_classifier`
(MNIST reference). Writes OUTPUT/table.md, OUTPUT/results.json and
OUTPUT/grids.png (a row of samples per preset).
"""

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

PRESETS = ('mnist_files', 'mnist_tf_tutorial', 'mnist_conv28', 'mnist_mlp')
NUM_SAMPLES = 5000


def _train(preset: str, workdir: str, images: int) -> float:
  """Trains (or resumes) one preset for `images` images; its wall seconds."""
  import importlib

  config = importlib.import_module(f'configs.{preset}').get_config()
  steps = images // config.global_batch_size
  extra = ['--config.ema_decay=0.99'] if preset == 'mnist_files' else []
  command = [
    sys.executable,
    'launch.py',
    f'--config=configs/{preset}.py',
    f'--workdir={workdir}',
    f'--config.num_train_steps={steps}',
    f'--config.checkpoint_every_steps={steps}',
    f'--config.sample_every_steps={steps}',
    *extra,
  ]
  start = time.time()
  with open(f'{workdir}.log', 'a') as log:
    subprocess.run(command, cwd=REPO, stdout=log, stderr=log, check=True)
  return time.time() - start


def _score(runs: dict[str, str], output: str) -> dict[str, dict]:
  import numpy as np
  import tensorflow as tf

  from dcgan_jax.core import generate, rundir
  from dcgan_jax.data import loader
  from dcgan_jax.evaluation import digits_svm, evaluator
  from dcgan_jax.util import figures

  reference = rundir.load_config(runs['mnist_tf_tutorial'])  # 28x28 data.
  real = loader.load_data(reference, runs['mnist_tf_tutorial'])
  svm = digits_svm.fit_classifier('mnist')
  results, rows = {}, []
  for name, workdir in runs.items():
    generators = ['raw', 'ema'] if name == 'mnist_files' else ['raw']
    for which in generators:
      run = rundir.load_run(workdir, which)
      fn = generate.generator_fn(run.config, run.g_variables)
      images = generate.images(fn, generate.eval_z(run.config, NUM_SAMPLES))
      if images.shape[1] != 28:
        resized = tf.image.resize(images.astype(np.float32), (28, 28), 'bilinear')
        images = np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)
      metrics, _ = evaluator.classifier_metrics(
        output, reference, images, real, evaluator.DEFAULT_TRAINING
      )
      recognition = digits_svm.recognise(images, svm)
      key = name if which == 'raw' else f'{name} (EMA 0.99)'
      results[key] = {
        'step': run.step,
        'classifier_fd': metrics['classifier_fd'],
        'missing_classes': metrics['missing_classes'],
        'mean_confidence': metrics['mean_confidence'],
        'svm': str(recognition),
      }
      rows.append(images[:16])
  grid = figures.make_grid(np.concatenate(rows), num_cols=16)
  figures.save_png(grid, os.path.join(output, 'grids.png'))
  return results


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--output', required=True)
  parser.add_argument('--images', type=int, default=128_000)
  args = parser.parse_args()
  os.makedirs(args.output, exist_ok=True)
  runs, seconds = {}, {}
  for preset in PRESETS:
    runs[preset] = os.path.join(args.output, preset)
    seconds[preset] = round(_train(preset, runs[preset], args.images))
    print(f'{preset}: trained in {seconds[preset]} s', flush=True)
  results = _score(runs, args.output)
  lines = [
    '| preset | steps | classifier FD | missing classes | mean confidence | SVM |',
    '|---|---|---|---|---|---|',
  ]
  for name, r in results.items():
    lines.append(
      f'| {name} | {r["step"]} | {r["classifier_fd"]:.2f} | {r["missing_classes"]} '
      f'| {r["mean_confidence"]:.3f} | {r["svm"]} |'
    )
  table = '\n'.join(lines)
  with open(os.path.join(args.output, 'table.md'), 'w') as f:
    f.write(table + '\n')
  with open(os.path.join(args.output, 'results.json'), 'w') as f:
    json.dump({'results': results, 'train_seconds': seconds}, f, indent=2)
  print(table)


if __name__ == '__main__':
  main()
