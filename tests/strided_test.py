"""The fast stride-2 layers equal flax's, in value and in both gradients."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from dcgan_jax.core import state as gan_state
from dcgan_jax.networks import flops, models, strided

TOLERANCE = 1e-5  # Relative to the largest magnitude of each compared array.


def assert_close(got, want, what):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape, what
  scale = np.abs(want).max()
  error = np.abs(got - want).max() / scale
  assert error <= TOLERANCE, f'{what}: relative error {error:.2e}'


def compare_layers(fast, reference, x):
  """Same parameters, same output, same gradients w.r.t. input and params."""
  variables = reference.init(jax.random.key(1), x)
  fast_vars = fast.init(jax.random.key(1), x)
  assert jax.tree.structure(fast_vars) == jax.tree.structure(variables)
  assert jax.tree.map(jnp.shape, fast_vars) == jax.tree.map(jnp.shape, variables)
  y_ref, vjp_ref = jax.vjp(reference.apply, variables, x)
  y_fast, vjp_fast = jax.vjp(fast.apply, variables, x)
  assert_close(y_fast, y_ref, 'forward')
  cotangent = jax.random.normal(jax.random.key(2), y_ref.shape)
  (dvars_ref, dx_ref), (dvars_fast, dx_fast) = vjp_ref(cotangent), vjp_fast(cotangent)
  assert_close(dx_fast, dx_ref, 'input gradient')
  for name in ('kernel', 'bias'):
    assert_close(dvars_fast['params'][name], dvars_ref['params'][name], name)


# Every (kernel, input size) of a stride-2 layer in the models: the 'dcgan'
# family at 16..128 px (sizes 4..64 and 8..128, shown here up to 32: the
# index arithmetic does not depend on the size beyond that), and the 28x28
# archs (7 <-> 14 <-> 28, kernel 5).
CONV_CASES = [(k, s) for k in (4, 5) for s in (8, 16, 32)] + [(5, 28), (5, 14)]
TRANSPOSE_CASES = [(k, s) for k in (4, 5) for s in (4, 8, 16)] + [(5, 7), (5, 14)]


# Few fine-grid channels (images) take the kernel gradient's patch path.
@pytest.mark.parametrize('channels', [2, 5])
@pytest.mark.parametrize('kernel, size', CONV_CASES)
def test_strided_conv_equals_flax_conv(kernel, size, channels):
  x = jax.random.normal(jax.random.key(0), (3, size, size, channels))
  init = nn.initializers.normal(0.5)
  compare_layers(
    strided.StridedConv(7, kernel, kernel_init=init),
    nn.Conv(7, (kernel, kernel), strides=2, padding='SAME', kernel_init=init),
    x,
  )


@pytest.mark.parametrize('features', [2, 7])
@pytest.mark.parametrize('kernel, size', TRANSPOSE_CASES)
def test_strided_transpose_conv_equals_flax_conv_transpose(kernel, size, features):
  x = jax.random.normal(jax.random.key(0), (3, size, size, 5))
  init = nn.initializers.normal(0.5)
  compare_layers(
    strided.StridedTransposeConv(features, kernel, kernel_init=init),
    nn.ConvTranspose(
      features, (kernel, kernel), strides=(2, 2), padding='SAME', kernel_init=init
    ),
    x,
  )


def test_transposed_output_is_twice_the_input():
  x = jnp.ones((1, 7, 7, 2))
  layer = strided.StridedTransposeConv(3, 5)
  assert layer.apply(layer.init(jax.random.key(0), x), x).shape == (1, 14, 14, 3)


MODEL_CASES = [
  ('dcgan', 32, 4),
  ('dcgan', 32, 5),
  ('dcgan', 16, 4),
  ('tf_tutorial', 28, 5),
  ('conv28', 28, 5),
]


def filled_like(abstract, seed):
  """Arrays of the shapes in `abstract`, drawn with numpy: kernels, biases and
  BatchNorm shifts N(0, 0.02^2), BatchNorm scales N(1, 0.02^2), variances 1.

  Any values serve to compare two implementations on the same variables, and
  compiling init's RNG is the slowest part of the whole-model test on CPU.
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'var':
      return np.ones(leaf.shape, leaf.dtype)
    values = 0.02 * rng.standard_normal(leaf.shape) + (name == 'scale')
    return values.astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)


