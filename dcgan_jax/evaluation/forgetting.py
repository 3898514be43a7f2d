"""Making G forget to draw an object: the paper's section 6.3.1, generalised.

The paper boxed windows by hand in 150 generated bedrooms, fit a logistic
regression that tells from the feature vector of one position of G's
second-highest layer whether it lies inside a window box, and dropped
(zeroed everywhere) the maps with positive weights: G then drew the rooms
without windows, or with other objects in their place. Here:

1. `generator_layers` lists G's hidden layers; `layer_generator` is G with
   one layer's output read and, where asked, some of its maps zeroed, both
   through flax's `intercept_methods` (the generator's code is unchanged).
   A layer's features are what G's next layer receives: the output of its
   BatchNorm (or of the layer itself without one) through a ReLU.
2. `position_samples`: positives are the layer's positions whose cell
   centre lies in an object box (boxes are in image pixels, scaled to the
   layer's resolution; a box too small for any centre gives the cell of its
   own centre); negatives are as many random positions of the same images
   touching no box.
3. `fit_object_maps`: a logistic regression (standardised features) on
   the positions of 3/4 of the images, its accuracy on those of the others;
   the object's maps are those with weight > 0.
4. `effects`: how often a detector finds the object in G's images with and
   without those maps, and how much the images change inside the object's
   boxes and outside them (the rest of the scene).
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dcgan_jax.core import generate
from dcgan_jax.networks import models

Boxes = np.ndarray  # int [K, 4]: (top, left, bottom, right), bottom/right exclusive.
Detector = Callable[[np.ndarray], Boxes]

HELD_OUT = 0.25  # Share of the images whose positions test the regression.


@dataclasses.dataclass(frozen=True)
class Layer:
  """A hidden layer of G: its name (the `--layer` of `visualize forget`),
  the module whose output is read and changed, and its feature shape."""

  name: str
  module: str
  shape: tuple[int, int, int]  # (height, width, maps)


def _generator(config: ml_collections.ConfigDict) -> nn.Module:
  generator, _ = models.create_models(
    config.model, image_size=config.image_size, num_channels=config.num_channels
  )
  return generator


def generator_layers(config: ml_collections.ConfigDict) -> list[Layer]:
  """G's hidden layers with spatial feature maps, from the input side: all
  but the output layer (for the 'dcgan' G: project, up_0, ..., up_{n-2})."""
  generator = _generator(config)
  outputs = []  # (name, output shape) of G's submodules, in calling order.

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    scope = context.module.scope
    if context.method_name == '__call__' and scope and len(scope.path) == 1:
      outputs.append((scope.path[0], out.shape))
    return out

  def apply(z):
    variables = generator.init(jax.random.key(0), z)
    with nn.intercept_methods(record):
      return generator.apply(variables, z)

  jax.eval_shape(apply, jnp.zeros((1, config.model.z_dim), jnp.float32))
  shapes = dict(outputs)
  layers = []
  for name, _ in outputs[:-1]:  # The last one draws the image.
    if name.endswith('_bn') and name[: -len('_bn')] in shapes:
      continue  # Part of its layer.
    module = f'{name}_bn' if f'{name}_bn' in shapes else name
    if len(shapes[module]) == 4:
      layers.append(Layer(name, module, tuple(shapes[module][1:])))
  return layers


def find_layer(config: ml_collections.ConfigDict, name: str | None) -> Layer:
  """G's layer `name`; None: the second-highest (the last hidden layer)."""
  layers = generator_layers(config)
  if not layers:
    raise ValueError(f'model.arch={config.model.arch!r}: G has no spatial layer.')
  if name is None:
    return layers[-1]
  for layer in layers:
    if layer.name == name:
      return layer
  raise ValueError(
    f'--layer={name} is not a layer of this G; use one of '
    f'{", ".join(layer.name for layer in layers)} (the last is the default).'
  )


