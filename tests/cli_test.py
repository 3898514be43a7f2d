"""Every command's command line: --help lists each flag with its default,
and bad flags or input are one line `Error: ...`, exit status 1."""

import importlib

import pytest

from dcgan_jax import cli

COMMANDS = ('sample', 'evaluate', 'export', 'visualize', 'linear_probe')
COMMANDS += ('digits_classifier',)


def _command(name: str):
  return importlib.import_module(f'dcgan_jax.{name}')


@pytest.mark.parametrize('name', COMMANDS)
def test_help_lists_every_flag_with_its_default(name, capsys):
  module = _command(name)
  with pytest.raises(SystemExit) as exit_info:
    module.main(['--help'])
  assert exit_info.value.code == 0
  text = capsys.readouterr().out
  command = module.COMMAND
  assert text.startswith(command.doc.strip().splitlines()[0])
  flags_text = text.split('\nFlags:\n', 1)[1]
  entries = {}
  for block in ('\n' + flags_text).split('\n  --')[1:]:
    head, _, body = block.partition('\n')
    entries[head.removeprefix('[no]')] = ' '.join(body.split())
  for flag_name in command.flags:
    flag = command.flags[flag_name]
    if flag_name in ('flagfile', 'undefok'):  # absl's own, not the command's.
      continue
    entry = entries[flag_name]
    if flag.default is not None:
      assert f'default: {flag.default!r}' in entry, (flag_name, entry)
    else:
      assert 'required' in entry or 'default' in entry, (flag_name, entry)


@pytest.mark.parametrize('name', COMMANDS)
def test_bad_flags_are_one_line_errors(name, tmp_path):
  module = _command(name)
  first = list(module.COMMAND.subcommands[:1])
  cases = [
    [*first, '--no_such_flag=1'],  # Unknown flag.
    [*first],  # A required flag missing.
    [*first, f'--workdir={tmp_path}', f'--samples={tmp_path}/x.npz', 'stray'],
  ]
  for argv in cases:
    with pytest.raises(SystemExit) as exit_info:
      module.main(argv)
    message = str(exit_info.value.code)
    assert message.startswith('Error: ') and '\n' not in message, (argv, message)


def test_a_missing_workdir_is_one_line_for_every_workdir_command(tmp_path):
  missing = f'--workdir={tmp_path / "nowhere"}'
  argvs = {
    'sample': [missing, '--output=x.png'],
    'evaluate': [missing],
    'export': [missing],
    'visualize': ['sheet', missing],
    'linear_probe': [missing, '--probe=mnist_1000'],
  }
  for name, argv in argvs.items():
    with pytest.raises(SystemExit) as exit_info:
      _command(name).main(argv)
    message = str(exit_info.value.code)
    assert message.startswith('Error: ') and 'not a dcgan_jax workdir' in message


def test_subcommand_must_be_named():
  command = cli.Command('demo', 'Demo.', subcommands=('one', 'two'))
  command.integer('n', 3, 'A number.')
  seen = []
  command.run(lambda values, sub: seen.append((sub, values.n)), ['two', '--n=5'])
  assert seen == [('two', 5)]
  with pytest.raises(SystemExit, match="one of one, two; got 'three'"):
    command.run(lambda values, sub: None, ['three'])


def test_library_errors_become_one_line_and_others_propagate():
  command = cli.Command('demo', 'Demo.')

  def bad_input(values):
    raise ValueError('--n must be even.')

  with pytest.raises(SystemExit, match=r'^Error: --n must be even\.$'):
    command.run(bad_input, [])

  def bug(values):
    raise KeyError('a bug, not bad input')

  with pytest.raises(KeyError):  # A traceback: not the user's fault.
    command.run(bug, [])


def test_an_output_that_cannot_be_written_is_one_line(tiny_digits_workdir, tmp_path):
  from dcgan_jax import sample

  taken = tmp_path / 'grid.png'
  taken.mkdir()  # A directory where the PNG should go.
  with pytest.raises(SystemExit) as exit_info:
    sample.main([f'--workdir={tiny_digits_workdir}', f'--output={taken}'])
  message = str(exit_info.value.code)
  assert message.startswith('Error: ') and 'Is a directory' in message, message
  assert taken.is_dir() and not list(taken.iterdir())  # Left as it was.
  assert not [p for p in tmp_path.iterdir() if '.tmp-' in p.name]
