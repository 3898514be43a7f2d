"""Scores of a trained generator that the literature can compare with.

`evaluate_generator` scores one GAN's state (what the trainer's periodic
evaluation calls); `evaluate` scores the latest checkpoint of a workdir (the
`python -m dcgan_jax.evaluate` command). Metric groups:

- 'classifier' (labelled data sets: 'digits', 'mnist', 'idx:DIR', ...): the
  evaluation classifier (`label_classifier`, a small CNN fit on the real
  training images and labels at W's size and channels, cached in
  W/eval/classifier/). classifier_fd is the Frechet distance between its
  penultimate-layer features of the samples and of the real training
  images; class_fractions, missing_classes, mean_confidence read its
  predictions. Offline; comparable between runs on the same data set, size
  and channels (the fingerprint), not with papers' FID.
- 'inception': FID, KID and IS with pytorch-fid's Inception-v3 weights (see
  `inception`), against the real training images; their statistics are
  computed once and cached in W/eval/ with a fingerprint.
- 'memorization': the nearest training images of (at most 2,000) samples in
  pixel space and in D's feature space (`d_features`), as PNGs of each
  sample beside its neighbours and histograms of sample-to-train against
  train-to-train distances (`memorization`).
- 'checkerboard' (any data set; offline): the periodic energy stride-2
  upsampling leaves (`checkerboard`): the samples' power spectrum against
  the real training images' at the frequencies of 2^k-periodic patterns.

Reports go to W/eval/report_step_<step>.json and TensorBoard in W/eval;
only process 0 writes. W may be a gs:// URL: every cache, report and figure
goes through `util.files`. Nothing here imports the trainer: the evaluator
is handed what it scores.

Memory: the training images arrive as one uint8 array (memory-mapped with
config.cache='disk'), and every metric streams over it in batches or chunks
(`batching`, `memorization`), never converting it to floats as a whole;
before each metric group runs, its estimated peak is logged and checked
against the available memory (`memory`), so a metric that cannot fit stops
with a one-line error naming what to change instead of the process being
killed.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import serialization
from scipy import special

from dcgan_jax.core import config_checks, generate, manifest, rundir
from dcgan_jax.core.state import GANState
from dcgan_jax.data import input_pipeline, loader
from dcgan_jax.evaluation import (
  batching,
  checkerboard,
  d_features,
  gan_metrics,
  inception,
  label_classifier,
  memorization,
  memory,
)
from dcgan_jax.util import event_writer, figures, files, progress

METRICS = config_checks.EVAL_METRICS
CLASSIFIER_DIR = files.join(rundir.EVAL_DIR, 'classifier')
DEFAULT_TRAINING = label_classifier.ClassifierTraining()
# A class is "missing" when it gets less than this share of the uniform 1/K.
MISSING_CLASS_SHARE = 0.1
# Real Inception features kept for KID (a fixed subset of the training set).
KID_REFERENCE_SIZE = 5000
# Samples whose nearest training images are searched ('memorization').
MEMORIZATION_SAMPLES = 2000
# Training images whose distance to their nearest other one is the reference.
MEMORIZATION_TRAIN_PAIRS = 1000
# Training rows the memorisation search holds at once: the first that fits
# in the available memory.
MEMORIZATION_CHUNK_ROWS = (4096, 2048, 1024, 512, 256)
# Images per batch of the classifier's and Inception's passes.
CLASSIFIER_BATCH = 256
INCEPTION_BATCH = 100
# Float32 values of the FID Inception network's live activations per image
# at its peak: XLA's temporary buffers for a batch of 100 on CPU are 0.83 GB
# (its memory_analysis()), 2.07M values per image.
INCEPTION_ACTIVATIONS_PER_IMAGE = 2_100_000
# The weights (96 MB of float32): the file's bytes, its arrays and the
# network's variables on the device.
INCEPTION_WEIGHT_BYTES = 3 * 96 << 20

DESCRIPTIONS = {
  'classifier_fd': (
    'Frechet distance between the penultimate-layer (128-d) features of the '
    "project's CNN classifier for samples and for the real training images "
    '(FID formula, not Inception: compare only runs with the same data set, '
    'size, channels and num_samples). Lower is better.'
  ),
  'class_fractions': 'Share of samples per class predicted by the classifier.',
  'missing_classes': (
    'Number of classes predicted for less than 10% of the uniform share '
    '(0.1 / num_classes) of the samples: mode dropping. 0 is best.'
  ),
  'mean_confidence': "Mean of the classifier's top-class probability.",
  'conditional_accuracy': (
    'Conditional runs: share of samples the classifier reads as the class '
    'G was asked for (as many samples of each class). 1 is best.'
  ),
  'classifier_test_accuracy': (
    'Accuracy of the classifier on held-out real training images (not seen '
    'when it was fit).'
  ),
  'fid': (
    'FID (Heusel et al. 2017): Frechet distance of Inception-v3 pool3 features '
    '(pytorch-fid weights) of samples and of the real training images.'
  ),
  'kid': (
    'KID (Binkowski et al. 2018): mean over 100 subsets of the unbiased '
    'polynomial-kernel MMD^2 of pool3 features, subsets of min(1000, '
    f'num_samples, {KID_REFERENCE_SIZE}) images.'
  ),
  'kid_std': 'Standard deviation of KID over its subsets.',
  'is': 'Inception Score (Salimans et al. 2016), mean over 10 splits.',
  'is_std': 'Standard deviation of the Inception Score over its splits.',
}
DESCRIPTIONS |= {
  'checkerboard_spike_ratio': (
    "Checkerboard artefacts: the samples' mean normalised power spectrum "
    "divided by the real images'; for each period P = 2, 4, ..., 2^k that k "
    'stride-2 upsamplings can leave, its sum over the frequencies P adds '
    '(multiples of N/P on both axes) over its sum around them (8 neighbours '
    'each); the mean over the periods. 1.0: no more periodic spikes than '
    'real images; higher is worse.'
  ),
  'checkerboard_share': (
    "Share of the samples' (mean-removed, normalised) power spectrum at "
    'those artefact frequencies; counts broadband noise too.'
  ),
  'checkerboard_real_share': 'The same share for the real training images.',
  'checkerboard_share_ratio': (
    'checkerboard_share / checkerboard_real_share: 1.0 = as much power at the '
    'artefact frequencies as real images.'
  ),
}
for _space, _what in (('pixels', 'pixel space'), ('dfeatures', "D's pooled features")):
  DESCRIPTIONS |= {
    f'memorization_{_space}_share_below_train_p01': (
      f'Share of samples (at most {MEMORIZATION_SAMPLES}) whose nearest training '
      f'image, in {_what}, is closer than the 1st percentile of training images '
      'to their nearest other training image. About 0.01 without memorisation.'
    ),
    f'memorization_{_space}_exact_copies': (
      f'Samples within round-off of a training image in {_what}.'
    ),
    f'memorization_{_space}_median_ratio': (
      f'Median sample-to-train over median train-to-train nearest-neighbour '
      f'distance in {_what}; well below 1 suggests copies.'
    ),
  }


@functools.partial(jax.jit, static_argnums=0)
def _apply_inception(module: nn.Module, variables: Any, x: jax.Array):
  return module.apply(variables, inception.preprocess(x))


def _data_fingerprint(config: ml_collections.ConfigDict, images: np.ndarray) -> str:
  """What the evaluation caches are of: the training images' content (the
  manifest's sha256 of the preprocessed array, so that a folder edited in
  place invalidates them), their shape and where the labels come from."""
  return (
    f'dataset={config.dataset} split={config.split} '
    f'{"x".join(map(str, images.shape[1:]))} n={len(images)} '
    f'sha256={manifest.fingerprint(images)}'
  )


def _writes_caches() -> bool:
  """Only process 0 writes the caches; the others compute and keep in memory."""
  return jax.process_index() == 0


def load_labels(config: ml_collections.ConfigDict) -> tuple[np.ndarray, int]:
  """The training images' labels; ValueError naming the usable metrics if none."""
  try:
    return input_pipeline.load_labels(
      dataset=config.dataset,
      split=config.split,
      data_dir=config.data_dir,
      download=config.download,
      label_key=config.get('label_key', 'label'),
      # A conditional run was trained on its folder's subfolders as classes.
      folder_classes=config.get('conditional', False),
    )
  except ValueError as e:
    raise ValueError(
      f"Metric 'classifier' needs a labelled data set ('digits', 'mnist', ...); "
      f'config.dataset={config.dataset!r} has none ({e}). Use '
      '--metrics=inception for this workdir (FID, KID, IS).'
    ) from e


