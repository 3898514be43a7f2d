"""The GAN objectives `config.loss` selects, as functions of D's outputs.

  'bce'            the paper's: D minimises BCE(D(x), real_label) +
                   BCE(D(G(z)), 0); G the non-saturating BCE(D(G(z)), 1).
  'hinge'          D: mean relu(1 - D(x)) + mean relu(1 + D(G(z)));
                   G: -mean D(G(z)) (Lim & Ye 2017; Miyato et al. 2018).
  'least_squares'  LSGAN with targets a=0, b=c=1 (Mao et al. 2017):
                   D: (mean (D(x) - 1)^2 + mean D(G(z))^2) / 2;
                   G: mean (D(G(z)) - 1)^2 / 2.
  'wgan_gp'        D: mean D(G(z)) - mean D(x) + gp_weight * mean over
                   examples of (||grad_x D(x_hat)|| - 1)^2, x_hat = e x +
                   (1 - e) G(z), e ~ U[0, 1] per example; G: -mean D(G(z))
                   (Gulrajani et al. 2017).

D outputs are float32 [B] (logits for 'bce', scores otherwise). Each loss is
a mean over this device's examples; the step averages gradients over
devices, which equals the loss over the global batch.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

LOSSES = ('bce', 'hinge', 'least_squares', 'wgan_gp')


def _bce(logits: jax.Array, target: float) -> jax.Array:
  return optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, target))


def d_loss(
  loss: str, real: jax.Array, fake: jax.Array, *, real_label: float = 1.0
) -> jax.Array:
  """D's loss on its outputs for real and generated images (without the
  gradient penalty of 'wgan_gp', see `gradient_penalty`)."""
  if loss == 'bce':
    return _bce(real, real_label).mean() + _bce(fake, 0.0).mean()
  if loss == 'hinge':
    return jax.nn.relu(1.0 - real).mean() + jax.nn.relu(1.0 + fake).mean()
  if loss == 'least_squares':
    return 0.5 * (jnp.square(real - 1.0).mean() + jnp.square(fake).mean())
  if loss == 'wgan_gp':
    return fake.mean() - real.mean()
  raise ValueError(f'loss={loss!r} is not one of {LOSSES}.')


def g_loss(loss: str, fake: jax.Array) -> jax.Array:
  """G's loss on D's outputs for its images."""
  if loss == 'bce':
    return _bce(fake, 1.0).mean()
  if loss in ('hinge', 'wgan_gp'):
    return -fake.mean()
  if loss == 'least_squares':
    return 0.5 * jnp.square(fake - 1.0).mean()
  raise ValueError(f'loss={loss!r} is not one of {LOSSES}.')


def gradient_penalty(
  critic: Callable[[jax.Array], jax.Array],
  real: jax.Array,
  fake: jax.Array,
  mix: jax.Array,
) -> jax.Array:
  """mean over examples of (||d critic(x_hat) / d x_hat|| - 1)^2.

  x_hat = e * real + (1 - e) * fake with e = `mix` [B] (drawn from U[0, 1]
  per example); `critic` maps images [B, H, W, C] to scores [B] and must not
  mix examples (no BatchNorm). The norm is optax's safe_norm, whose
  gradient is finite where the gradient is 0.
  """
  e = mix.reshape(-1, 1, 1, 1).astype(jnp.float32)
  x_hat = e * real + (1.0 - e) * fake
  grads = jax.grad(lambda x: critic(x).sum())(x_hat)
  norms = optax.safe_norm(grads.reshape(grads.shape[0], -1), 0.0, axis=1)
  return jnp.square(norms - 1.0).mean()


def d_outputs(loss: str, scores: jax.Array) -> jax.Array:
  """What `d_real` / `d_fake` log: mean probability for 'bce', mean score
  otherwise."""
  return (jax.nn.sigmoid(scores) if loss == 'bce' else scores).mean()
