"""Lets `clu.metric_writers` import without TensorFlow.

clu's `metric_writers` package imports its TensorFlow `SummaryWriter` at
import time, so `from clu import metric_writers` (and `periodic_actions`,
which imports it) would need TensorFlow installed, and with it installed
costs seconds of start-up. This project writes TensorBoard event files
with its own writer (`event_writer.py`), so before clu is first imported,
`install()` registers a stand-in for the one module that imports
TensorFlow: its `SummaryWriter` says what to use instead. Nothing else of
clu changes.
"""

import sys
import types

_MODULE = 'clu.metric_writers.summary_writer'


class SummaryWriter:
  """Stands in for clu's TensorFlow summary writer."""

  def __init__(self, *args, **kwargs):
    del args, kwargs
    raise RuntimeError(
      "clu's TensorFlow SummaryWriter is not loaded: use "
      'dcgan_jax.util.event_writer.create_writer, which writes the same files.'
    )


def install() -> None:
  """Registers the stand-in unless clu's module is already imported."""
  if _MODULE in sys.modules:
    return
  module = types.ModuleType(_MODULE, __doc__)
  module.SummaryWriter = SummaryWriter
  sys.modules[_MODULE] = module
