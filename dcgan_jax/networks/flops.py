"""Counting a model's FLOPs from its architecture.

`forward_flops` traces a function to a jaxpr and adds up its convolutions and
matrix products, 2 FLOPs per multiply-add, counting only products with real
(not zero-inserted) inputs. Elementwise work (BatchNorm, activations,
the optimizer) is left out, as in the usual model-FLOPs convention.

`train_step_flops` turns the forward counts of G and D into the FLOPs of
one DCGAN step, with a backward pass costing twice its forward pass
(input and weight gradients):

  G forward + backward                              3 F_G
  D update: D forward + backward on real and fake   2 x 3 F_D
  G update: D forward on fake + input gradient      2 F_D
                                           total    3 F_G + 8 F_D
"""

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.extend import core as jex_core

_CONV = 'conv_general_dilated'
_DOT = 'dot_general'


def _eqn_flops(eqn) -> float:
  name = eqn.primitive.name
  if name == _DOT:
    (lhs_contract, _), _ = eqn.params['dimension_numbers']
    lhs_shape = eqn.invars[0].aval.shape
    contracted = np.prod([lhs_shape[d] for d in lhs_contract], dtype=np.float64)
    return 2.0 * np.prod(eqn.outvars[0].aval.shape, dtype=np.float64) * contracted
  if name == _CONV:
    dn = eqn.params['dimension_numbers']
    rhs_shape = eqn.invars[1].aval.shape
    in_per_group = rhs_shape[dn.rhs_spec[1]]
    window = np.prod([rhs_shape[d] for d in dn.rhs_spec[2:]], dtype=np.float64)
    # With input dilation only 1 in prod(lhs_dilation) taps meets real input.
    dilation = np.prod(eqn.params['lhs_dilation'], dtype=np.float64)
    out = np.prod(eqn.outvars[0].aval.shape, dtype=np.float64)
    return 2.0 * out * in_per_group * window / dilation
  return 0.0


def _jaxpr_flops(jaxpr) -> float:
  total = 0.0
  for eqn in jaxpr.eqns:
    total += _eqn_flops(eqn)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else (param,):
        if isinstance(sub, jex_core.ClosedJaxpr):
          total += _jaxpr_flops(sub.jaxpr)
        elif isinstance(sub, jex_core.Jaxpr):
          total += _jaxpr_flops(sub)
  return total


def forward_flops(fn: Callable[..., Any], *args: Any) -> float:
  """FLOPs of the convolutions and matrix products in `fn(*args)`."""
  return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def model_flops(generator, discriminator, g_variables, d_variables, batch: int, z_dim):
  """(F_G, F_D): forward FLOPs of G and D for a batch of `batch` examples."""
  z = jax.ShapeDtypeStruct((batch, z_dim), np.float32)
  f_g = forward_flops(lambda v, z: generator.apply(v, z, train=False), g_variables, z)
  x = jax.eval_shape(lambda v, z: generator.apply(v, z, train=False), g_variables, z)
  f_d = forward_flops(
    lambda v, x: discriminator.apply(v, x, train=False), d_variables, x
  )
  return f_g, f_d


def train_step_flops(f_g: float, f_d: float) -> float:
  """FLOPs of one D + G step from the forward counts (see the module doc)."""
  return 3.0 * f_g + 8.0 * f_d
