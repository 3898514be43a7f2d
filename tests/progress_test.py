"""Progress lines: an ETA when a loop is slow, silence when it is quick."""

import pytest

from dcgan_jax import evaluate
from dcgan_jax.util import progress


class FakeClock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_slow_loop_prints_rate_and_eta_at_most_every_interval():
  clock, lines = FakeClock(), []
  count = progress.Progress(
    'Samples', 100, unit='images', clock=clock, write=lines.append, first=2, every=5
  )
  for _ in range(10):  # 1 s per 10 images.
    clock.now += 1
    count.update(10)
  count.close()
  # Quiet for 2 s; then at 2 s, 7 s, (every 5 s), and the closing line.
  assert lines == [
    'Samples: 20/100 images (20%), 10/s, ETA 00:08',
    'Samples: 70/100 images (70%), 10/s, ETA 00:03',
    'Samples: done, 100 in 00:10',
  ]


def test_quick_loop_prints_nothing():
  clock, lines = FakeClock(), []
  items = list(
    progress.track(range(1000), 'Quick', clock=clock, write=lines.append, first=2)
  )
  assert items == list(range(1000)) and lines == []


def test_track_counts_weights_and_formats_long_etas():
  clock, lines = FakeClock(), []

  def slow(items):
    for item in items:
      clock.now += 3
      yield item

  chunks = [[0] * 4] * 3000
  got = list(
    progress.track(
      slow(chunks), 'Rows', 12_000, weight=len, clock=clock, write=lines.append,
      first=2, every=3600,
    )
  )  # fmt: skip
  assert len(got) == 3000
  assert lines[0] == 'Rows: 4/12000 (0%), 1.33/s, ETA 2:29:57'
  assert lines[-1] == 'Rows: done, 12000 in 2:30:00'


def test_timed_reports_a_slow_block_only():
  clock, lines = FakeClock(), []
  with progress.timed('Compiling G', clock=clock, write=lines.append, first=60):
    clock.now += 0.5
  assert lines == []  # The announcement timer was cancelled.
  with progress.timed('Compiling G', clock=clock, write=lines.append, first=0):
    clock.now += 3.24
  assert lines == ['Compiling G ...', 'Compiling G: done in 3.2 s']


def test_interval_from_the_environment(monkeypatch):
  monkeypatch.setenv(progress.ENV_INTERVAL, '0')
  lines = []
  count = progress.Progress('Steps', 3, write=lines.append, clock=FakeClock())
  count.update()
  assert lines == ['Steps: 1/3 (33%)']


@pytest.mark.parametrize('interval', [None, '0'])
def test_evaluate_command_shows_progress_when_forced(
  tiny_digits_workdir, monkeypatch, capsys, interval
):
  if interval is None:
    monkeypatch.delenv(progress.ENV_INTERVAL, raising=False)
  else:
    monkeypatch.setenv(progress.ENV_INTERVAL, interval)
  evaluate.main(
    [
      f'--workdir={tiny_digits_workdir}',
      '--num_samples=20',
      '--metrics=memorization',
    ]
  )
  captured = capsys.readouterr()
  assert 'memorization_pixels_median_ratio' in captured.out
  stderr_lines = captured.err.splitlines()
  progress_lines = [
    line
    for line in stderr_lines
    if line.startswith(('Drawing samples', 'Compiling G', 'Nearest neighbours'))
  ]
  if interval is None:  # A quick evaluation: no progress lines.
    assert progress_lines == [], stderr_lines
  else:
    assert 'Drawing samples: 20/20 images (100%)' in captured.err
    assert 'Compiling G (and drawing its first chunk) ...' in stderr_lines
    assert any(
      line.startswith('Compiling G (and drawing its first chunk): done in ')
      for line in stderr_lines
    )
    assert "Nearest neighbours, D's features of the training images: " in captured.err
    assert "Metric 'memorization': done in " in captured.err


def test_a_slow_first_item_does_not_inflate_the_eta():
  clock, lines = FakeClock(), []
  count = progress.Progress(
    'Steps', 1000, clock=clock, write=lines.append, first=2, every=10
  )
  clock.now += 30  # Compiling.
  count.update()
  clock.now += 10
  count.update(500)  # 50/s since the first step.
  assert lines == [
    'Steps: 1/1000 (0%), 0.0333/s, ETA 8:19:30',
    'Steps: 501/1000 (50%), 50/s, ETA 00:10',
  ]