def load_or_train_classifier(
  workdir: str,
  config: ml_collections.ConfigDict,
  real_images: np.ndarray,
  training: label_classifier.ClassifierTraining = DEFAULT_TRAINING,
  labels: tuple[np.ndarray, int] | None = None,
) -> label_classifier.Classifier:
  """The classifier cached in W/eval/classifier/ if its fingerprint (data set,
  split, size, channels, training) matches, else trained now and cached.
  `labels`: the (labels, num_classes) of `load_labels`, if already loaded."""
  labels, num_classes = labels or load_labels(config)
  if len(labels) != len(real_images):
    raise ValueError(
      f'{config.dataset!r} has {len(labels)} labels but {len(real_images)} images.'
    )
  fingerprint = f'{_data_fingerprint(config, real_images)} {training.describe()}'
  directory = files.join(workdir, CLASSIFIER_DIR)
  meta_path = files.join(directory, 'classifier.json')
  params_path = files.join(directory, 'params.msgpack')
  module = label_classifier.FeatureClassifier(num_classes)
  if files.exists(meta_path) and files.exists(params_path):
    meta = files.read_json(meta_path)
    if meta.get('fingerprint') == fingerprint:
      x0 = jnp.zeros((1, *real_images.shape[1:]), jnp.float32)
      target = jax.eval_shape(module.init, jax.random.key(training.seed), x0)
      params = serialization.from_bytes(target['params'], files.read_bytes(params_path))
      return label_classifier.Classifier(
        module, params, fingerprint, meta['test_accuracy'], True
      )
  start = time.perf_counter()
  module, params, accuracy = label_classifier.train_classifier(
    real_images, labels, num_classes, training
  )
  meta = {
    'fingerprint': fingerprint,
    'test_accuracy': accuracy,
    'num_classes': num_classes,
    'train_seconds': time.perf_counter() - start,
  }
  if _writes_caches():
    # Parameters first: a fingerprint file never describes older parameters.
    files.write_atomic(params_path, serialization.to_bytes(jax.device_get(params)))
    files.write_json(meta_path, meta)
  return label_classifier.Classifier(module, params, fingerprint, accuracy, False)


