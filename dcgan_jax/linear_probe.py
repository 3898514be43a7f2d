"""How good are D's features? The DCGAN paper's L2-SVM on them (its section 5.1).

  python -m dcgan_jax.linear_probe --workdir=W --probe=mnist_1000 \
      [--num_labels=N] [--seed=S] [--data_dir=DIR]

See `dcgan_jax.evaluation.probe` for the protocol, the presets and the cost.
"""

import logging as std_logging
import sys
from collections.abc import Sequence

from dcgan_jax import cli
from dcgan_jax.evaluation import probe

COMMAND = cli.Command('linear_probe', __doc__)
COMMAND.path('workdir', None, 'Training workdir (a single GAN).')
COMMAND.string('probe', None, f'The protocol, one of {sorted(probe.PROBES)}.')
COMMAND.integer(
  'num_labels', None, "Labelled images (default: the probe's).", lower_bound=1
)
COMMAND.integer('seed', 0, 'Which labelled images are drawn.')
COMMAND.path('data_dir', None, "TFDS data_dir (default: the workdir config's).")
COMMAND.required('workdir', 'probe')


def _probe(args) -> None:
  if not probe.progress.handlers:
    handler = std_logging.StreamHandler(sys.stderr)
    handler.setFormatter(std_logging.Formatter('probe: %(message)s'))
    probe.progress.addHandler(handler)
    probe.progress.setLevel(std_logging.INFO)
  report = probe.run_probe(
    args.workdir,
    args.probe,
    num_labels=args.num_labels,
    seed=args.seed,
    data_dir=args.data_dir,
  )
  print(probe.summary(report))
  print(f'Report: {probe.report_path(args.workdir, report)}')


def main(argv: Sequence[str]) -> None:
  COMMAND.run(_probe, argv)


if __name__ == '__main__':
  main(cli.main_argv())
