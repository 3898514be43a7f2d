"""Do generated digits look like digits? An SVM fit on real ones decides.

  python -m dcgan_jax.digits_classifier --samples=s.npz [--reference=mnist]

See `dcgan_jax.evaluation.digits_svm`.
"""

from collections.abc import Sequence

import numpy as np

from dcgan_jax import cli
from dcgan_jax.evaluation import digits_svm
from dcgan_jax.util import files

COMMAND = cli.Command('digits_classifier', __doc__)
COMMAND.path('samples', None, '.npz with `images` (python -m dcgan_jax.sample).')
COMMAND.enum(
  'reference',
  'digits',
  ('digits', 'mnist'),
  "Real digits the SVM is fit on: scikit-learn's, or the MNIST files.",
)
COMMAND.path('mnist_dir', digits_svm.MNIST_DIR, 'MNIST IDX files (--reference=mnist).')
COMMAND.required('samples')


def _classify(args) -> None:
  try:
    with files.open(args.samples, 'rb') as f:
      data = np.load(f, allow_pickle=False)
      if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError('not an .npz archive')
      with data:
        images = data['images']
  except (OSError, KeyError, ValueError, EOFError) as e:
    raise ValueError(
      f'--samples={args.samples} is not an .npz with an `images` array '
      f'({type(e).__name__}: {e}); write one with `python -m dcgan_jax.sample '
      '--output=samples.npz`.'
    ) from e
  result = digits_svm.recognise(
    images, digits_svm.fit_classifier(args.reference, args.mnist_dir)
  )
  print(f'{len(images)} samples: {result}')
  print(
    'PASS' if result.passes() else 'FAIL',
    '(all 10 classes, none > 25%, mean confidence >= 0.8)',
  )


def main(argv: Sequence[str]) -> None:
  COMMAND.run(_classify, argv)


if __name__ == '__main__':
  main(cli.main_argv())
