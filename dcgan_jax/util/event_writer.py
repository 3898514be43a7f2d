"""TensorBoard event files written through the project's file layer.

`create_writer(logdir)` is clu's default writer (log lines plus TensorBoard)
with its TensorBoard half replaced by `EventFileWriter`, which writes the
same event files (TFRecord-framed `Event` protos, the summaries built by
TensorBoard's own plugins) through `util.files`, so a `gs://` logdir uses
the same client as every other file (clu's `SummaryWriter` goes through
TensorFlow's file system instead).

A local event file is appended to and flushed, as TensorFlow does. A
Cloud Storage object cannot be appended to: on each flush the whole
current file is uploaded again (what TensorFlow's own GCS writer does), and
a new file is started once it reaches `max_file_bytes`. TensorBoard reads
the files of a directory in name order, and names start with the time.
"""

import io
import itertools
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from clu import metric_writers
from clu.internal import utils as clu_utils
from clu.metric_writers import interface
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.histogram import summary_v2 as histogram_summary
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import summary_v2 as scalar_summary
from tensorboard.plugins.text import summary_v2 as text_summary
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboard.util import tensor_util

from dcgan_jax.util import files

_counter = itertools.count()


class EventFileWriter(interface.MetricWriter):
  """A clu `MetricWriter` of TensorBoard event files in `logdir` (a local
  directory or a URL)."""

  def __init__(self, logdir: str, *, max_file_bytes: int = 16 << 20):
    self._logdir = files.check(logdir, 'TensorBoard logdir')
    self._url = files.is_url(self._logdir)
    self._max_file_bytes = max_file_bytes
    self._path = None
    self._buffer = io.BytesIO()  # The current file's records not yet written.
    self._written = b''  # A URL's current file as last uploaded.
    self._records = RecordWriter(self._buffer)
    self._dirty = False

  def _new_file(self) -> None:
    name = (
      f'events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.'
      f'{os.getpid()}.{next(_counter)}.v2'
    )
    self._path = files.join(self._logdir, name)
    self._written = b''
    event = event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2')
    self._records.write(event.SerializeToString())

  def _write(self, step: int, values: list[summary_pb2.Summary.Value]) -> None:
    if not values:
      return
    if self._path is None:
      self._new_file()
    event = event_pb2.Event(
      wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)
    )
    self._records.write(event.SerializeToString())
    self._dirty = True

  def write_summaries(self, step, values, metadata=None):
    out = []
    for tag, value in values.items():
      summary_metadata = summary_pb2.SummaryMetadata()
      if metadata and metadata.get(tag) is not None:
        summary_metadata.ParseFromString(metadata[tag])
      out.append(
        summary_pb2.Summary.Value(
          tag=tag,
          metadata=summary_metadata,
          tensor=tensor_util.make_tensor_proto(np.asarray(value)),
        )
      )
    self._write(step, out)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    self._write(
      step,
      [
        v
        for tag, x in scalars.items()
        for v in scalar_summary.scalar_pb(tag, float(np.asarray(x))).value
      ],
    )

  def write_images(self, step: int, images: Mapping[str, Any]):
    out = []
    for tag, batch in images.items():
      batch = np.asarray(batch)
      if batch.ndim == 3:
        batch = batch[None]
      if batch.dtype != np.uint8:  # Floats in [0, 1], as clu's writer takes.
        batch = np.clip(np.round(batch * 255.0), 0, 255).astype(np.uint8)
      encoded = []
      for image in batch:
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
          buffer, format='PNG'
        )
        encoded.append(buffer.getvalue())
      height, width = batch.shape[1:3]
      tensor = np.array([str(width).encode(), str(height).encode(), *encoded], object)
      out.append(
        summary_pb2.Summary.Value(
          tag=tag,
          metadata=image_metadata.create_summary_metadata(
            display_name=tag, description='', converted_to_tensor=True
          ),
          tensor=tensor_util.make_tensor_proto(tensor),
        )
      )
    self._write(step, out)

  def write_texts(self, step: int, texts: Mapping[str, str]):
    self._write(
      step,
      [v for tag, t in texts.items() for v in text_summary.text_pb(tag, t).value],
    )

  def write_histograms(self, step, arrays, num_buckets=None):
    out = []
    for tag, values in arrays.items():
      buckets = (num_buckets or {}).get(tag) if num_buckets else None
      pb = histogram_summary.histogram_pb(tag, np.asarray(values), buckets=buckets)
      out.extend(pb.value)
    self._write(step, out)

  def write_hparams(self, hparams: Mapping[str, Any]):
    self._write(
      0, list(hparams_summary.hparams_pb(dict(clu_utils.flatten_dict(hparams))).value)
    )

  def write_videos(self, step, videos):
    raise NotImplementedError('video summaries are not written')

  def write_audios(self, step, audios, *, sample_rate):
    raise NotImplementedError('audio summaries are not written')

  def flush(self):
    if not self._dirty:
      return
    data = self._buffer.getvalue()
    self._buffer.seek(0)
    self._buffer.truncate()
    if self._url:
      self._written += data
      files.write_atomic(self._path, self._written)
    else:
      files.makedirs(self._logdir)
      with open(self._path, 'ab') as f:
        f.write(data)
    self._dirty = False
    if self._url and len(self._written) >= self._max_file_bytes:
      self._path = None  # The next write starts a new file.

  def close(self):
    self.flush()


def create_writer(
  logdir: str | None, *, just_logging: bool = False
) -> metric_writers.MultiWriter:
  """Log lines, plus TensorBoard event files in `logdir` unless
  `just_logging` (processes other than 0 of a multi-host run)."""
  writers: list[interface.MetricWriter] = [metric_writers.LoggingWriter()]
  if logdir is not None and not just_logging:
    writers.append(EventFileWriter(logdir))
  return metric_writers.AsyncMultiWriter(writers)
