"""How good are D's features? The DCGAN paper's L2-SVM on them (its section 5.1).

Radford et al. (2015) "use all layers' convolutional features from the
discriminator, max-pooling each layer representation to produce a 4x4
spatial grid. These features are then flattened and concatenated ... and a
regularized linear L2-SVM classifier is trained on top". They report 82.8%
on CIFAR-10 (D trained on ImageNet-1k) and 22.48% test error on SVHN with
1000 labels.

`d_features.discriminator_features` computes those features (the module
lists their counts per architecture).

The probe (`run_probe`, presets in `PROBES`) standardises the features (fit
on the labelled examples), picks C of a linear L2-SVM (sklearn's LinearSVC,
squared hinge) from a grid on validation data, refits on all labelled
examples and reports test accuracy, for three representations: the trained
D, D at initialisation (the run's own initial state) and the raw pixels in
[-1, 1] at the same size. The labelled examples are a class-balanced draw
fixed by the seed. The images are preprocessed to the workdir's image_size,
num_channels and crop. W/eval/probe_<name>_step_<step>.json gets the report,
TensorBoard in W/eval the scalars probe/<name>/<representation>_accuracy
(<name> gets _labels<N> / _seed<S> appended for a non-default --num_labels
or --seed).

Cost: mnist_1000 takes 2-3 minutes on 2 CPU cores (26 SVM fits per
representation, most of the time). With fewer labelled rows than features
the SVMs are fit in the rows' span, which gives liblinear's solution at a
fraction of the cost (`SVMTrainer`). The cifar10 preset is the paper's
scale: 60,000 x 28,672 features and LinearSVC on up to 50,000 rows in
float64; plan on about 40 GB of memory and hours of CPU time.
"""

from __future__ import annotations

import dataclasses
import logging as std_logging
import os
import time
import warnings
from typing import Any

import ml_collections
import numpy as np
from absl import logging
from sklearn import exceptions, model_selection, preprocessing, svm

from dcgan_jax.core import rundir
from dcgan_jax.core import state as state_lib
from dcgan_jax.data import input_pipeline
from dcgan_jax.evaluation import d_features, digits_svm
from dcgan_jax.util import event_writer, files

VALIDATIONS = ('cv', 'holdout', 'rest')
# The representations compared, in report order.
REPRESENTATIONS = {
  'd_features': 'trained D',
  'random_d': 'D at initialisation',
  'pixels': 'raw pixels',
}
_SVM_MAX_ITER = 5000
_PREDICT_ROWS = 4096
_PRIMAL_RATIO = 4
# Progress lines (features, each C, each result); the command prints them.
progress = std_logging.getLogger('dcgan_jax.linear_probe.progress')
progress.propagate = False


# ----------------------------------------------------------------------------
# Protocols.


@dataclasses.dataclass(frozen=True)
class Probe:
  """A labelled data set and how the probe splits it and chooses C.

  dataset: a config.dataset string ('cifar10', 'svhn_cropped', 'idx:DIR').
  train_split: where the labelled (and 'rest' validation) examples come from.
  test_split: the test examples; None: the examples of train_split that are
    neither labelled nor validation (at most num_test of them).
  num_labels: labelled examples, a class-balanced draw; None: all of them.
  validation: how C is chosen from c_grid. 'cv': cv_folds-fold stratified
    cross-validation on the labelled examples; 'holdout': fit on all but
    num_validation of them, validate on those; 'rest': validate on
    num_validation further examples of train_split (the paper's SVHN set-up).
    'holdout' holds out at most a fifth of the labelled examples.
  num_test: at most this many test examples (a fixed draw); None: all.
  paper: the paper's figure, for the report.
  """

  dataset: str
  train_split: str
  test_split: str | None
  num_labels: int | None
  validation: str
  num_validation: int = 0
  cv_folds: int = 5
  num_test: int | None = None
  c_grid: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
  paper: str = ''


