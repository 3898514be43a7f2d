"""The command line every `python -m dcgan_jax.<command>` shares.

Flags are absl flags, spelled as launch.py's (`--name=value`, `--[no]name`
for booleans), each command with its own set (`Command`), so that commands
can also be called in-process with an argv list. `--help` lists every flag
with its default. A bad flag, and every error the library raises for bad
input, is one line on stderr, `Error: ...`, and exit status 1.
"""

import contextlib
import logging
import os
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from absl import flags

from dcgan_jax.util import files, library_noise
from dcgan_jax.util.errors import CheckpointError

# What a command reports in one line rather than as a traceback: bad input
# (values; ConfigError is a ValueError), files and directories it cannot read
# or write (OSError: missing, not a directory, a directory where a file
# goes, no permission, disk full) and unreadable checkpoints.
USER_ERRORS = (ValueError, OSError, CheckpointError)


def fail(message: str) -> NoReturn:
  """Exits with `Error: <message>` and status 1."""
  sys.exit(f'Error: {message}')


class Command:
  """A command's flags: define them with `string`, `integer`, ...; `run`
  parses an argv and calls the command's body with the parsed values."""

  def __init__(self, name: str, doc: str, subcommands: Sequence[str] = ()):
    self.name = name
    self.doc = doc
    self.subcommands = tuple(subcommands)  # The first argument picks one.
    self.flags = flags.FlagValues()
    self._order: list[str] = []
    self._required: set[str] = set()
    self._paths: set[str] = set()

  def _define(self, define: Callable[..., Any], name: str, *args, **kwargs) -> None:
    define(name, *args, flag_values=self.flags, **kwargs)
    self._order.append(name)

  def string(self, name: str, default: str | None, help: str, **kwargs) -> None:
    self._define(flags.DEFINE_string, name, default, help, **kwargs)

  def path(self, name: str, default: str | None, help: str) -> None:
    """A local path or a URL (`gs://...`); a scheme the file layer cannot
    serve is an error before the command runs."""
    self.string(name, default, help + ' A local path or a gs:// URL.')
    self._paths.add(name)

  def integer(self, name: str, default: int | None, help: str, **kwargs) -> None:
    self._define(flags.DEFINE_integer, name, default, help, **kwargs)

  def float(self, name: str, default: float | None, help: str, **kwargs) -> None:
    self._define(flags.DEFINE_float, name, default, help, **kwargs)

  def boolean(self, name: str, default: bool, help: str) -> None:
    self._define(flags.DEFINE_bool, name, default, help)

  def enum(
    self, name: str, default: str | None, values: Sequence[str], help: str
  ) -> None:
    self._define(flags.DEFINE_enum, name, default, list(values), help)

  def required(self, *names: str) -> None:
    self._required.update(names)

  def help(self) -> str:
    """The usage text: the docstring, then every flag with its default."""
    lines = [self.doc.strip(), '']
    if self.subcommands:
      lines += [f'Commands: {", ".join(self.subcommands)}.', '']
    lines.append('Flags:')
    for name in self._order:
      flag = self.flags[name]
      spelling = f'--[no]{name}' if flag.boolean else f'--{name}'
      if name in self._required:
        default = 'required'
      elif flag.boolean:
        default = f'default: {flag.default}'
      elif flag.default is not None:
        default = f'default: {flag.default!r}'
      else:
        default = '' if 'default' in flag.help else 'default: not set'
      text = flag.help + (f' ({default})' if default else '')
      lines.append(f'  {spelling}')
      lines += textwrap.wrap(
        text, 76, initial_indent='      ', subsequent_indent='      '
      )
    return '\n'.join(lines)

  def parse(self, argv: Sequence[str]) -> tuple[flags.FlagValues, str | None]:
    """(flag values, subcommand or None) of `argv` (without the program
    name). Prints the help and exits for --help; a bad or missing flag or
    subcommand is `Error: ...`."""
    if any(a in ('--help', '-h', '--helpfull', '--helpshort') for a in argv):
      print(self.help())
      sys.exit(0)
    self.flags.unparse_flags()
    try:
      rest = self.flags([self.name, *argv])
    except flags.Error as e:
      fail(f'{e} (python -m dcgan_jax.{self.name} --help lists the flags).')
    subcommand = None
    if self.subcommands:
      if len(rest) < 2 or rest[1] not in self.subcommands:
        given = f'got {rest[1]!r}' if len(rest) > 1 else 'got none'
        fail(
          f'the first argument must be one of {", ".join(self.subcommands)}; {given}.'
        )
      subcommand, rest = rest[1], rest[1:]
    if len(rest) > 1:
      fail(f'unexpected arguments {rest[1:]}; every option is a --flag=value.')
    missing = [
      n for n in self._order if n in self._required and self.flags[n].value is None
    ]
    if missing:
      fail(', '.join(f'--{n}' for n in missing) + ' must be given.')
    for name in self._order:
      if name in self._paths and self.flags[name].value is not None:
        try:
          files.check(self.flags[name].value, f'--{name}')
        except ValueError as e:
          fail(str(e))
    return self.flags, subcommand

  def run(self, body: Callable[..., None], argv: Sequence[str]):
    """Parses `argv` and runs body(flag values), or body(flag values,
    subcommand) for a command with subcommands; USER_ERRORS become one line."""
    values, subcommand = self.parse(argv)
    try:
      return body(values, subcommand) if self.subcommands else body(values)
    except USER_ERRORS as e:
      fail(str(e))


@contextlib.contextmanager
def log_to_stderr(logger: logging.Logger, fmt: str = '%(message)s') -> Iterator[None]:
  """Prints `logger`'s INFO lines on stderr while the block runs, each once:
  not also through the root logger's handler (which absl adds to a process
  not started by absl.app, at Orbax's first log call)."""
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter(fmt))
  level, propagate = logger.level, logger.propagate
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  logger.propagate = False
  try:
    yield
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)
    logger.propagate = propagate


def main_argv() -> list[str]:
  """This process's arguments, for commands run as `python -m
  dcgan_jax.<command>`; quiets TensorFlow's logs, and the libraries'
  tracebacks of an error the command reports (`library_noise`)."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  library_noise.install()
  return sys.argv[1:]
