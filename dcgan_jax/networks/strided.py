"""Stride-2 convolutions and transposed convolutions with fast gradients.

DCGAN is made of two operations: D's stride-2 convolution and G's stride-2
('fractionally-strided') transposed convolution, both with 'SAME' padding.
Each pass of each (forward, input gradient, kernel gradient) can be written
in terms of the same three computations between a *fine* grid (D's input,
G's output) and a *coarse* one at half its size, linked by tap t of the
kernel as

    fine index = 2 * coarse index + shift[t]   (in each spatial dimension)

  coarse_from_fine: Y[c] = sum_t F[2c + shift[t]] W[t]   a stride-2 conv
  fine_from_coarse: F[f] = sum_t Y[(f - shift[t]) / 2] W[t]^T
                    four stride-1 convs, one per output phase f mod 2
  kernel_grad:      dW[t] = sum_c Y[c]^T F[2c + shift[t]]   one product a tap
                    (one product with all k x k taps' patches when F has
                    few channels, e.g. an RGB image)

Neither the transposed convolution nor any gradient multiplies by inserted
zeros (XLA's own lowering does; on CPU its transposed-conv kernel gradient
is one to two orders of magnitude slower). The functions here pick, for each
pass, the formulation that runs fastest on XLA:CPU and are exact up to float
round-off: `tests/strided_test.py` checks every pass against
`flax.linen.Conv` / `flax.linen.ConvTranspose` for every kernel size and
resolution the models use. Parameters keep Flax's layout ([k, k, in, out]).
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_DIMS = ('NHWC', 'HWIO', 'NHWC')


def conv_shifts(kernel: int, in_size: int) -> tuple[int, ...]:
  """Shifts of a stride-2 'SAME' convolution: output o reads input 2o + shift."""
  ((pad_lo, _),) = lax.padtype_to_pads((in_size,), (kernel,), (2,), 'SAME')
  return tuple(t - pad_lo for t in range(kernel))


def transpose_shifts(kernel: int) -> tuple[int, ...]:
  """Shifts of `lax.conv_transpose(strides=2, padding='SAME')`.

  Input i reaches output 2i + shift through tap t (lax's transposed conv
  does not flip the kernel; its 'SAME' front padding of the dilated input
  is `pad_a`).
  """
  pad_a = kernel - 1 if kernel < 3 else (kernel + 1) // 2
  return tuple(pad_a - t for t in range(kernel))


def coarse_from_fine(fine: jax.Array, w: jax.Array, shifts, coarse_size: int):
  """Y[c] = sum_t F[2c + shift[t]] W[t]: a stride-2 convolution.

  fine [B, F, F, Cf], w [k, k, Cf, Cc] -> [B, coarse_size, coarse_size, Cc].
  """
  order = sorted(range(len(shifts)), key=lambda t: shifts[t])
  lo, hi = shifts[order[0]], shifts[order[-1]]
  kernel = w[jnp.array(order)][:, jnp.array(order)]
  pad = (-lo, 2 * (coarse_size - 1) + hi - (fine.shape[1] - 1))
  return lax.conv_general_dilated(
    fine, kernel, (2, 2), (pad, pad), dimension_numbers=_DIMS
  )


def _phase_taps(shifts, phase: int) -> tuple[list[int], int]:
  """Taps reaching fine positions 2q + phase, ordered so that tap j reads
  coarse position q + first + j, and `first`."""
  taps = [t for t, s in enumerate(shifts) if (s - phase) % 2 == 0]
  taps.sort(key=lambda t: -shifts[t])
  return taps, (phase - shifts[taps[0]]) // 2


def fine_from_coarse(coarse: jax.Array, w: jax.Array, shifts, fine_size: int):
  """F[f] = sum_t Y[(f - shift[t]) / 2] W[t]^T: a transposed convolution.

  coarse [B, C, C, Cc], w [k, k, Cf, Cc] -> [B, fine_size, fine_size, Cf];
  fine_size must be even (every model here doubles or halves sizes).

  Output phase r (fine positions 2q + r) reads coarse positions
  q + first_r + j through its taps j. When both phases have as many taps
  (even k), one stride-1 convolution to 4 x Cf channels computes all four
  (row, column) phases at once, each phase's grid offset by
  first_r - min(first) positions; otherwise four convolutions do.
  """
  if fine_size % 2:
    raise ValueError(f'fine_size must be even, got {fine_size}.')
  half, size, cf = fine_size // 2, coarse.shape[1], w.shape[2]
  w_t = jnp.swapaxes(w, 2, 3)  # [k, k, Cc, Cf]
  phases = [_phase_taps(shifts, r) for r in range(2)]
  (taps_0, first_0), (taps_1, first_1) = phases
  if len(taps_0) == len(taps_1):
    num_taps, start = len(taps_0), min(first_0, first_1)
    offsets = [first_0 - start, first_1 - start]
    out = half + max(offsets)
    kernel = jnp.stack(
      [
        jnp.stack([w_t[jnp.array(th)][:, jnp.array(tw)] for tw in (taps_0, taps_1)], 3)
        for th in (taps_0, taps_1)
      ],
      3,
    )  # [L, L, Cc, 2 (row phase), 2 (column phase), Cf]
    kernel = kernel.reshape(num_taps, num_taps, -1, 4 * cf)
    pad = (-start, out - size + start + num_taps - 1)
    y = lax.conv_general_dilated(
      coarse, kernel, (1, 1), (pad, pad), dimension_numbers=_DIMS
    )
    y = y.reshape(*y.shape[:3], 2, 2, cf)
    rows = []
    for rh in range(2):
      cols = []
      for rw in range(2):
        oh, ow = offsets[rh], offsets[rw]
        cols.append(y[:, oh : oh + half, ow : ow + half, rh, rw])
      rows.append(jnp.stack(cols, axis=3))
  else:
    rows = []
    for taps_h, first_h in phases:
      cols = []
      for taps_w, first_w in phases:
        sub = w_t[jnp.array(taps_h)][:, jnp.array(taps_w)]
        pad = [
          (-first_h, half - size + first_h + len(taps_h) - 1),
          (-first_w, half - size + first_w + len(taps_w) - 1),
        ]
        cols.append(
          lax.conv_general_dilated(coarse, sub, (1, 1), pad, dimension_numbers=_DIMS)
        )
      rows.append(jnp.stack(cols, axis=3))  # [B, half, half, 2, Cf]
  y = jnp.stack(rows, axis=2)  # [B, half, 2, half, 2, Cf]
  return y.reshape(y.shape[0], fine_size, fine_size, cf)


def kernel_grad(fine: jax.Array, coarse: jax.Array, shifts) -> jax.Array:
  """dW[t] = sum_c Y[c]^T F[2c + shift[t]]: one matrix product per tap.

  fine [B, F, F, Cf], coarse [B, C, C, Cc] -> [k, k, Cc, Cf] (the coarse
  operand first runs markedly faster on XLA:CPU).
  """
  k, size = len(shifts), coarse.shape[1]
  if k * k * fine.shape[-1] <= _MAX_PATCH_FEATURES:
    return _kernel_grad_from_patches(fine, coarse, shifts)
  lo = max(0, -min(shifts))
  hi = max(0, 2 * (size - 1) + max(shifts) - (fine.shape[1] - 1))
  padded = jnp.pad(fine, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
  per_tap = []
  for th in range(k):
    for tw in range(k):
      h0, w0 = shifts[th] + lo, shifts[tw] + lo
      window = padded[:, h0 : h0 + 2 * size - 1 : 2, w0 : w0 + 2 * size - 1 : 2]
      per_tap.append(
        lax.dot_general(coarse, window, (((0, 1, 2), (0, 1, 2)), ((), ())))
      )
  return jnp.stack(per_tap).reshape(k, k, coarse.shape[-1], fine.shape[-1])


# Few fine channels (an RGB or grayscale image): one product per tap would
# have 1-3 columns, so gather all k * k taps as features and make one.
_MAX_PATCH_FEATURES = 64


def _kernel_grad_from_patches(fine: jax.Array, coarse: jax.Array, shifts) -> jax.Array:
  """`kernel_grad` as one matrix product with the fine grid's k x k patches."""
  k, size, cf, cc = len(shifts), coarse.shape[1], fine.shape[-1], coarse.shape[-1]
  lo = max(0, -min(shifts))
  hi = max(0, 2 * (size - 1) + max(shifts) - (fine.shape[1] - 1))
  padded = jnp.pad(fine, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
  end = 2 * size - 1
  patches = jnp.concatenate(
    [
      padded[:, sh + lo : sh + lo + end : 2, sw + lo : sw + lo + end : 2]
      for sh in shifts
      for sw in shifts
    ],
    axis=-1,
  )  # [B, size, size, (tap row, tap column, Cf)]
  dw = patches.reshape(-1, k * k * cf).T @ coarse.reshape(-1, cc)
  return jnp.swapaxes(dw.reshape(k, k, cf, cc), 2, 3)


# --- The two layers' operations, with their gradients ---------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d_stride2(x: jax.Array, w: jax.Array, kernel_size: int) -> jax.Array:
  """`lax.conv(x, w, strides=2, padding='SAME')` (NHWC / HWIO)."""
  del kernel_size
  return lax.conv_general_dilated(x, w, (2, 2), 'SAME', dimension_numbers=_DIMS)


def _conv_fwd(x, w, kernel_size):
  return conv2d_stride2(x, w, kernel_size), (x, w)


def _conv_bwd(kernel_size, res, g):
  x, w = res
  shifts = conv_shifts(kernel_size, x.shape[1])
  dx = fine_from_coarse(g, w, shifts, x.shape[1])
  if g.shape[1] >= 16:  # Per-tap products win on large grids, XLA's on small.
    dw = jnp.swapaxes(kernel_grad(x, g, shifts), 2, 3)
  else:
    (dw,) = jax.vjp(
      lambda w: lax.conv_general_dilated(x, w, (2, 2), 'SAME', dimension_numbers=_DIMS),
      w,
    )[1](g)
  return dx, dw


conv2d_stride2.defvjp(_conv_fwd, _conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_transpose2d_stride2(x: jax.Array, w: jax.Array, kernel_size: int) -> jax.Array:
  """`lax.conv_transpose(x, w, strides=2, padding='SAME')` (NHWC / HWIO)."""
  shifts = transpose_shifts(kernel_size)
  return fine_from_coarse(x, jnp.swapaxes(w, 2, 3), shifts, 2 * x.shape[1])


def _transpose_fwd(x, w, kernel_size):
  return conv_transpose2d_stride2(x, w, kernel_size), (x, w)


def _transpose_bwd(kernel_size, res, g):
  x, w = res
  shifts = transpose_shifts(kernel_size)
  w_fc = jnp.swapaxes(w, 2, 3)  # [k, k, out (fine), in (coarse)]
  dx = coarse_from_fine(g, w_fc, shifts, x.shape[1])
  dw = kernel_grad(g, x, shifts)  # [k, k, in (coarse), out (fine)]
  return dx, dw


conv_transpose2d_stride2.defvjp(_transpose_fwd, _transpose_bwd)


# --- Flax modules with nn.Conv / nn.ConvTranspose's parameters -------------


class _Stride2Layer(nn.Module):
  """A stride-2 layer with nn.Conv's parameters: 'kernel' [k, k, in, out], 'bias'."""

  features: int
  kernel_size: int
  use_bias: bool = True
  kernel_init: Callable[..., jax.Array] = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32  # Of the computation; parameters are float32.

  def _apply_kernel(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
    raise NotImplementedError

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param('kernel', self.kernel_init, (k, k, x.shape[-1], self.features))
    y = self._apply_kernel(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias = self.param('bias', nn.initializers.zeros, (self.features,))
      y = y + bias.astype(self.dtype)
    return y


class StridedConv(_Stride2Layer):
  """`nn.Conv(features, (k, k), strides=2, padding='SAME')`, fast gradients."""

  def _apply_kernel(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
    return conv2d_stride2(x, kernel, self.kernel_size)


class StridedTransposeConv(_Stride2Layer):
  """`nn.ConvTranspose(features, (k, k), strides=2, padding='SAME')`.

  The output is exactly twice the input in height and width. Computed as a
  sub-pixel stride-1 convolution (four phase convolutions for odd kernels);
  the gradients are a stride-2 convolution and one matrix product per
  kernel tap.
  """

  def _apply_kernel(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
    return conv_transpose2d_stride2(x, kernel, self.kernel_size)
