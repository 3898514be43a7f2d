"""What a run was: config, versions, hardware, code revision and data.

`WORKDIR/manifest.json` is written when a run starts and extended each time
it is resumed (`launches`) and each time a checkpoint is committed
(`checkpoints`: the `state_digest` of its arrays, checked on resume). Resuming checks that nothing which shapes the
trajectory changed: the config (all but the keys in `RESUMABLE_KEYS`) and
the data set's fingerprint.
"""

import datetime
import hashlib
import importlib.metadata
import os
import platform
import subprocess
from typing import Any

import jax
import ml_collections
import numpy as np

from dcgan_jax.util import files

MANIFEST_FILE = 'manifest.json'
# Keys that may change between launches of one run: they change how long it
# runs, what it logs and where data lives, not the numbers it computes.
RESUMABLE_KEYS = frozenset(
  {
    'num_train_steps',
    'log_every_steps',
    'sample_every_steps',
    'num_sample_images',
    'sample_batchnorm',
    'checkpoint_every_steps',
    'keep_checkpoints',
    'eval_every_steps',
    'eval_metrics',
    'eval_num_samples',
    'inception_weights',
    # Applies only where 'stop' would have ended the run.
    'nonfinite',
    'data_dir',
    'download',
    'cache',
    'cache_dir',
    'bad_images',  # The data fingerprint catches a change of images.
    'deterministic_gpu',
    'monitor_d_wins_window',
    'monitor_collapse_ratio',
    'monitor_collapse_warmup_steps',
  }
)
# Keys added after runs were first written, with the value that gives those
# runs' trajectory: a config without the key means this value.
INTRODUCED_KEYS = {
  'adam_eps': 1e-8,
  'weight_decay': 0.0,
  'lr_schedule': 'constant',
  'loss': 'bce',
  'gp_weight': 10.0,
  'update_order': 'sequential',
  'ema_decay': 0.0,
  'ema_start_step': 0,
  'model.init': 'normal',
  'model.d_spectral_norm': False,
  'conditional': False,
  'label_key': 'label',
  'model.num_classes': 0,
  'reduction_shards': 0,
}
_PACKAGES = (
  'jax',
  'jaxlib',
  'flax',
  'optax',
  'orbax-checkpoint',
  'tensorflow-datasets',
  'tensorflow-cpu',
  'pillow',  # Decodes images (data/preprocess.py).
  'numpy',
  'clu',
  'ml-collections',
)
_CHUNK = 1 << 26  # Bytes hashed at a time (memory maps stay paged out).


def fingerprint(images: np.ndarray) -> str:
  """sha256 of the preprocessed uint8 images, their shape included."""
  digest = hashlib.sha256(repr(images.shape).encode())
  flat = images.reshape(-1)
  for start in range(0, flat.size, _CHUNK):
    digest.update(np.ascontiguousarray(flat[start : start + _CHUNK]).data)
  return digest.hexdigest()


def state_digest(tree: Any) -> str:
  """sha256 of a state's arrays: each leaf's path, dtype, shape and bytes,
  in path order. Independent of how Orbax lays the checkpoint out on disk
  and of its metadata: the same numbers give the same digest."""
  digest = hashlib.sha256()
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
    array = np.ascontiguousarray(np.asarray(leaf))
    header = f'{jax.tree_util.keystr(path)}|{array.dtype.str}|{array.shape}|'
    digest.update(header.encode())
    flat = array.reshape(-1).view(np.uint8)
    for start in range(0, flat.size, _CHUNK):
      digest.update(flat[start : start + _CHUNK].data)
  return digest.hexdigest()


def record_checkpoint(workdir: str, step: int, digest: str) -> None:
  """Adds checkpoint `step`'s `state_digest` to WORKDIR/manifest.json
  (`checkpoints`: step -> {'sha256', 'launch'}); process 0 writes."""
  if jax.process_index() != 0:
    return
  record = load(workdir)
  if record is None:
    return
  launch = len(record.get('launches', [])) - 1
  record.setdefault('checkpoints', {})[str(step)] = {'sha256': digest, 'launch': launch}
  write(workdir, record)


def recorded_digest(workdir: str, step: int) -> str | None:
  """The digest manifest.json recorded for checkpoint `step` (None: none)."""
  record = load(workdir) or {}
  entry = record.get('checkpoints', {}).get(str(step))
  return None if entry is None else entry['sha256']


def code_revision() -> dict[str, Any]:
  """The git commit of this code and whether the tree had local changes."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  def git(*args: str) -> str | None:
    try:
      out = subprocess.run(
        ['git', *args], cwd=root, capture_output=True, text=True, timeout=10
      )
    except (OSError, subprocess.SubprocessError):
      return None
    return out.stdout.strip() if out.returncode == 0 else None

  commit = git('rev-parse', 'HEAD')
  if commit is None:
    return {'commit': None, 'dirty': None}
  return {'commit': commit, 'dirty': bool(git('status', '--porcelain'))}


def _versions() -> dict[str, str | None]:
  versions = {'python': platform.python_version()}
  for name in _PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions


def describe_launch(config: ml_collections.ConfigDict, start_step: int) -> dict:
  """This launch: when, on what, with which code."""
  devices = jax.devices()
  return {
    'time': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
    'start_step': start_step,
    'num_train_steps': config.num_train_steps,
    'backend': jax.default_backend(),
    'device_kind': devices[0].device_kind,
    'device_count': len(devices),
    'process_count': jax.process_count(),
    'xla_flags': os.environ.get('XLA_FLAGS', ''),
    'versions': _versions(),
    'code': code_revision(),
  }


def describe_data(config: ml_collections.ConfigDict, images: np.ndarray) -> dict:
  return {
    'name': config.dataset,
    'split': config.split,
    'num_examples': int(images.shape[0]),
    'shape': list(images.shape[1:]),
    'fingerprint': fingerprint(images),
  }


def trajectory_changes(
  old: ml_collections.ConfigDict, new: ml_collections.ConfigDict
) -> list[str]:
  """'key: old -> new' for every changed key outside RESUMABLE_KEYS (and
  num_train_steps where a learning-rate schedule depends on it)."""
  a = INTRODUCED_KEYS | _flatten(old.to_dict())
  b = INTRODUCED_KEYS | _flatten(new.to_dict())
  resumable = RESUMABLE_KEYS
  if 'linear' in (a['lr_schedule'], b['lr_schedule']):
    resumable = resumable - {'num_train_steps'}
  return [
    f'{key}: {a.get(key)!r} -> {b.get(key)!r}'
    for key in sorted(set(a) | set(b))
    if key not in resumable and a.get(key) != b.get(key)
  ]


def _flatten(tree: dict, prefix: str = '') -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat |= _flatten(value, f'{prefix}{key}.')
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def load(workdir: str) -> dict | None:
  path = os.path.join(workdir, MANIFEST_FILE)
  if not files.exists(path):
    return None
  return files.read_json(path)


def write(workdir: str, manifest: dict) -> None:
  """Writes WORKDIR/manifest.json atomically."""
  files.write_json(os.path.join(workdir, MANIFEST_FILE), manifest, sort_keys=True)