def classifier_estimate(
  num_samples: int, image_shape: Sequence[int], num_classes: int, num_train: int
) -> memory.Estimate:
  """The 'classifier' metrics' peak memory: the samples' outputs and their
  float64 statistics, and one batch of the passes over the samples and the
  (streamed) training images with the CNN's activations for it."""
  dim = math.prod(image_shape)
  features = label_classifier.FeatureClassifier.feature_dim
  outputs = num_samples * (num_classes + features) * 4 * 2  # Batches, joined.
  float64 = num_samples * (num_classes + features) * 8 * 2  # Softmax; stats.
  activations = 32 * 32 * 32 + 16 * 16 * 64 + 8 * 8 * 64  # At most 32x32.
  batch = CLASSIFIER_BATCH * (dim * (4 + 8 + 4 + 4) + activations * 4 * 2)
  return memory.Estimate(
    'classifier',
    outputs + float64 + batch,
    f'{num_samples:,} samples; the {num_train:,} training images streamed '
    f'{CLASSIFIER_BATCH} at a time',
    _remedy('classifier', 'the samples'),
  )


def _remedy(metric: str, what: str) -> str:
  return (
    f'its size grows with {what}: lower --num_samples (in training, '
    f"--config.eval_num_samples), or leave '{metric}' out of the metrics"
  )


