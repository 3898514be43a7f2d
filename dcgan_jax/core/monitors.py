"""GAN health during training: D winning outright, samples collapsing.

Both are the classic failure modes of DCGAN training. Neither stops the
run; each logs a warning and writes a TensorBoard scalar, so a long run
shows when it went wrong.
"""

import numpy as np
from absl import logging


def diversity(images: np.ndarray) -> float:
  """Mean pairwise L2 distance between images (any shape [N, ...], N >= 2)."""
  x = np.asarray(images, np.float64).reshape(len(images), -1)
  squared = np.sum(x * x, axis=1)
  dist2 = squared[:, None] + squared[None, :] - 2.0 * x @ x.T
  n = len(x)
  return float(np.sqrt(np.maximum(dist2, 0.0)).sum() / (n * (n - 1)))


class GANMonitors:
  """Watches the logged D outputs and the fixed-z sample grid.

  D wins outright when mean D(x) > 1 - eps and mean D(G(z)) < eps for
  `d_wins_window` consecutive log intervals: G's gradients then vanish.
  Samples collapse when the diversity of the fixed-z samples falls below
  `collapse_ratio` times that of real images: G maps many z to one image.
  An untrained G's samples are all alike too, so the collapse warning waits
  for a warm-up: it fires once the samples have been diverse (ratio at or
  above the threshold) at least once, or from step `collapse_warmup_steps`
  on, and never at step 0. The diversity scalar is returned at every step.
  """

  def __init__(
    self,
    real_images: np.ndarray,
    *,
    d_wins_window: int,
    collapse_ratio: float,
    eps: float = 0.01,
    collapse_warmup_steps: int = 1000,
    probabilities: bool = True,
  ):
    self._real_diversity = diversity(real_images)
    self._window = d_wins_window
    self._collapse_ratio = collapse_ratio
    self._eps = eps
    self._d_wins_since = None
    self._intervals = 0
    self._warmup_steps = collapse_warmup_steps
    self._was_diverse = False  # The samples' ratio reached the threshold once.
    # d_real / d_fake are probabilities (loss 'bce'); for the other losses
    # they are scores without a "wins outright" threshold.
    self._probabilities = probabilities

  def on_log(self, step: int, summary: dict[str, float]) -> dict[str, float]:
    if not self._probabilities:
      return {}
    wins = summary['d_real'] > 1 - self._eps and summary['d_fake'] < self._eps
    if not wins:
      self._intervals, self._d_wins_since = 0, None
    else:
      self._intervals += 1
      self._d_wins_since = self._d_wins_since or step
      if self._intervals == self._window:
        logging.warning(
          'Discriminator wins outright since step %d (mean D(x) %.3f, mean '
          'D(G(z)) %.3f): G gets almost no gradient. Consider a smaller D '
          'learning rate, label smoothing (config.real_label=0.9) or resuming '
          'from an earlier checkpoint.',
          self._d_wins_since,
          summary['d_real'],
          summary['d_fake'],
        )
    return {'monitor/d_wins': float(self._intervals >= self._window)}

  def on_samples(self, step: int, images: np.ndarray) -> dict[str, float]:
    """`images` in [-1, 1] (as the real ones). Returns the diversity ratio."""
    ratio = diversity(images) / max(self._real_diversity, 1e-12)
    if ratio >= self._collapse_ratio:
      self._was_diverse = True
    warmed_up = step > 0 and (self._was_diverse or step >= self._warmup_steps)
    if ratio < self._collapse_ratio and warmed_up:
      logging.warning(
        'Possible mode collapse at step %d: the fixed-z samples are %.2f times '
        'as diverse as real images (threshold %.2f).',
        step,
        ratio,
        self._collapse_ratio,
      )
    return {'monitor/sample_diversity': ratio}
