"""Progress lines with an ETA for loops that may run for minutes.

  for batch in progress.track(batches, 'Features of real images', total=n):
    ...

prints, on stderr, nothing while the loop is quick; once it has run for
`first` seconds (2 s) a line such as

  Features of real images: 12/40 (30%), 3.1/s, ETA 00:09

and then at most one line every `every` seconds (10 s), and a closing line
with the total time if anything was printed. `timed` does the same for one
long call (a compilation): a line once it has run for `first` seconds, and
one with its duration when it ends. Output only: nothing here changes what
the loop computes.

The environment variable DCGAN_PROGRESS_INTERVAL=<seconds> sets both `first`
and `every` (0: every update prints, as the tests force it).
"""

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar('T')

FIRST_S = 2.0  # Quiet for this long.
EVERY_S = 10.0  # Then at most one line per this many seconds.
ENV_INTERVAL = 'DCGAN_PROGRESS_INTERVAL'


def _intervals() -> tuple[float, float]:
  value = os.environ.get(ENV_INTERVAL)
  if value:
    return float(value), float(value)
  return FIRST_S, EVERY_S


def _stderr(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


def format_seconds(seconds: float) -> str:
  """mm:ss, or h:mm:ss from an hour on."""
  seconds = int(round(max(seconds, 0.0)))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  if hours:
    return f'{hours}:{minutes:02d}:{seconds:02d}'
  return f'{minutes:02d}:{seconds:02d}'


class Progress:
  """Counts `done` of `total` units of `what`; `update` prints a line when
  one is due (see the module docstring), `close` the closing line."""

  def __init__(
    self,
    what: str,
    total: int | None,
    *,
    unit: str = '',
    clock: Callable[[], float] = time.monotonic,
    write: Callable[[str], None] = _stderr,
    first: float | None = None,
    every: float | None = None,
  ):
    default_first, default_every = _intervals()
    self.what, self.total, self.unit = what, total, unit
    self._clock, self._write = clock, write
    self._first = default_first if first is None else first
    self._every = default_every if every is None else every
    self._start = clock()
    self._last = None  # When the last line was printed.
    self._first_update = None  # (time, done) of the first update.
    self.done = 0

  def update(self, n: int = 1) -> None:
    self.done += n
    now = self._clock()
    if self._first_update is None:
      self._first_update = now, self.done
    elapsed = now - self._start
    if self._last is None:
      due = elapsed >= self._first
    else:
      due = now - self._last >= self._every
    if due:
      self._last = now
      self._write(self.line(elapsed))

  def _rate(self, elapsed: float) -> float:
    """Units per second; from the first update on once there are more, so
    that a slow first item (a compilation) does not inflate the ETA."""
    t1, n1 = self._first_update or (None, 0)
    if t1 is not None and self.done > n1 and self._clock() > t1:
      return (self.done - n1) / (self._clock() - t1)
    return self.done / elapsed if elapsed > 0 else float('inf')

  def line(self, elapsed: float) -> str:
    unit = f' {self.unit}' if self.unit else ''
    rate = self._rate(elapsed)
    if self.total:
      text = (
        f'{self.what}: {self.done}/{self.total}{unit} ({self.done / self.total:.0%})'
      )
    else:
      text = f'{self.what}: {self.done}{unit}'
    if rate != float('inf'):
      text += f', {rate:.0f}/s' if rate >= 100 else f', {rate:.3g}/s'
    if self.total and 0 < rate < float('inf') and self.done < self.total:
      text += f', ETA {format_seconds((self.total - self.done) / rate)}'
    return text

  def close(self) -> None:
    """The closing line (total time), if any line was printed."""
    if self._last is not None:
      elapsed = self._clock() - self._start
      self._write(f'{self.what}: done, {self.done} in {format_seconds(elapsed)}')


def track(
  iterable: Iterable[T],
  what: str,
  total: int | None = None,
  *,
  weight: Callable[[T], int] | None = None,
  **kwargs,
) -> Iterator[T]:
  """Yields the items of `iterable`, counting each (or `weight(item)` units
  of it) after the loop body has run on it."""
  if total is None and hasattr(iterable, '__len__'):
    total = len(iterable)
  progress = Progress(what, total, **kwargs)
  for item in iterable:
    yield item
    progress.update(1 if weight is None else weight(item))
  progress.close()


@contextmanager
def timed(
  what: str,
  *,
  clock: Callable[[], float] = time.monotonic,
  write: Callable[[str], None] = _stderr,
  first: float | None = None,
) -> Iterator[None]:
  """`what ...` once the block has run for `first` seconds, then
  `what: done in 3.2 s` when it ends; nothing for a quicker block."""
  first = _intervals()[0] if first is None else first
  announced = threading.Event()

  def announce():
    announced.set()
    write(f'{what} ...')

  timer = None
  if first <= 0:
    announce()
  else:
    timer = threading.Timer(first, announce)
    timer.daemon = True
    timer.start()
  start = clock()
  try:
    yield
  finally:
    if timer is not None:
      timer.cancel()
    if announced.is_set():
      write(f'{what}: done in {clock() - start:.1f} s')