def layer_generator(
  config: ml_collections.ConfigDict,
  g_variables: dict[str, Any],
  layer: Layer,
  *,
  batchnorm: str = 'running',
) -> Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
  """A jitted (z [B, z_dim], keep [maps]) -> (G(z) in [-1, 1], features
  [B, h, w, maps]) where `layer`'s map m is multiplied by keep[m] (1 keeps
  it, 0 drops it: zero at every position) before G goes on."""
  generator = _generator(config)
  if batchnorm == 'reference':
    z_ref = generate.reference_z(
      config.seed,
      config.model.z_dim,
      config.model.z_dist,
      generate.num_classes(config),
    )
    g_variables = generate.reference_variables(generator, g_variables, z_ref)
    batchnorm = 'running'

  @jax.jit
  def run(z, keep):
    captured = []

    def interceptor(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      scope = context.module.scope
      if (
        context.method_name == '__call__'
        and scope is not None
        and tuple(scope.path) == (layer.module,)
      ):
        out = out * keep.astype(out.dtype)
        captured.append(out)
      return out

    with nn.intercept_methods(interceptor):
      images = generate.generate(generator, g_variables, z, batchnorm=batchnorm)
    return images, jax.nn.relu(captured[0].astype(jnp.float32))

  return run


def keep_maps(num_maps: int, dropped: Sequence[int] = ()) -> np.ndarray:
  """The `keep` argument of `layer_generator`'s fn: 1 for every map but
  the `dropped` ones."""
  mask = np.ones(num_maps, np.float32)
  mask[np.asarray(dropped, np.int64)] = 0.0
  return mask


def draw(
  fn: Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]],
  z: np.ndarray,
  keep: np.ndarray,
  *,
  batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images and float32 features of `layer_generator`'s fn for all z,
  `batch_size` at a time."""
  images, features = [], []
  for i in range(0, len(z), batch_size):
    x, f = fn(jnp.asarray(z[i : i + batch_size], jnp.float32), jnp.asarray(keep))
    images.append(generate.to_uint8(x))
    features.append(np.asarray(f))
  return np.concatenate(images), np.concatenate(features)


def _cell_masks(boxes: Boxes, image_size: int, grid: int):
  """(inside, touching) bool [grid, grid] for one image's boxes: cells whose
  centre lies in a box (at least the cell of each box's centre), and cells
  that overlap a box at all."""
  scale = grid / image_size
  centres = np.arange(grid) + 0.5
  inside = np.zeros((grid, grid), bool)
  touching = np.zeros((grid, grid), bool)
  for top, left, bottom, right in np.asarray(boxes, np.float64).reshape(-1, 4) * scale:
    rows = (centres >= top) & (centres < bottom)
    cols = (centres >= left) & (centres < right)
    if not rows.any() or not cols.any():
      r = min(int((top + bottom) / 2), grid - 1)
      c = min(int((left + right) / 2), grid - 1)
      rows, cols = np.arange(grid) == r, np.arange(grid) == c
    inside |= rows[:, None] & cols[None, :]
    r0, c0 = int(np.floor(top)), int(np.floor(left))
    r1, c1 = int(np.ceil(bottom)), int(np.ceil(right))
    touching[r0 : max(r1, r0 + 1), c0 : max(c1, c0 + 1)] = True
  return inside, touching | inside


def position_samples(
  features: np.ndarray,
  boxes: Sequence[Boxes],
  image_size: int,
  rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(feature vectors [P, maps], labels [P] (1: inside a box), image index
  [P]) for every position inside a box of its image and as many random
  positions touching no box, drawn from the same images."""
  n, grid = features.shape[0], features.shape[1]
  inside = np.zeros((n, grid, grid), bool)
  outside = np.zeros((n, grid, grid), bool)
  for i, image_boxes in enumerate(boxes):
    inside[i], touching = _cell_masks(image_boxes, image_size, grid)
    outside[i] = ~touching
  positives = np.argwhere(inside)
  candidates = np.argwhere(outside)
  count = min(len(positives), len(candidates))
  negatives = candidates[np.sort(rng.choice(len(candidates), count, replace=False))]
  where = np.concatenate([positives, negatives])
  labels = np.concatenate([np.ones(len(positives)), np.zeros(count)]).astype(np.int64)
  return features[where[:, 0], where[:, 1], where[:, 2]], labels, where[:, 0]


@dataclasses.dataclass(frozen=True)
class ObjectMaps:
  """The regression's result: weight per map, the maps with weight > 0,
  its accuracy on held-out images, and the positions it saw."""

  weights: np.ndarray
  dropped: np.ndarray
  train_accuracy: float
  held_out_accuracy: float
  num_train_positions: int
  num_held_out_positions: int

  def summary(self) -> dict[str, Any]:
    """The regression's numbers, for a JSON report."""
    return {
      'held_out_accuracy': self.held_out_accuracy,
      'train_accuracy': self.train_accuracy,
      'train_positions': self.num_train_positions,
      'held_out_positions': self.num_held_out_positions,
      'weights': [round(float(w), 6) for w in self.weights],
    }


def fit_object_maps(
  features: np.ndarray,
  boxes: Sequence[Boxes],
  image_size: int,
  *,
  seed: int = 0,
) -> ObjectMaps:
  """The logistic regression of step 3 (module docstring) on `features`
  [N, h, w, maps] of N images with `boxes` each (in image pixels)."""
  rng = np.random.default_rng(seed)
  x, y, image = position_samples(features, boxes, image_size, rng)
  with_objects = np.flatnonzero([len(b) > 0 for b in boxes])
  if len(with_objects) < 2 or not (y == 0).any():
    raise ValueError(
      f'the object is in {len(with_objects)} of {len(boxes)} samples, too few '
      'to learn it from; draw more (--num), give boxes (--boxes=FILE.json), or '
      'train longer.'
    )
  held = rng.permutation(with_objects)[: max(1, round(HELD_OUT * len(with_objects)))]
  test = np.isin(image, held)
  model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
  model.fit(x[~test], y[~test])
  weights = model[-1].coef_[0]
  return ObjectMaps(
    weights=weights,
    dropped=np.flatnonzero(weights > 0),
    train_accuracy=float(model.score(x[~test], y[~test])),
    held_out_accuracy=float(model.score(x[test], y[test])),
    num_train_positions=int((~test).sum()),
    num_held_out_positions=int(test.sum()),
  )


def _box_share(boxes: Sequence[Boxes], shape: tuple[int, int]) -> float:
  """Mean share of each image's pixels covered by its boxes."""
  return float(box_masks(boxes, shape).mean()) if len(boxes) else 0.0


def box_masks(boxes: Sequence[Boxes], shape: tuple[int, int]) -> np.ndarray:
  """bool [N, H, W]: pixels inside any box of each image."""
  masks = np.zeros((len(boxes), *shape), bool)
  for i, image_boxes in enumerate(boxes):
    for top, left, bottom, right in np.asarray(image_boxes).reshape(-1, 4):
      masks[i, top:bottom, left:right] = True
  return masks


def detection(images: np.ndarray, detector: Detector) -> list[Boxes]:
  """The detector's boxes in each image."""
  return [np.asarray(detector(image), np.int64).reshape(-1, 4) for image in images]


def effects(
  before: np.ndarray,
  after: np.ndarray,
  boxes: Sequence[Boxes],
  detector: Detector | None,
) -> dict[str, Any]:
  """What dropping the maps did: images `before` and `after` (uint8, same
  z), the object's `boxes` in `before`. Pixel changes are mean |after -
  before| in grey levels (0..255) over the pixels inside the boxes and
  outside them; with a detector, the share of samples in which it finds the
  object, the mean number found and the share of pixels in its boxes."""
  inside = box_masks(boxes, before.shape[1:3])
  change = np.abs(after.astype(np.int16) - before.astype(np.int16)).mean(-1)
  report: dict[str, Any] = {
    'pixel_change_inside_boxes': float(change[inside].mean()) if inside.any() else None,
    'pixel_change_outside_boxes': float(change[~inside].mean()),
    'pixel_change_all': float(change.mean()),
  }
  if detector is not None:
    for name, images in (('before', before), ('after', after)):
      found = detection(images, detector)
      report[f'detected_{name}'] = {
        'share_of_samples': float(np.mean([len(b) > 0 for b in found])),
        'objects_per_sample': float(np.mean([len(b) for b in found])),
        'share_of_pixels': _box_share(found, images.shape[1:3]),
      }
  return report
