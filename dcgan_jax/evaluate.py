"""Scores of a trained generator that the literature can compare with.

  python -m dcgan_jax.evaluate --workdir=W [--num_samples=10000] \
      [--metrics=auto|classifier,inception,memorization,checkerboard] \
      [--inception_weights=PATH] [--seed=0] [--num_z_seeds=1]

Loads W's config and latest checkpoint, draws `num_samples` images G(z) (z
from `seed`, independent of the training keys; BatchNorm as the sample tool
uses it, config.sample_batchnorm), quantises them to uint8 like saved images,
and computes:

- 'classifier' (labelled data sets: 'digits', 'mnist', 'idx:DIR', ...): a
  small CNN trained here on the real training images and labels at W's size
  and channels, cached in W/eval/classifier/. classifier_fd is the Frechet
  distance between its penultimate-layer features of the samples and of the
  real training images; class_fractions, missing_classes, mean_confidence
  read its predictions (and W/eval/class_coverage_step_<step>.png draws the
  class shares). Offline; comparable between runs on the same data set, size
  and channels (the fingerprint), not with papers' FID.
- 'inception': FID, KID and IS with pytorch-fid's Inception-v3 weights (see
  dcgan_jax.evaluation.inception), against the real training images; their statistics
  are computed once and cached in W/eval/ with a fingerprint.
- 'memorization': the nearest training images of (at most 2,000) samples in
  pixel space and in D's feature space (dcgan_jax.evaluation.d_features), as PNGs of
  each sample beside its neighbours and histograms of sample-to-train
  against train-to-train distances (dcgan_jax.evaluation.memorization).
- 'checkerboard' (any data set; offline): checkerboard artefacts of
  stride-2 upsampling (dcgan_jax.evaluation.checkerboard). The samples'
  power spectrum over the real training images', at the frequencies of the
  periodic patterns k doublings can leave against around them:
  checkerboard_spike_ratio, 1.0 for no more periodic spikes than real
  images; and the share of power at those frequencies for samples and real
  images, and their ratio.

'auto' (the default) is every metric that can run here: 'classifier' where
the data set has labels, 'inception' where the weights file is present,
'memorization' always, 'checkerboard' wherever the image size is made by
stride-2 doublings. `--num_z_seeds=K` scores K independent sets of
samples and reports mean and standard deviation; a workdir of several GANs
(config.num_seeds) is scored GAN by GAN, with mean and spread over them.

Writes W/eval/report_step_<step>.json and the scalars ('eval/...') to
TensorBoard in W/eval, at the checkpoint's step; only process 0 writes.
"""

from collections.abc import Sequence

from dcgan_jax import cli
from dcgan_jax.core import rundir
from dcgan_jax.evaluation import evaluator, memory

COMMAND = cli.Command('evaluate', __doc__)
COMMAND.path('workdir', None, 'Training workdir (one GAN or several).')
COMMAND.integer('num_samples', 10_000, 'Samples scored per z seed.', lower_bound=10)
COMMAND.string(
  'metrics',
  'auto',
  f"Comma-separated, of {list(evaluator.METRICS)}; 'auto': all that can run here.",
)
COMMAND.path(
  'inception_weights', None, "pytorch-fid's .pth file (default: see README)."
)
COMMAND.integer('seed', 0, 'Seed of the first set of z.')
COMMAND.integer(
  'num_z_seeds',
  1,
  'Score num_samples for each of the z seeds seed, seed + 1, ...; report their '
  'mean and standard deviation.',
  lower_bound=1,
)
COMMAND.enum('generator', 'auto', rundir.GENERATORS, rundir.GENERATOR_HELP)
COMMAND.float(
  'memory_limit_gb',
  None,
  'Refuse (in one line) a metric whose estimated peak memory exceeds this '
  '(default: the memory available now).',
)
COMMAND.required('workdir')


def _evaluate(args) -> None:
  metrics = [m.strip() for m in args.metrics.split(',') if m.strip()]
  limit = args.memory_limit_gb
  with cli.log_to_stderr(memory.logger):  # Each metric's estimate, before it runs.
    report = evaluator.evaluate(
      args.workdir,
      num_samples=args.num_samples,
      metrics=metrics,
      seeds=range(args.seed, args.seed + args.num_z_seeds),
      inception_weights=args.inception_weights,
      memory_limit=None if limit is None else int(limit * 2**30),
      generator=args.generator,
    )
  print(evaluator.summary(report))
  print(f'Report: {evaluator.report_path(args.workdir, report)}')


def main(argv: Sequence[str]) -> None:
  COMMAND.run(_evaluate, argv)


if __name__ == '__main__':
  main(cli.main_argv())