@pytest.mark.parametrize('arch, size, kernel', MODEL_CASES)
def test_whole_models_agree_across_conv_impls(arch, size, kernel):
  """Checkpoints are interchangeable: one set of variables, both impls."""
  config = default.get_config().model
  config.arch, config.kernel_size = arch, kernel
  config.g_width, config.d_width = 64, 8
  built = {}
  for impl in ('phases', 'xla'):
    config.conv_impl = impl
    built[impl] = models.create_models(config, image_size=size, num_channels=3)
  z = jax.random.uniform(jax.random.key(0), (4, config.z_dim), minval=-1.0)
  x = jax.random.uniform(jax.random.key(1), (4, size, size, 3), minval=-1.0)
  declared = {
    impl: (
      jax.eval_shape(g.init, jax.random.key(2), z),
      jax.eval_shape(d.init, jax.random.key(3), x),
    )
    for impl, (g, d) in built.items()
  }
  # The same variables: names, shapes and dtypes.
  assert declared['phases'] == declared['xla']
  g_vars = filled_like(declared['xla'][0], seed=2)
  d_vars = filled_like(declared['xla'][1], seed=3)

  def g_loss(g, params):
    out, _ = g.apply(
      {**g_vars, 'params': params}, z, train=True, mutable=['batch_stats']
    )
    return jnp.sum(out * x)

  def d_loss(d, params, images):
    logits, _ = d.apply(
      {**d_vars, 'params': params},
      images,
      train=True,
      mutable=['batch_stats'],
      rngs={'dropout': jax.random.key(4)},
    )
    return jnp.sum(logits * jnp.arange(4.0))

  def gradients(g, d, g_params, d_params, images):
    return (
      jax.grad(functools.partial(g_loss, g))(g_params),
      jax.grad(functools.partial(d_loss, d), argnums=(0, 1))(d_params, images),
    )

  results = {}
  for impl, (g, d) in built.items():
    # Compiled as in training: one program per impl.
    results[impl] = jax.jit(functools.partial(gradients, g, d))(
      g_vars['params'], d_vars['params'], x
    )
  for name, got, want in zip(
    ('G', 'D params', 'D input'),
    (results['phases'][0], *results['phases'][1]),
    (results['xla'][0], *results['xla'][1]),
    strict=True,
  ):
    for (path, a), b in zip(
      jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True
    ):
      assert_close(a, b, f'{name} {jax.tree_util.keystr(path)}')


def test_auto_picks_phases_on_cpu():
  assert jax.default_backend() == 'cpu'
  assert models.resolve_conv_impl('auto') == 'phases'
  with pytest.raises(ValueError, match='conv_impl'):
    models.resolve_conv_impl('cudnn')


def test_flop_count_of_the_reference_model():
  """The PyTorch reference DCGAN (64x64, ngf = ndf = 64), counted by hand."""
  config = default.get_config().model
  config.g_width, config.d_width, config.kernel_size = 512, 64, 4
  config.conv_impl = 'xla'
  g, d = models.create_models(config, image_size=64, num_channels=3)
  g_vars = jax.eval_shape(g.init, jax.random.key(0), jnp.zeros((1, 100)))
  d_vars = jax.eval_shape(d.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  f_g, f_d = flops.model_flops(g, d, g_vars, d_vars, batch=64, z_dim=100)
  # 2 x batch x sum over layers of (input pixels or output pixels) x k^2 x in x out.
  g_layers = [(1, 100, 16 * 512)] + [
    (s * s, c, c // 2) for s, c in ((4, 512), (8, 256), (16, 128))
  ]
  hand_g = 2 * 64 * (sum(p * i * o * (16 if p > 1 else 1) for p, i, o in g_layers))
  hand_g += 2 * 64 * 32 * 32 * 16 * 64 * 3
  hand_d = (
    2
    * 64
    * (
      32 * 32 * 16 * 3 * 64
      + 16 * 16 * 16 * 64 * 128
      + 8 * 8 * 16 * 128 * 256
      + 4 * 4 * 16 * 256 * 512
      + 4 * 4 * 512
    )
  )
  assert (f_g, f_d) == (hand_g, hand_d)
  assert flops.train_step_flops(f_g, f_d) == 3 * hand_g + 8 * hand_d


@pytest.mark.parametrize('conv_impl', ['phases', 'xla'])
def test_bfloat16_compute_keeps_float32_state(conv_impl):
  config = default.get_config()
  config.image_size, config.num_channels = 16, 3
  config.model.g_width, config.model.d_width = 32, 8
  config.model.kernel_size, config.model.conv_impl = 4, conv_impl
  config.global_batch_size = 8
  outputs = {}
  for dtype in ('float32', 'bfloat16'):
    config.model.compute_dtype = dtype
    state = gan_state.initial_state(config)
    for leaf in jax.tree.leaves(state):
      assert leaf.dtype in (jnp.float32, jnp.int32), dtype
    g, d = models.create_models(config.model, image_size=16, num_channels=3)
    z = models.sample_z(jax.random.key(0), 8, config.model.z_dim, 'uniform')

    @jax.jit  # One program: op-by-op bfloat16 on CPU is slow.
    def forward_and_d_grads(state, g=g, d=d, z=z):
      fake, g_stats = g.apply(
        {'params': state.g_params, 'batch_stats': state.g_batch_stats},
        z,
        train=True,
        mutable=['batch_stats'],
      )
      logits, d_stats = d.apply(
        {'params': state.d_params, 'batch_stats': state.d_batch_stats},
        fake,
        train=True,
        mutable=['batch_stats'],
      )

      def d_mean(params):
        return d.apply(
          {'params': params, 'batch_stats': state.d_batch_stats},
          fake,
          train=True,
          mutable=['batch_stats'],
        )[0].mean()

      return fake, g_stats, logits, d_stats, jax.grad(d_mean)(state.d_params)

    fake, g_stats, logits, d_stats, grads = forward_and_d_grads(state)
    assert fake.dtype == logits.dtype == jnp.float32
    for leaf in jax.tree.leaves((g_stats, d_stats, grads)):
      assert leaf.dtype == jnp.float32
    outputs[dtype] = (fake, logits)
  # bfloat16 keeps 8 bits of mantissa: close to float32, not equal.
  for got, want in zip(outputs['bfloat16'], outputs['float32'], strict=True):
    assert not np.array_equal(got, want)
    np.testing.assert_allclose(got, want, atol=0.05)
