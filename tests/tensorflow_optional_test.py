"""TensorFlow is an optional extra: what runs without it, and what says so.

The processes started here put tests/without_tensorflow on PYTHONPATH,
whose sitecustomize makes `import tensorflow` fail as in an environment
without the 'tf' extra; where TensorFlow is not installed at all (CI's
second environment) they run the same way.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import runs

WITHOUT_TF = os.path.join(runs.REPO, 'tests', 'without_tensorflow')

# A small TFDS data set with encoded images and labels, defined where the
# processes below can import it; TFDS's own writer prepares it.
_BUILDER = textwrap.dedent(
  """
  import numpy as np
  import tensorflow_datasets as tfds
  from PIL import Image

  def pixels(i):
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, (20 + i % 3, 24, 3), np.uint8)

  class TinyPictures(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(None, None, 3)),
          'label': tfds.features.ClassLabel(num_classes=3),
        }),
        disable_shuffling=True,
      )

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples()}

    def _generate_examples(self):
      for i in range(10):
        yield i, {'image': Image.fromarray(pixels(i)), 'label': i % 3}
  """
)


def _env(without_tf: bool) -> dict[str, str]:
  env = dict(os.environ)
  paths = [runs.REPO] + ([WITHOUT_TF] if without_tf else [])
  env['PYTHONPATH'] = os.pathsep.join(paths + [env.get('PYTHONPATH', '')])
  return env


def _python(tmp_path, code: str, *, without_tf: bool = True):
  (tmp_path / 'tiny_pictures.py').write_text(_BUILDER)
  return subprocess.run(
    [sys.executable, '-c', textwrap.dedent(code)],
    cwd=tmp_path,
    env=_env(without_tf),
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_the_blocker_hides_tensorflow(tmp_path):
  result = _python(
    tmp_path,
    """
    try:
      import tensorflow
    except ModuleNotFoundError as e:
      print('hidden:', e.name)
    """,
  )
  assert result.stdout.strip() == 'hidden: tensorflow', result.stderr


def test_an_array_record_data_set_is_read_without_tensorflow(tmp_path):
  """Prepared by TFDS's writer as ArrayRecord files, read through TFDS's
  data-source API: the same pixels and labels as preprocessing the
  generated images directly, and TensorFlow never imported."""
  result = _python(
    tmp_path,
    f"""
    import sys
    import numpy as np
    import tensorflow_datasets as tfds
    import tiny_pictures
    from dcgan_jax.data import input_pipeline as ip, preprocess

    data_dir = {str(tmp_path / 'tfds')!r}
    builder = tfds.builder('tiny_pictures', data_dir=data_dir, file_format='array_record')
    builder.download_and_prepare()
    images = ip.load_images(
      dataset='tiny_pictures', image_size=16, num_channels=3, data_dir=data_dir,
      download=False)
    labels, classes = ip.load_labels(dataset='tiny_pictures', data_dir=data_dir)
    expected = np.stack([
      preprocess.preprocess(tiny_pictures.pixels(i), image_size=16,
                            num_channels=3, crop='center')
      for i in range(10)])
    np.testing.assert_array_equal(images, expected)
    assert labels.tolist() == [i % 3 for i in range(10)] and classes == 3
    assert 'tensorflow' not in sys.modules
    print('ok', images.shape)
    """,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.splitlines()[-1] == 'ok (10, 16, 16, 3)'


def test_a_tfrecord_data_set_without_tensorflow_asks_for_the_extra(tmp_path):
  pytest.importorskip('tensorflow')  # To write the TFRecord files.
  prepare = _python(
    tmp_path,
    f"""
    import tensorflow_datasets as tfds
    import tiny_pictures
    tfds.builder('tiny_pictures', data_dir={str(tmp_path / 'tfds')!r}).download_and_prepare()
    """,
    without_tf=False,
  )
  assert prepare.returncode == 0, prepare.stderr[-3000:]
  result = _python(
    tmp_path,
    f"""
    import tiny_pictures
    from dcgan_jax.data import input_pipeline as ip
    try:
      ip.load_images(dataset='tiny_pictures', image_size=16, num_channels=3,
                     data_dir={str(tmp_path / 'tfds')!r}, download=False)
    except RuntimeError as e:
      print(e)
    """,
  )
  message = result.stdout.strip().splitlines()[-1]
  assert '\n' not in message, result.stderr[-3000:]
  assert (
    "is stored as tfrecord files, which are read through TensorFlow: install the 'tf' extra"
    in message
  )
  assert '--file_format=array_record' in message


def _train_digits(workdir, data_dir, without_tf: bool) -> dict:
  command = runs.launch_command(
    workdir,
    data_dir,
    num_train_steps=20,
    checkpoint_every_steps=10,
    sample_every_steps=10,
    log_every_steps=10,
  )
  result = subprocess.run(
    command,
    cwd=runs.REPO,
    env=_env(without_tf),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, 'manifest.json')) as f:
    return json.load(f)


def test_the_digits_train_the_same_bits_with_and_without_tensorflow(tmp_path):
  """The digits preset (shrunk) by launch.py, in one process that cannot
  import TensorFlow and one that can (where it is installed): the same
  data fingerprint and the same checkpoint digests."""
  without = _train_digits(tmp_path / 'without', str(tmp_path / 'tfds_a'), True)
  with_tf = _train_digits(tmp_path / 'with', str(tmp_path / 'tfds_b'), False)
  assert without['data']['fingerprint'] == with_tf['data']['fingerprint']
  digests = {step: c['sha256'] for step, c in without['checkpoints'].items()}
  assert sorted(digests, key=int) == ['10', '20']
  assert digests == {step: c['sha256'] for step, c in with_tf['checkpoints'].items()}


def _unshare_works() -> bool:
  if shutil.which('unshare') is None:
    return False
  probe = subprocess.run(['unshare', '--net', 'true'], capture_output=True)
  return probe.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason='needs `unshare --net` (root)')
def test_an_unprepared_tfds_data_set_without_network_fails_at_once(tmp_path):
  """configs/celeba.py with an empty data_dir, in a network namespace with
  no network: one Error line within 10 s of the start, and nothing written
  into the workdir (which does not exist before)."""
  workdir = tmp_path / 'celeba'
  start = time.monotonic()
  result = subprocess.run(
    [
      'unshare',
      '--net',
      sys.executable,
      'launch.py',
      '--config=configs/celeba.py',
      f'--workdir={workdir}',
      f'--config.data_dir={tmp_path / "tfds"}',
    ],
    cwd=runs.REPO,
    env=_env(without_tf=True),
    capture_output=True,
    text=True,
    timeout=120,
  )
  elapsed = time.monotonic() - start
  assert result.returncode != 0
  lines = [line for line in result.stderr.splitlines() if line.startswith('Error:')]
  assert len(lines) == 1, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1] == lines[0]  # The last line.
  assert 'Traceback' not in result.stderr and 'dataset_info.json' not in result.stderr
  assert "TFDS data set 'celeb_a' is not prepared" in lines[0]
  assert 'cannot download: no answer from' in lines[0]
  # Minutes of download retries before; 10 s on an idle machine (docs/install.md),
  # more where the test workers load the cores while it starts up.
  assert elapsed < 60, f'{elapsed:.1f} s'
  assert not workdir.exists()


def test_preprocessing_needs_no_tensorflow_and_matches_it():
  """Where TensorFlow is installed: preprocess.py's resize gives the bytes
  tf.image.resize(antialias=True) gives, upscaling and downscaling."""
  tf = pytest.importorskip('tensorflow')
  from dcgan_jax.data import preprocess

  rng = np.random.default_rng(0)
  for shape, size, crop in [
    ((8, 8, 1), 32, 'center'),
    ((28, 28, 1), 64, 'none'),
    ((218, 178, 3), 64, 'celeba'),
    ((100, 150, 3), 37, 'center'),
    ((500, 375, 3), 64, 'center'),
  ]:
    image = rng.integers(0, 256, shape, np.uint8)
    ours = preprocess.preprocess(
      image, image_size=size, num_channels=shape[-1], crop=crop
    )
    x = tf.cast(image, tf.float32)
    height, width = shape[:2]
    side = min(height, width, 108) if crop == 'celeba' else min(height, width)
    if crop != 'none':
      top, left = (height - side) // 2, (width - side) // 2
      x = x[top : top + side, left : left + side]
    resized = tf.image.resize(x, [size, size], method='bilinear', antialias=True)
    reference = tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)
    np.testing.assert_array_equal(ours, reference.numpy())


def test_tensorboard_reads_a_gs_logdir_without_tensorflow(tmp_path, gcs_bucket):
  """The run's event files in a bucket, read by TensorBoard's own loader in
  a process that cannot import TensorFlow (TensorBoard then reaches gs://
  through fsspec and gcsfs, as `tensorboard --logdir=gs://...` does)."""
  del gcs_bucket  # The server, found through STORAGE_EMULATOR_HOST.
  logdir = 'gs://dcgan-test/tensorboard_without_tf'
  result = _python(
    tmp_path,
    f"""
    import sys
    from dcgan_jax.util import event_writer
    writer = event_writer.EventFileWriter({logdir!r})
    for step in range(3):
      writer.write_scalars(step, {{'g_loss': 1.0 + step}})
    writer.flush()
    from tensorboard.backend.event_processing import event_accumulator
    accumulator = event_accumulator.EventAccumulator({logdir!r})
    accumulator.Reload()
    tensors = accumulator.Tensors('g_loss')
    print([e.step for e in tensors])
    assert 'tensorflow' not in sys.modules
    """,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.splitlines()[-1] == '[0, 1, 2]'