PROBES = {
  # D trained on ImageNet 32x32 (configs/imagenet32.py), all 50,000 CIFAR-10
  # training labels; C from 5,000 of them held out, then refit on all.
  'cifar10': Probe(
    dataset='cifar10',
    train_split='train',
    test_split='test',
    num_labels=None,
    validation='holdout',
    num_validation=5000,
    paper='82.8% accuracy (DCGAN, D trained on ImageNet-1k)',
  ),
  # 1,000 labels from SVHN's train split, 10,000 more of it for choosing C
  # (as in the paper), the test split to test. D from configs/svhn.py.
  'svhn_1000': Probe(
    dataset='svhn_cropped',
    train_split='train',
    test_split='test',
    num_labels=1000,
    validation='rest',
    num_validation=10_000,
    paper='22.48% test error (DCGAN + L2-SVM)',
  ),
  # MNIST's test split is all there is in ../shared/data/mnist: 1,000
  # labelled digits drawn from it (C by 5-fold CV on them), the other 9,000
  # to test. configs/mnist_files.py trains the GAN on the same 10,000 images
  # (without labels).
  'mnist_1000': Probe(
    dataset='idx:' + os.path.abspath(digits_svm.MNIST_DIR),
    train_split='test',
    test_split=None,
    num_labels=1000,
    validation='cv',
  ),
}


@dataclasses.dataclass(frozen=True)
class Split:
  """Row indices into train_split (labelled, validation) and the test set."""

  labelled: np.ndarray
  # Empty unless validation='rest' ('holdout' and 'cv' use `labelled`).
  validation: np.ndarray
  # Into test_split, or into train_split when there is no test_split.
  test: np.ndarray