def classifier_metrics(
  workdir: str,
  config: ml_collections.ConfigDict,
  images: np.ndarray,
  real_images: np.ndarray,
  training: label_classifier.ClassifierTraining = DEFAULT_TRAINING,
  *,
  memory_limit: int | None = None,
  requested: np.ndarray | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
  """(metrics, details) of uint8 samples read by the project's classifier;
  with the classes `requested` of a conditional G's samples, also the share
  read as their requested class (`conditional_accuracy`).

  The real images' feature statistics are a streamed pass over all of them
  (float64 sums on host), cached in W/eval/classifier/real_stats.npz.
  """
  labels = load_labels(config)
  memory_details = memory.check(
    classifier_estimate(len(images), images.shape[1:], labels[1], len(real_images)),
    memory.resolve_limit(memory_limit),
  )
  classifier = load_or_train_classifier(
    workdir, config, real_images, training, labels=labels
  )
  stats_path = files.join(workdir, CLASSIFIER_DIR, 'real_stats.npz')
  fingerprint = f'{classifier.fingerprint} penultimate'
  try:
    if not classifier.cached:  # Fresh parameters: recompute, whatever is there.
      raise FileNotFoundError(stats_path)
    real_stats = gan_metrics.FeatureStats.load(stats_path, fingerprint=fingerprint)
  except (FileNotFoundError, ValueError):
    real_stats = label_classifier.feature_stats(
      classifier.module, classifier.params, real_images, CLASSIFIER_BATCH
    )
    if _writes_caches():
      real_stats.save(stats_path, fingerprint=fingerprint)
  logits, features = label_classifier.classifier_outputs(
    classifier.module, classifier.params, images, CLASSIFIER_BATCH
  )
  probs = special.softmax(logits.astype(np.float64), axis=1)
  num_classes = probs.shape[1]
  fractions = np.bincount(probs.argmax(axis=1), minlength=num_classes) / len(probs)
  fd = gan_metrics.frechet_distance(gan_metrics.feature_stats(features), real_stats)
  metrics = {
    'classifier_fd': fd,
    'class_fractions': [float(f) for f in fractions],
    'missing_classes': int((fractions < MISSING_CLASS_SHARE / num_classes).sum()),
    'mean_confidence': float(probs.max(axis=1).mean()),
    'classifier_test_accuracy': classifier.test_accuracy,
  }
  if requested is not None:
    hits = probs.argmax(axis=1) == np.asarray(requested)
    metrics['conditional_accuracy'] = float(hits.mean())
  details = {'fingerprint': classifier.fingerprint, 'cached': classifier.cached}
  return metrics, {**details, 'memory': memory_details}


# ----------------------------------------------------------------------------
# Inception: FID, KID, IS.


def inception_estimate(
  num_samples: int, image_shape: Sequence[int], num_train: int
) -> memory.Estimate:
  """The 'inception' metrics' peak memory: the weights, the samples' pool3
  features and logits with their float64 copies (statistics, softmax, KID),
  the KID reference features and kernels, the statistics' sums, and one
  batch at 299x299 with the network's activations for it."""
  n, kid = num_samples, min(KID_REFERENCE_SIZE, num_train)
  outputs = n * (2048 + 1008) * 4 * 2  # Batches, joined.
  float64 = n * 1008 * 8 * 2 + n * 2048 * 8 * 3 + kid * 2048 * 8
  reference = kid * 2048 * 4 * 2 + 2048 * 2048 * 8 * 4 + 3 * 1000 * 1000 * 8
  per_image = math.prod(image_shape) * 4 * 3 + 299 * 299 * 3 * 4
  batch = INCEPTION_BATCH * (per_image + INCEPTION_ACTIVATIONS_PER_IMAGE * 4)
  return memory.Estimate(
    'inception',
    INCEPTION_WEIGHT_BYTES + outputs + float64 + reference + batch,
    f'{num_samples:,} samples; the {num_train:,} training images streamed '
    f'{INCEPTION_BATCH} at a time',
    _remedy('inception', 'the samples'),
  )


def inception_metrics(
  workdir: str,
  config: ml_collections.ConfigDict,
  images: np.ndarray,
  real_images: np.ndarray,
  *,
  weights: str | None = None,
  batch_size: int = INCEPTION_BATCH,
  seed: int = 0,
  memory_limit: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
  """(metrics, details): FID, KID, IS of uint8 samples against the real images.

  The real images' pool3 statistics (and a fixed subset of at most
  KID_REFERENCE_SIZE of their features, for KID) are a streamed pass over
  all of them, cached in W/eval/ with a fingerprint naming the images'
  content (sha256) and the weights file's SHA-256, which `details` records
  with whether they are pytorch-fid's official weights.
  """
  memory_details = memory.check(
    inception_estimate(len(images), images.shape[1:], len(real_images)),
    memory.resolve_limit(memory_limit),
  )
  module, variables = inception.load_fid_inception(weights)
  apply = functools.partial(_apply_inception, module)
  weights_name = os.path.basename(weights or inception.default_weights_path())
  identity = inception.weights_identity(weights)
  fingerprint = (
    f'{_data_fingerprint(config, real_images)} '
    f'weights_sha256={identity["inception_weights_sha256"]} {weights_name} pool3'
  )
  path = files.join(workdir, rundir.EVAL_DIR, 'inception_real.npz')
  real = _load_inception_reference(path, fingerprint)
  cached = real is not None
  if real is None:
    subset = np.sort(
      np.random.default_rng(0).permutation(len(real_images))[:KID_REFERENCE_SIZE]
    )
    accumulator = gan_metrics.StatsAccumulator()
    kid_features, start = [], 0
    real_pass = batching.batched_outputs(
      apply,
      variables,
      real_images,
      batch_size,
      what='Inception features of real images',
    )
    for out in real_pass:
      feats = out['pool3']
      accumulator.update(feats)
      in_batch = subset[(subset >= start) & (subset < start + len(feats))]
      kid_features.append(feats[in_batch - start])
      start += len(feats)
    real = accumulator.stats(), np.concatenate(kid_features).astype(np.float32)
    if _writes_caches():
      _save_inception_reference(path, fingerprint, *real)
  real_stats, real_kid_features = real
  out = batching.batched_apply(
    apply, variables, images, batch_size, what='Inception features of samples'
  )
  probs = special.softmax(out['logits'].astype(np.float64), axis=1)
  fid = gan_metrics.frechet_distance(
    gan_metrics.feature_stats(out['pool3']), real_stats
  )
  kid, kid_std = gan_metrics.kernel_inception_distance(
    out['pool3'], real_kid_features, rng=np.random.default_rng(seed)
  )
  is_mean, is_std = gan_metrics.inception_score(probs, num_splits=min(10, len(probs)))
  metrics = {'fid': fid, 'kid': kid, 'kid_std': kid_std, 'is': is_mean}
  metrics['is_std'] = is_std
  details = {'fingerprint': fingerprint, 'cached': cached, 'weights': weights_name}
  details |= identity
  return metrics, {**details, 'memory': memory_details}


_WEIGHTS_KEYS = ('inception_weights_sha256', 'inception_weights_official')


def _save_inception_reference(path, fingerprint, stats, kid_features) -> None:
  stats.save(path + '.stats.npz', fingerprint=fingerprint)
  with files.atomic_write(path) as f:
    np.savez(f, kid_features=kid_features, fingerprint=np.str_(fingerprint))


def _load_inception_reference(path, fingerprint):
  """(FeatureStats, KID features) if cached for `fingerprint`, else None."""
  if not files.exists(path):
    return None
  try:
    stats = gan_metrics.FeatureStats.load(path + '.stats.npz', fingerprint=fingerprint)
  except (FileNotFoundError, ValueError):
    return None
  with files.open(path) as f, np.load(f, allow_pickle=False) as data:
    if str(data['fingerprint']) != fingerprint:
      return None
    return stats, data['kid_features']


def checkerboard_estimate(
  num_samples: int, image_shape: Sequence[int], num_train: int
) -> memory.Estimate:
  """The 'checkerboard' metrics' peak memory: one batch's transform (the
  samples and the real images are streamed through it)."""
  num_real = min(num_train, checkerboard.REAL_IMAGES)
  return memory.Estimate(
    'checkerboard',
    checkerboard.workspace_bytes(image_shape),
    f'{num_samples:,} samples and {num_real:,} training images transformed '
    f'{checkerboard.BATCH} at a time',
    "it holds one batch of images at a time: leave 'checkerboard' out of the metrics",
  )


def checkerboard_metrics(
  images: np.ndarray, real_images: np.ndarray, *, memory_limit: int | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
  """(metrics, details) of uint8 samples: their checkerboard scores against
  (at most checkerboard.REAL_IMAGES of) the real training images."""
  memory_details = memory.check(
    checkerboard_estimate(len(images), images.shape[1:], len(real_images)),
    memory.resolve_limit(memory_limit),
  )
  period = checkerboard.artefact_period(images.shape[1])
  metrics = checkerboard.checkerboard_metrics(images, real_images, period=period)
  num_real = len(checkerboard.real_indices(len(real_images)))
  details = {'period': period, 'num_real_images': num_real}
  return metrics, {**details, 'memory': memory_details}


# ----------------------------------------------------------------------------
# Samples, all metrics, the report.


def compute_metrics(
  workdir: str,
  config: ml_collections.ConfigDict,
  images: np.ndarray,
  metrics: Sequence[str],
  *,
  real_images: np.ndarray | None = None,
  inception_weights: str | None = None,
  classifier_training: label_classifier.ClassifierTraining = DEFAULT_TRAINING,
  seed: int = 0,
  memory_limit: int | None = None,
  requested: np.ndarray | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
  """(metrics, details per metric group) of uint8 images [N, S, S, C]
  (drawn for the classes `requested` by a conditional G).

  Each metric group first logs its estimated peak memory and stops with a
  `memory.MemoryLimitError` if that exceeds `memory_limit` (bytes; None:
  the memory available now).
  """
  _check_metrics(metrics)
  if real_images is None:
    real_images = loader.load_data(config, workdir)
  values, details = {}, {}
  if 'classifier' in metrics:
    with progress.timed("Metric 'classifier'"):
      v, details['classifier'] = classifier_metrics(
        workdir, config, images, real_images, classifier_training,
        memory_limit=memory_limit, requested=requested,
      )  # fmt: skip
    values.update(v)
  if 'inception' in metrics:
    with progress.timed("Metric 'inception'"):
      v, details['inception'] = inception_metrics(
        workdir, config, images, real_images, weights=inception_weights,
        seed=seed, memory_limit=memory_limit,
      )  # fmt: skip
    values.update(v)
  if 'checkerboard' in metrics:
    with progress.timed("Metric 'checkerboard'"):
      v, details['checkerboard'] = checkerboard_metrics(
        images, real_images, memory_limit=memory_limit
      )
    values.update(v)
  return values, details


def memorization_estimate(
  config: ml_collections.ConfigDict,
  num_samples: int,
  num_train: int,
  chunk_rows: int = MEMORIZATION_CHUNK_ROWS[0],
) -> memory.Estimate:
  """The 'memorization' metrics' peak memory (`memorization.report_bytes`
  with D's feature count and what making a chunk of features takes), with
  `chunk_rows` training rows at once."""
  image_shape = (config.image_size, config.image_size, config.num_channels)
  num_features, workspace = None, 0
  if config.model.arch != 'mlp' and not generate.num_classes(config):
    num_features = d_features.feature_count(config)
    workspace = d_features.workspace_bytes(config)
  pairs = min(MEMORIZATION_TRAIN_PAIRS, num_train)
  total = memorization.report_bytes(
    num_samples, image_shape, num_train=num_train, num_features=num_features,
    feature_workspace=workspace, num_train_pairs=pairs, chunk_rows=chunk_rows,
  )  # fmt: skip
  spaces = 'pixel and D-feature space' if num_features else 'pixel space'
  return memory.Estimate(
    'memorization',
    total,
    f'{num_samples:,} samples and {pairs:,} training images searched in '
    f'{spaces}, the {num_train:,} training images streamed {chunk_rows:,} at '
    'a time',
    f'it holds at least {MEMORIZATION_CHUNK_ROWS[-1]} training images at a '
    f'time and grows with the samples searched, min({MEMORIZATION_SAMPLES}, '
    'num_samples): lower --num_samples (in training, '
    "--config.eval_num_samples), or leave 'memorization' out of the metrics",
  )


def memorization_metrics(
  workdir: str,
  config: ml_collections.ConfigDict,
  state: GANState,
  samples: np.ndarray,
  real_images: np.ndarray,
  *,
  seed: int = 0,
  memory_limit: int | None = None,
  chunk_rows: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
  """(metrics, details): nearest training images of the samples, in pixel
  space and in the space of D's pooled convolutional features (the linear
  probe's), written as W/eval/memorization_step_<step>_*.png.

  The training images (uint8, possibly memory-mapped) are streamed through
  the search `chunk_rows` at a time (None: the largest of
  MEMORIZATION_CHUNK_ROWS whose estimated peak fits in `memory_limit`, or
  in the memory available now); their D features are made a chunk at a
  time, never all at once. The chunk size does not change the results.
  """
  step = int(state.step)
  limit = memory.resolve_limit(memory_limit)
  for rows in (chunk_rows,) if chunk_rows else MEMORIZATION_CHUNK_ROWS:
    estimate = memorization_estimate(config, len(samples), len(real_images), rows)
    if estimate.bytes <= limit[0]:
      break
  memory_details = memory.check(estimate, limit)
  features = {}
  # D without convolutions, or one that needs labels: pixels only.
  if config.model.arch != 'mlp' and not generate.num_classes(config):
    d_variables = {'params': state.d_params, 'batch_stats': state.d_batch_stats}
    d_fn = d_features.features_fn(config, d_variables)
    features = {
      'sample_features': d_fn(samples),
      'train_features': memorization.Rows(
        len(real_images),
        d_features.feature_count(config),
        lambda indices: d_fn(real_images[indices]),
        name="D's features of the training images",
      ),
    }
  result = memorization.memorization_report(
    samples,
    real_images,
    out_dir=files.join(workdir, rundir.EVAL_DIR),
    prefix=f'memorization_step_{step}',
    seed=seed,
    num_train_pairs=MEMORIZATION_TRAIN_PAIRS,
    chunk_rows=rows,
    **features,
  )
  metrics, pictures = {}, {}
  for space in ('pixels', 'dfeatures'):
    if space not in result:
      continue
    part = result[space]
    metrics[f'memorization_{space}_share_below_train_p01'] = part[
      'share_below_train_p01'
    ]
    metrics[f'memorization_{space}_exact_copies'] = part['num_exact_copies']
    metrics[f'memorization_{space}_median_ratio'] = part['median_ratio']
    pictures[f'memorization_neighbours_{space}'] = part['neighbours_png']
    pictures[f'memorization_distances_{space}'] = part['distances_png']
  return metrics, {**result, 'figures': pictures, 'memory': memory_details}


def _check_metrics(metrics: Sequence[str]) -> None:
  unknown = [m for m in metrics if m not in METRICS]
  if unknown or not metrics:
    raise ValueError(f'metrics must be some of {list(METRICS)}, got {list(metrics)}.')


def available_metrics(
  config: ml_collections.ConfigDict, inception_weights: str | None = None
) -> tuple[list[str], dict[str, str]]:
  """('auto' metrics, {left-out metric: why}): 'classifier' if the data set
  has labels, 'inception' if the weights file exists (no download),
  'memorization' always, 'checkerboard' where the image size is made by
  stride-2 doublings."""
  metrics, skipped = [], {}
  try:
    load_labels(config)
    metrics.append('classifier')
  except ValueError as e:
    skipped['classifier'] = str(e).split(' (')[0] + ': the data set has no labels.'
  try:
    inception.resolve_weights(inception_weights, download=False)
    metrics.append('inception')
  except FileNotFoundError as e:
    skipped['inception'] = str(e)
  metrics.append('memorization')
  try:
    checkerboard.artefact_period(config.image_size)
    metrics.append('checkerboard')
  except ValueError as e:
    skipped['checkerboard'] = str(e)
  return metrics, skipped


def check_metrics_available(
  config: ml_collections.ConfigDict,
  metrics: Sequence[str],
  inception_weights: str | None = None,
) -> str | None:
  """Fails early, before sampling or training, where a metric cannot run:
  'classifier' on a data set without labels, 'inception' without weights.
  Returns the resolved Inception weights path (None without 'inception')."""
  _check_metrics(metrics)
  if 'classifier' in metrics:
    load_labels(config)
  if 'inception' in metrics:
    return inception.resolve_weights(inception_weights)
  return None


def evaluate_generator(
  workdir: str,
  config: ml_collections.ConfigDict,
  state: GANState,
  *,
  num_samples: int = 10_000,
  metrics: Sequence[str] = ('classifier',),
  seeds: Sequence[int] = (0,),
  real_images: np.ndarray | None = None,
  inception_weights: str | None = None,
  classifier_training: label_classifier.ClassifierTraining = DEFAULT_TRAINING,
  cache_workdir: str | None = None,
  skipped: dict[str, str] | None = None,
  memory_limit: int | None = None,
  generator: str = 'auto',
) -> dict[str, Any]:
  """Scores the generator of `state` (a single GAN of the run in `workdir`):
  G's moving average when the run keeps one, unless `generator='raw'` (see
  `rundir.resolve_generator`).

  For each z seed in `seeds`, draws `num_samples` images and computes the
  metrics; the report's `metrics` are their means over the seeds, `spread`
  their standard deviations and per-seed values (more than one seed). With
  'classifier', the class shares of the first seed's samples are also drawn
  as W/eval/class_coverage_step_<step>.png. Writes the report (see
  `write_report`) and returns it. The classifier and the real images'
  statistics are cached under `cache_workdir` (default: `workdir`), so the
  GANs of one ensemble share them. `skipped` (metric -> why it did not run)
  is recorded in the report. Before each metric group runs, its estimated
  peak memory is logged and checked against `memory_limit` (bytes; None:
  the memory available then): see `memory`.
  """
  _check_metrics(metrics)
  if num_samples < 10:
    raise ValueError(f'num_samples must be at least 10, got {num_samples}.')
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f'seeds must be distinct and at least one, got {list(seeds)}.')
  start = time.perf_counter()
  step = int(state.step)
  if real_images is None:
    real_images = loader.load_data(config, workdir)
  generator = rundir.resolve_generator(state, generator, workdir)
  g_variables = rundir.generator_variables(state, generator)
  per_seed, details, pictures = [], {}, {}
  sample_fn = generate.generator_fn(config, g_variables)
  for seed in seeds:
    images = generate.images(sample_fn, generate.eval_z(config, num_samples, seed))
    values, details = compute_metrics(
      cache_workdir or workdir,
      config,
      images,
      metrics,
      real_images=real_images,
      inception_weights=inception_weights,
      classifier_training=classifier_training,
      seed=seed,
      memory_limit=memory_limit,
      requested=generate.default_labels(config, num_samples),
    )
    per_seed.append(values)
    if seed == seeds[0]:
      first_images = images[:MEMORIZATION_SAMPLES]
    if 'classifier' in metrics and not pictures and jax.process_index() == 0:
      pictures['class_coverage'] = figures.coverage_png(
        files.join(workdir, rundir.EVAL_DIR, f'class_coverage_step_{step}.png'),
        values['class_fractions'],
        title=f'step {step}: share of {num_samples} samples per class',
        missing_share=MISSING_CLASS_SHARE,
      )
  values, spread = aggregate(per_seed)
  if 'memorization' in metrics and jax.process_index() == 0:  # Writes PNGs.
    with progress.timed("Metric 'memorization'"):
      v, details['memorization'] = memorization_metrics(
        workdir, config, state, first_images, real_images, seed=seeds[0],
        memory_limit=memory_limit,
      )  # fmt: skip
    values.update(v)
    pictures.update(details['memorization'].pop('figures'))
  report = {
    'step': step,
    'num_samples': num_samples,
    'seeds': list(seeds),
    'dataset': config.dataset,
    'image_shape': list(images.shape[1:]),
    'sample_batchnorm': config.sample_batchnorm,
    'generator': generator,
    'run_has_ema': state.g_ema is not None,
    'metrics': values,
    'descriptions': {k: DESCRIPTIONS[k] for k in values},
    'details': details,
    'figures': pictures,
  }
  if 'inception' in details:  # Which weights the FID/KID/IS are of.
    report |= {k: details['inception'][k] for k in _WEIGHTS_KEYS}
  if skipped:
    report['skipped'] = skipped
  if spread:
    report['spread'] = spread
  report['seconds'] = round(time.perf_counter() - start, 2)
  write_report(workdir, report)
  return report


def aggregate(
  reports: Sequence[dict[str, Any]],
) -> tuple[dict[str, Any], dict[str, Any]]:
  """(means, spread) of metric dicts: lists averaged elementwise; spread is
  {name: {'std', 'values'}} over the dicts (empty for a single one)."""
  means = {
    k: (
      [float(np.mean(v)) for v in zip(*(r[k] for r in reports), strict=True)]
      if isinstance(reports[0][k], list)
      else float(np.mean([r[k] for r in reports]))
    )
    for k in reports[0]
  }
  for k, v in reports[0].items():
    if isinstance(v, int) and len(reports) == 1:
      means[k] = v
  if len(reports) == 1:
    return means, {}
  spread = {
    k: {
      'std': float(np.std([r[k] for r in reports], ddof=1)),
      'values': [r[k] for r in reports],
    }
    for k, v in reports[0].items()
    if not isinstance(v, list)
  }
  return means, spread


def evaluate(
  workdir: str,
  *,
  num_samples: int = 10_000,
  metrics: Sequence[str] = ('classifier',),
  seeds: Sequence[int] = (0,),
  inception_weights: str | None = None,
  classifier_training: label_classifier.ClassifierTraining = DEFAULT_TRAINING,
  memory_limit: int | None = None,
  generator: str = 'auto',
) -> dict[str, Any]:
  """Scores the latest checkpoint of `workdir` (its `generator`, see
  `rundir.resolve_generator`); writes and returns the report.

  The report (W/eval/report_step_<step>.json) holds step, num_samples, the
  z seeds, `metrics` (name -> value, the mean over the z seeds), `spread`
  (several seeds: name -> std and per-seed values), `descriptions` (name ->
  what it is), the figures written and per metric group its cache
  fingerprint; the scalars go to TensorBoard in W/eval.

  A workdir of several GANs (config.num_seeds = K) is scored member by
  member (each member's report in its own W/seed_<s>/eval/), and the
  report in W/eval/ gives the mean over the K GANs in `metrics` and their
  spread: the seed-to-seed variation of training.

  `workdir` is a local directory or a gs:// URL; the training images are
  read as the config says (uint8, memory-mapped with config.cache='disk')
  and every metric streams over them, checking its estimated peak memory
  against `memory_limit` (bytes; None: the memory available) first.
  """
  config = rundir.load_config(workdir)
  skipped = {}
  if list(metrics) == ['auto']:
    metrics, skipped = available_metrics(config, inception_weights)
  inception_weights = check_metrics_available(config, metrics, inception_weights)
  runs = rundir.load_runs(workdir, generator)
  if len({run.step for run in runs}) > 1:
    raise ValueError(
      f'The GANs in {workdir} are at different steps '
      f'{[run.step for run in runs]}: relaunch training to bring them level.'
    )
  real_images = loader.load_data(config, workdir)
  reports = [
    evaluate_generator(
      run.workdir,
      run.config,
      run.state,
      num_samples=num_samples,
      metrics=metrics,
      seeds=seeds,
      real_images=real_images,
      inception_weights=inception_weights,
      classifier_training=classifier_training,
      cache_workdir=workdir,
      skipped=skipped,
      memory_limit=memory_limit,
      generator=run.generator,
    )
    for run in runs
  ]
  if len(reports) == 1:
    return reports[0]
  values, spread = aggregate([r['metrics'] for r in reports])
  report = {
    k: reports[0][k] for k in ('step', 'num_samples', 'seeds', 'dataset', 'image_shape')
  }
  report |= {k: reports[0][k] for k in _WEIGHTS_KEYS if k in reports[0]}
  report |= {
    'sample_batchnorm': config.sample_batchnorm,
    'generator': reports[0]['generator'],
    'run_has_ema': reports[0]['run_has_ema'],
    'training_seeds': [run.config.seed for run in runs],
    'metrics': values,
    'spread': spread,
    'descriptions': reports[0]['descriptions'],
    **({'skipped': skipped} if skipped else {}),
    'member_reports': [
      report_path(run.workdir, r) for r, run in zip(reports, runs, strict=True)
    ],
    'seconds': round(sum(r['seconds'] for r in reports), 2),
  }
  write_report(workdir, report)
  return report


def _raw_of_ema_run(report: dict[str, Any]) -> bool:
  return report.get('generator') == 'raw' and report.get('run_has_ema', False)


def report_path(workdir: str, report: dict[str, Any]) -> str:
  """W/eval/report_step_<step>.json; `_raw` is added for G's own weights in
  a run that keeps a moving average (whose report has the plain name)."""
  suffix = '_raw' if _raw_of_ema_run(report) else ''
  return files.join(
    workdir, rundir.EVAL_DIR, f'report_step_{report["step"]}{suffix}.json'
  )


def write_report(workdir: str, report: dict[str, Any]) -> str:
  """Writes the JSON report atomically and the scalars (and their spread,
  as '<name>_std') to TensorBoard in W/eval (as eval_raw/... for `_raw`
  reports); only process 0 writes."""
  directory = files.join(workdir, rundir.EVAL_DIR)
  path = report_path(workdir, report)
  if jax.process_index() != 0:
    return path
  files.write_json(path, report)
  tag = 'eval_raw' if _raw_of_ema_run(report) else 'eval'
  scalars = {f'{tag}/{k}': v for k, v in report['metrics'].items() if np.isscalar(v)}
  for k, v in report.get('spread', {}).items():
    scalars[f'{tag}/{k}_std'] = v['std']
  writer = event_writer.create_writer(directory)
  writer.write_scalars(report['step'], scalars)
  writer.flush()
  writer.close()
  return path


def summary(report: dict[str, Any]) -> str:
  seeds = report['seeds']
  head = f'step {report["step"]}, {report["num_samples"]} samples'
  if report.get('run_has_ema'):
    head += f' of {"G itself" if report["generator"] == "raw" else "the EMA of G"}'
  if len(seeds) > 1:
    head += f' for each of the z seeds {seeds}'
  if 'training_seeds' in report:
    head += f'; mean (std) over the GANs of seeds {report["training_seeds"]}'
  elif len(seeds) > 1:
    head += '; mean (std) over them'
  lines = [head + ':']
  spread = report.get('spread', {})
  for name, value in report['metrics'].items():
    if isinstance(value, list):
      value = ' '.join(f'{v:.3f}' for v in value)
    elif isinstance(value, float):
      value = f'{value:.4g}'
    if name in spread:
      value = f'{value} ({spread[name]["std"]:.2g})'
    lines.append(f'  {name}: {value}')
  for name, path in report.get('figures', {}).items():
    lines.append(f'  {name}: {path}')
  for name, details in report.get('details', {}).items():
    if 'memory' in details:
      m = details['memory']
      lines.append(
        f'  memory: {name} about {memory.gigabytes(m["estimated_peak_bytes"])} at '
        f'its peak ({m["what"]}), of {memory.gigabytes(m["available_bytes"])} '
        f'available'
      )
  for name, why in report.get('skipped', {}).items():
    lines.append(f'  not run: {name}: {why.splitlines()[0]}')
  return '\n'.join(lines)
