"""DCGAN in JAX/Flax, in layers that import only downwards:

- commands: `python -m dcgan_jax.<command>` (sample, evaluate, export,
  visualize, linear_probe, digits_classifier, reproduce) and `cli`, their
  command line;
- the training loop: `train` (and `ensemble`, the GANs of one launch);
- `evaluation`: scores of a generator, handed what it scores;
- `core` (state, step, run directory, G -> images) and `data`;
- `networks` (Flax modules, kernels) and `util` (files, figures, errors).
"""

from dcgan_jax.util import clu_without_tf as _clu_without_tf

_clu_without_tf.install()