def balanced_draw(
  labels: np.ndarray, num: int, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
  """Sorted indices of `num` examples, num // K of each class (the remainder
  to classes chosen by `rng`); a ValueError if a class has too few."""
  per_class = np.full(num_classes, num // num_classes)
  per_class[rng.permutation(num_classes)[: num % num_classes]] += 1
  drawn = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    if len(members) < per_class[c]:
      raise ValueError(
        f'A class-balanced draw of {num} labels needs {per_class[c]} examples '
        f'of class {c}, which has {len(members)}; lower --num_labels.'
      )
    drawn.append(rng.permutation(members)[: per_class[c]])
  return np.sort(np.concatenate(drawn))


def draw_split(
  probe: Probe,
  train_labels: np.ndarray,
  num_classes: int,
  *,
  num_test_split: int | None,
  num_labels: int | None,
  seed: int,
) -> Split:
  """The labelled, validation and test examples: a pure function of the seed.

  num_test_split: the size of probe.test_split (None when there is none).
  """
  n = len(train_labels)
  num_labels = probe.num_labels if num_labels is None else num_labels
  rng = np.random.default_rng([seed, 0x70726F62])  # 'prob'
  reserved = probe.num_validation if probe.validation == 'rest' else 0
  if probe.test_split is None:
    reserved += 1  # At least one test example.
  if num_labels is None:
    if reserved:
      raise ValueError(
        'This probe draws validation or test examples from the labelled split, '
        'so it needs a number of labels: pass --num_labels.'
      )
    labelled = np.arange(n)
  else:
    if not 1 <= num_labels <= n - reserved:
      raise ValueError(
        f'num_labels={num_labels} must be in [1, {n - reserved}]: split '
        f'{probe.train_split!r} of {probe.dataset} has {n} examples, '
        f'{reserved} of which the probe keeps for validation/test.'
      )
    labelled = balanced_draw(train_labels, num_labels, num_classes, rng)
  _check_enough_for_validation(probe, len(labelled), num_classes)
  rest = rng.permutation(np.setdiff1d(np.arange(n), labelled))
  num_validation = probe.num_validation if probe.validation == 'rest' else 0
  validation, rest = np.sort(rest[:num_validation]), rest[num_validation:]
  test = rest if probe.test_split is None else rng.permutation(num_test_split)
  if probe.num_test is not None:
    test = test[: probe.num_test]
  return Split(labelled, validation, np.sort(test))


def _check_enough_for_validation(
  probe: Probe, num_labelled: int, num_classes: int
) -> None:
  if probe.validation == 'cv' and num_labelled < probe.cv_folds * num_classes:
    raise ValueError(
      f'{probe.cv_folds}-fold cross-validation over {num_classes} classes needs '
      f'at least {probe.cv_folds * num_classes} labels, got {num_labelled}; '
      'raise --num_labels.'
    )
  if probe.validation == 'holdout' and holdout_size(probe, num_labelled) < 1:
    raise ValueError(
      f'Holding out a fifth of {num_labelled} labelled examples to choose C '
      'leaves none to validate on; raise --num_labels.'
    )


def holdout_size(probe: Probe, num_labelled: int) -> int:
  """Labelled examples held out to choose C ('holdout'): num_validation, at
  most a fifth of them."""
  return min(probe.num_validation, num_labelled // 5)


# ----------------------------------------------------------------------------
# The L2-SVM.


@dataclasses.dataclass(frozen=True)
class L2SVM:
  """A fitted linear L2-SVM on standardised features (one vs rest)."""

  mean: np.ndarray  # [F] Standardisation: (x - mean) / scale.
  scale: np.ndarray  # [F]
  coef: np.ndarray  # [K, F] (K = 1 for two classes), on standardised x.
  intercept: np.ndarray  # [K]
  classes: np.ndarray  # [num classes seen when fitting]
  C: float

  def predict(self, x: np.ndarray) -> np.ndarray:
    """The predicted class of each row of raw (unstandardised) features x."""
    weights = self.coef / self.scale  # Standardisation folded in.
    bias = self.intercept - weights @ self.mean
    predictions = []
    for start in range(0, len(x), _PREDICT_ROWS):  # Bounded float64 copies.
      scores = x[start : start + _PREDICT_ROWS].astype(np.float64) @ weights.T
      scores += bias
      if len(self.classes) == 2:
        chosen = (scores[:, 0] > 0).astype(int)
      else:
        chosen = scores.argmax(axis=1)
      predictions.append(self.classes[chosen])
    return np.concatenate(predictions) if predictions else self.classes[:0]

  def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
    return float((self.predict(x) == y).mean())


class SVMTrainer:
  """Fits L2-SVMs on subsets of one set of labelled rows (for choosing C).

  The rows are standardised with the mean and scale of all of them. With
  fewer rows than features, the SVMs are fit on the rows' coordinates in
  their own span (from the eigendecomposition of their Gram matrix) and the
  coefficients mapped back: the same solution (the L2-SVM's weights lie in
  the span of its training rows, and the map keeps norms and products), with
  at most n instead of F features, so liblinear runs several times faster.
  """

  def __init__(self, x: np.ndarray):
    scaler = preprocessing.StandardScaler().fit(x)
    self.mean = scaler.mean_
    self.scale = scaler.scale_
    standardised = scaler.transform(x).astype(np.float64)
    n, num_features = standardised.shape
    self._lift = None
    self.rows = standardised
    if n < num_features:
      eigenvalues, eigenvectors = np.linalg.eigh(standardised @ standardised.T)
      keep = eigenvalues > eigenvalues.max(initial=0.0) * 1e-10
      roots = np.sqrt(eigenvalues[keep])
      self.rows = eigenvectors[:, keep] * roots  # [n, rank]: same Gram.
      self._lift = (eigenvectors[:, keep] / roots, standardised)

  def fit(self, subset: np.ndarray, y: np.ndarray, c: float, *, seed: int) -> L2SVM:
    """LinearSVC(penalty='l2', loss='squared_hinge', C=c) on rows[subset], y.

    The dual problem unless there are many more rows than features (more
    than _PRIMAL_RATIO times), where liblinear's primal solver is cheaper;
    in span coordinates there are never more features than rows, and the
    dual was several times faster there (measured on MNIST, 1,000 rows).
    """
    rows = self.rows[subset]
    classifier = svm.LinearSVC(
      penalty='l2',
      loss='squared_hinge',
      dual=bool(rows.shape[0] <= _PRIMAL_RATIO * rows.shape[1]),
      C=c,
      max_iter=_SVM_MAX_ITER,
      random_state=seed,
    )
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter('always', exceptions.ConvergenceWarning)
      classifier.fit(rows, y)
    if any(issubclass(w.category, exceptions.ConvergenceWarning) for w in caught):
      logging.warning(
        'LinearSVC(C=%g) did not converge in %d iterations.', c, _SVM_MAX_ITER
      )
    coef = classifier.coef_
    if self._lift is not None:
      to_rows, standardised = self._lift
      coef = (coef @ to_rows.T) @ standardised
    return L2SVM(
      self.mean, self.scale, coef, classifier.intercept_, classifier.classes_, c
    )


def fit_svm(x: np.ndarray, y: np.ndarray, c: float, *, seed: int = 0) -> L2SVM:
  """A linear L2-SVM with penalty C on features x (standardised on x), labels y."""
  return SVMTrainer(x).fit(np.arange(len(x)), y, c, seed=seed)


def choose_c(
  probe: Probe,
  trainer: SVMTrainer,
  x: np.ndarray,
  y: np.ndarray,
  x_val: np.ndarray,
  y_val: np.ndarray,
  *,
  seed: int,
) -> tuple[float, dict[str, float]]:
  """(best C, validation accuracy per C) on the probe's validation data.

  x, y: the labelled rows (those of `trainer`). Ties go to the smaller C.
  """
  if probe.validation == 'cv':
    folds = model_selection.StratifiedKFold(
      probe.cv_folds, shuffle=True, random_state=seed
    )
    splits = list(folds.split(x, y))
  elif probe.validation == 'holdout':
    order = np.random.default_rng([seed, 1]).permutation(len(y))
    held_out = holdout_size(probe, len(y))
    splits = [(np.sort(order[held_out:]), order[:held_out])]
  else:  # 'rest': fit on all labelled rows, validate on x_val.
    splits = [(np.arange(len(y)), None)]
  scores = {}
  for c in sorted(probe.c_grid):
    start = time.perf_counter()
    accuracies = []
    for fit, val in splits:
      model = trainer.fit(fit, y[fit], c, seed=seed)
      if val is None:
        accuracies.append(model.accuracy(x_val, y_val))
      else:
        accuracies.append(model.accuracy(x[val], y[val]))
    scores[c] = float(np.mean(accuracies))
    progress.info(
      '  C=%g: validation accuracy %.4f (%d fits, %.1f s)',
      c,
      scores[c],
      len(splits),
      time.perf_counter() - start,
    )
  best = max(scores, key=lambda c: scores[c])  # The first (smallest) of ties.
  if len(scores) > 1 and best in (min(scores), max(scores)):
    logging.warning(
      'The best C (%g) is at the edge of the grid %s; a wider grid may do better.',
      best,
      sorted(scores),
    )
  return best, {f'{c:g}': v for c, v in scores.items()}


def evaluate_representation(
  probe: Probe,
  features: tuple[np.ndarray, np.ndarray, np.ndarray],
  labels: tuple[np.ndarray, np.ndarray, np.ndarray],
  *,
  seed: int,
) -> dict[str, Any]:
  """C from the validation data, refit on all labelled rows, test accuracy.

  features, labels: the (labelled, validation, test) rows.
  """
  (x, x_val, x_test), (y, y_val, y_test) = features, labels
  start = time.perf_counter()
  trainer = SVMTrainer(x)
  c, scores = choose_c(probe, trainer, x, y, x_val, y_val, seed=seed)
  model = trainer.fit(np.arange(len(y)), y, c, seed=seed)
  accuracy = model.accuracy(x_test, y_test)
  return {
    'accuracy': accuracy,
    'test_error': 1.0 - accuracy,
    'C': c,
    'validation_accuracy': scores,
    'num_features': int(x.shape[1]),
    'svm_seconds': round(time.perf_counter() - start, 2),
  }


# ----------------------------------------------------------------------------
# The probe of a workdir.


def _check_probe_settings(probe: Probe) -> None:
  if probe.validation not in VALIDATIONS:
    raise ValueError(
      f'Probe validation={probe.validation!r}: use one of {VALIDATIONS}.'
    )
  if probe.validation in ('rest', 'holdout') and probe.num_validation < 1:
    raise ValueError(f'validation={probe.validation!r} needs num_validation >= 1.')
  if not probe.c_grid or min(probe.c_grid) <= 0:
    raise ValueError(f'c_grid must hold positive values, got {probe.c_grid}.')


def resolve_probe(probe: str | Probe) -> tuple[str, Probe]:
  """(name, Probe) of a preset name or a Probe (named 'custom')."""
  if isinstance(probe, Probe):
    _check_probe_settings(probe)
    return 'custom', probe
  if probe not in PROBES:
    raise ValueError(f'Unknown probe {probe!r}; use one of {sorted(PROBES)}.')
  return probe, PROBES[probe]


def _load(
  probe: Probe,
  config: ml_collections.ConfigDict,
  split: str,
  data_dir: str | None,
) -> tuple[np.ndarray, np.ndarray, int]:
  """(uint8 images at the workdir's size, labels, num_classes) of a split."""
  kwargs = dict(
    dataset=probe.dataset,
    split=split,
    data_dir=data_dir if data_dir is not None else config.get('data_dir'),
    download=config.get('download', True),
  )
  try:
    images = input_pipeline.load_images(
      image_size=config.image_size,
      num_channels=config.num_channels,
      crop=config.get('crop', 'center'),
      **kwargs,
    )
    labels, num_classes = input_pipeline.load_labels(**kwargs)
  except (ValueError, FileNotFoundError, RuntimeError) as e:
    raise ValueError(
      f'The probe needs split {split!r} of {probe.dataset!r}: {e}'
    ) from e
  if len(labels) != len(images):
    raise ValueError(
      f'{probe.dataset!r} split {split!r} has {len(images)} images but '
      f'{len(labels)} labels.'
    )
  return images, labels, num_classes


def _probe_rows(
  probe: Probe,
  config: ml_collections.ConfigDict,
  *,
  num_labels: int | None,
  seed: int,
  data_dir: str | None,
) -> tuple[Split, list[np.ndarray], tuple[np.ndarray, ...]]:
  """(split, uint8 images, labels) of the labelled, validation and test rows."""
  train_images, train_labels, num_classes = _load(
    probe, config, probe.train_split, data_dir
  )
  if probe.test_split is None:
    test_images, test_labels = train_images, train_labels
  else:
    test_images, test_labels, _ = _load(probe, config, probe.test_split, data_dir)
  split = draw_split(
    probe,
    train_labels,
    num_classes,
    num_test_split=None if probe.test_split is None else len(test_labels),
    num_labels=num_labels,
    seed=seed,
  )
  images = [
    train_images[split.labelled],
    train_images[split.validation],
    test_images[split.test],
  ]
  labels = (
    train_labels[split.labelled],
    train_labels[split.validation],
    test_labels[split.test],
  )
  return split, images, labels


def run_probe(
  workdir: str,
  probe: str | Probe,
  *,
  num_labels: int | None = None,
  seed: int = 0,
  data_dir: str | None = None,
  batch_size: int = 256,
) -> dict[str, Any]:
  """Probes W's latest checkpoint; writes and returns the report.

  probe: a name in PROBES, or a Probe (reported as 'custom'). num_labels
  overrides the probe's; data_dir, the workdir config's TFDS data_dir. The
  report holds each representation's test accuracy, chosen C, validation
  scores and timings, the split sizes and the paper's figure.
  """
  start = time.perf_counter()
  name, probe = resolve_probe(probe)
  d_features.discriminator_for(rundir.load_config(workdir))  # Fails early: 'mlp'.
  run = rundir.load_run(workdir)
  config, state = run.config, run.state
  split, images, labels = _probe_rows(
    probe, config, num_labels=num_labels, seed=seed, data_dir=data_dir
  )
  d_variables = {
    'd_features': {'params': state.d_params, 'batch_stats': state.d_batch_stats},
    'random_d': state_lib.initial_d_variables(config),
  }
  results = {}
  for rep in REPRESENTATIONS:
    t = time.perf_counter()
    if rep == 'pixels':
      features = tuple(
        input_pipeline.scale_images(x).reshape(len(x), int(np.prod(x.shape[1:])))
        for x in images
      )
    else:
      features = tuple(
        d_features.discriminator_features(
          config, d_variables[rep], x, batch_size=batch_size
        )
        for x in images
      )
    feature_seconds = round(time.perf_counter() - t, 2)
    progress.info(
      '%s: %d features in %.1f s; choosing C from %s',
      rep,
      features[0].shape[1],
      feature_seconds,
      sorted(probe.c_grid),
    )
    results[rep] = evaluate_representation(probe, features, labels, seed=seed)
    results[rep]['feature_seconds'] = feature_seconds
    progress.info(
      '%s: test accuracy %.4f (C=%g)', rep, results[rep]['accuracy'], results[rep]['C']
    )
    del features  # Large for the paper's set-ups: one representation at a time.
  held_out = holdout_size(probe, len(split.labelled))
  variant = name
  if num_labels is not None and num_labels != probe.num_labels:
    variant += f'_labels{num_labels}'
  if seed:
    variant += f'_seed{seed}'
  report = {
    'probe': name,
    'variant': variant,
    'step': int(state.step),
    'seed': seed,
    'dataset': probe.dataset,
    'train_split': probe.train_split,
    'test_split': probe.test_split or probe.train_split,
    'image_shape': list(images[0].shape[1:]),
    'num_labelled': len(split.labelled),
    'validation': probe.validation,
    'num_validation': (
      held_out if probe.validation == 'holdout' else len(split.validation)
    ),
    'num_test': len(split.test),
    'results': results,
    'representations': REPRESENTATIONS,
    'paper': probe.paper,
    'protocol': dataclasses.asdict(probe),
    'seconds': round(time.perf_counter() - start, 2),
  }
  write_report(workdir, report)
  return report


def report_path(workdir: str, report: dict[str, Any]) -> str:
  """W/eval/probe_<variant>_step_<step>.json."""
  name = f'probe_{report["variant"]}_step_{report["step"]}.json'
  return files.join(workdir, rundir.EVAL_DIR, name)


def write_report(workdir: str, report: dict[str, Any]) -> str:
  """The JSON report (atomically) and TensorBoard scalars in W/eval.

  Named after the report's variant: the probe's name, plus _labels<N> when
  num_labels overrides the probe's and _seed<S> when the seed is not 0, so
  that such runs do not overwrite the default one; the scalars are
  probe/<variant>/<representation>_accuracy.
  """
  name, step = report['variant'], report['step']
  path = report_path(workdir, report)
  files.write_json(path, report)
  scalars = {}
  for rep, result in report['results'].items():
    scalars[f'probe/{name}/{rep}_accuracy'] = result['accuracy']
  writer = event_writer.create_writer(files.join(workdir, rundir.EVAL_DIR))
  writer.write_scalars(step, scalars)
  writer.flush()
  writer.close()
  return path


def summary(report: dict[str, Any]) -> str:
  """The report as a table."""
  protocol = report['protocol']
  if report['validation'] == 'cv':
    chosen = f'{protocol["cv_folds"]}-fold CV on them'
  elif report['validation'] == 'holdout':
    chosen = f'{report["num_validation"]:,} of them held out'
  else:
    chosen = f'{report["num_validation"]:,} further examples'
  lines = [
    f'probe {report["variant"]} at step {report["step"]}: {report["dataset"]}, '
    f'{report["num_labelled"]:,} labelled (split {report["train_split"]!r}, '
    f'seed {report["seed"]}), C by {chosen}, {report["num_test"]:,} test '
    f'(split {report["test_split"]!r})',
    f'  {"representation":<22}{"features":>9}{"C":>9}{"test accuracy":>15}',
  ]
  for rep, title in REPRESENTATIONS.items():
    r = report['results'][rep]
    lines.append(
      f'  {title:<22}{r["num_features"]:>9,}{r["C"]:>9g}{r["accuracy"]:>15.4f}'
    )
  if report['paper']:
    lines.append(f'  paper: {report["paper"]}')
  return '\n'.join(lines)
