"""Synthetic room scenes with windows whose boxes are known, and a window detector.

Each scene is a wall (a vertical gradient) above a floor, a few pieces of
"furniture" (rectangles and ellipses of varied colours) and one or two
windows: a sky-blue glass pane with a deep-blue frame and cross bars. No
other element of a scene uses a blue hue, so `detect` finds windows in any
image (real or generated) by their colour alone: pixels of hue 165-235
degrees, saturation >= 0.2 and value >= 0.25, grouped into connected
components. That lets the paper's section 6.3.1 experiment (make G forget
to draw windows) run without boxing windows by hand.

Scene i of seed s is a pure function of (s, i), drawn at SIZE x SIZE;
`render` draws it at any size (the boxes are exact at every size). Boxes
are (top, left, bottom, right) in pixels, bottom and right exclusive.
"""

import colorsys

import numpy as np
from scipy import ndimage

NAME = 'scenes'  # config.dataset of the local TFDS data set (scenes_dataset.py).
SIZE = 64  # Resolution the data set stores; the pipeline resizes it.
NUM_EXAMPLES = 10_000
SEED = 0  # The data set's scenes: render(i, seed=SEED).

# The hues (degrees) of background colours: an arc of under 180 degrees
# (magenta, red, orange, yellow), so that any blend of two of them (a
# gradient, an antialiased edge) stays on that arc, far from the windows'
# blues.
_BACKGROUND_HUES = (285.0, 95.0)
# What `detect` calls window: hue band, and minimum saturation and value.
WINDOW_HUES = (165.0, 235.0)
MIN_SATURATION = 0.2
MIN_VALUE = 0.25
# Smallest window component, as a share of the image's pixels (the smallest
# window drawn covers 3.6%).
MIN_AREA = 0.008


def _hsv(h: float, s: float, v: float) -> np.ndarray:
  return np.asarray(colorsys.hsv_to_rgb(h / 360.0, s, v), np.float32)


def _background_colour(rng: np.random.Generator, max_saturation: float) -> np.ndarray:
  """A colour whose hue avoids the windows' blues (or a near-grey)."""
  start, end = _BACKGROUND_HUES
  hue = (start + rng.uniform(0.0, (end - start) % 360.0)) % 360.0
  saturation = rng.uniform(0.15, max_saturation) if rng.random() < 0.8 else 0.05
  return _hsv(hue, saturation, rng.uniform(0.35, 0.95))


def _span(rng: np.random.Generator, lo: float, hi: float, extent: tuple):
  """A random length in [lo, hi] and its start inside [extent[0], extent[1])."""
  length = rng.uniform(lo, hi)
  start = rng.uniform(extent[0], max(extent[0], extent[1] - length))
  return start, start + length


def _layout(rng: np.random.Generator) -> dict:
  """Everything random about a scene, in fractions of the image side."""
  horizon = rng.uniform(0.6, 0.78)
  windows = []
  for _ in range(1 if rng.random() < 0.5 else 2):
    for _ in range(20):  # Rejection sampling: windows do not touch.
      w = _span(rng, 0.18, 0.32, (0.04, 0.96))
      h = _span(rng, 0.2, 0.34, (0.05, horizon - 0.05))
      box = (h[0], w[0], h[1], w[1])
      if all(_apart(box, other) for other in windows):
        windows.append(box)
        break
  furniture = []
  for _ in range(rng.integers(2, 5)):
    width = rng.uniform(0.12, 0.4)
    height = rng.uniform(0.1, 0.3)
    left = rng.uniform(-0.05, 1.0 - width * 0.7)
    bottom = rng.uniform(horizon - 0.05, 1.0)
    furniture.append(
      {
        'box': (bottom - height, left, bottom, left + width),
        'ellipse': bool(rng.random() < 0.35),
        'colour': _background_colour(rng, 0.9),
      }
    )
  return {
    'horizon': horizon,
    'wall': (_background_colour(rng, 0.5), _background_colour(rng, 0.5)),
    'floor': _background_colour(rng, 0.6) * 0.75,
    'furniture': furniture,
    'windows': windows,
    'glass': _hsv(rng.uniform(185, 205), rng.uniform(0.3, 0.5), rng.uniform(0.9, 1)),
    'frame': _hsv(rng.uniform(200, 215), rng.uniform(0.85, 1.0), rng.uniform(0.6, 0.8)),
  }


def _apart(a: tuple, b: tuple, gap: float = 0.06) -> bool:
  return (
    a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]
  )


def _pixels(box: tuple, size: int) -> tuple[int, int, int, int]:
  """A fractional box as pixels, clipped to the image."""
  top, left, bottom, right = (int(round(np.clip(v, 0, 1) * size)) for v in box)
  return top, left, bottom, right


def render(index: int, *, seed: int = SEED, size: int = SIZE):
  """Scene `index` of `seed`: (uint8 image [size, size, 3], boxes int [K, 4])."""
  if size < 16:
    raise ValueError(f'scenes are drawn at 16 pixels or more, got size={size}.')
  rng = np.random.default_rng([seed, index])
  scene = _layout(rng)
  canvas = np.empty((size, size, 3), np.float32)
  horizon = int(round(scene['horizon'] * size))
  t = np.linspace(0.0, 1.0, horizon, dtype=np.float32)[:, None, None]
  top, bottom = scene['wall']
  canvas[:horizon] = (1 - t) * top + t * bottom
  canvas[horizon:] = scene['floor']
  ys, xs = np.mgrid[0:size, 0:size] + 0.5
  for item in scene['furniture']:
    y0, x0, y1, x1 = (v * size for v in item['box'])
    if item['ellipse']:
      cy, cx, ry, rx = (y0 + y1) / 2, (x0 + x1) / 2, (y1 - y0) / 2, (x1 - x0) / 2
      mask = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1.0
    else:
      mask = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
    canvas[mask] = item['colour']
  boxes = []
  for box in scene['windows']:
    t0, l0, b0, r0 = _pixels(box, size)
    frame = max(1, round(0.035 * size))
    canvas[t0:b0, l0:r0] = scene['frame']
    canvas[t0 + frame : b0 - frame, l0 + frame : r0 - frame] = scene['glass']
    bar = max(1, frame // 2)
    cy, cx = (t0 + b0) // 2, (l0 + r0) // 2
    canvas[t0:b0, cx - bar // 2 : cx - bar // 2 + bar] = scene['frame']
    canvas[cy - bar // 2 : cy - bar // 2 + bar, l0:r0] = scene['frame']
    boxes.append((t0, l0, b0, r0))
  image = np.clip(np.round(canvas * 255.0), 0, 255).astype(np.uint8)
  return image, np.asarray(boxes, np.int64).reshape(-1, 4)


def window_mask(images: np.ndarray) -> np.ndarray:
  """bool [..., H, W]: pixels of uint8 RGB `images` [..., H, W, 3] coloured
  like a window (its glass or its frame)."""
  rgb = np.asarray(images, np.float32) / 255.0
  value = rgb.max(-1)
  chroma = value - rgb.min(-1)
  saturation = np.where(value > 0, chroma / np.maximum(value, 1e-6), 0.0)
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  safe = np.maximum(chroma, 1e-6)
  hue = np.select(
    [value == r, value == g],
    [((g - b) / safe) % 6.0, (b - r) / safe + 2.0],
    (r - g) / safe + 4.0,
  )
  hue = hue * 60.0
  return (
    (hue >= WINDOW_HUES[0])
    & (hue <= WINDOW_HUES[1])
    & (saturation >= MIN_SATURATION)
    & (value >= MIN_VALUE)
    & (chroma > 0)
  )


def detect(image: np.ndarray) -> np.ndarray:
  """Window boxes int [K, 4] (top, left, bottom, right) in one uint8 RGB
  image [H, W, 3]: the bounding boxes of the window-coloured connected
  components (8-connected) of at least MIN_AREA of the image."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'detect needs one RGB image [H, W, 3], got {image.shape}.')
  labels, count = ndimage.label(window_mask(image), structure=np.ones((3, 3)))
  min_area = MIN_AREA * image.shape[0] * image.shape[1]
  areas = ndimage.sum_labels(np.ones_like(labels), labels, np.arange(1, count + 1))
  boxes = [
    (s[0].start, s[1].start, s[0].stop, s[1].stop)
    for s, area in zip(ndimage.find_objects(labels), areas, strict=True)
    if area >= min_area
  ]
  return np.asarray(sorted(boxes), np.int64).reshape(-1, 4)


def box_mask(boxes: np.ndarray, size: int) -> np.ndarray:
  """bool [size, size]: inside any of `boxes`."""
  mask = np.zeros((size, size), bool)
  for top, left, bottom, right in np.asarray(boxes, np.int64).reshape(-1, 4):
    mask[top:bottom, left:right] = True
  return mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
  """Intersection over union of two boxes."""
  inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(
    0, min(a[3], b[3]) - max(a[1], b[1])
  )
  area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
  return float(inter / (area - inter)) if area > inter else 0.0


def match(found: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> int:
  """How many `truth` boxes some `found` box overlaps with IoU >= threshold
  (each found box counted once, greedily by IoU)."""
  pairs = sorted(
    ((iou(f, t), i, j) for i, f in enumerate(found) for j, t in enumerate(truth)),
    reverse=True,
  )
  used_found, used_truth = set(), set()
  for score, i, j in pairs:
    if score >= threshold and i not in used_found and j not in used_truth:
      used_found.add(i)
      used_truth.add(j)
  return len(used_truth)


# What `forget` and other tools look up: config.dataset -> window detector.
DETECTORS = {NAME: detect}
