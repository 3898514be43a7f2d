"""The package's layers: every module imports only modules of lower layers
(or of its own layer without a cycle), wherever the import statement is."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'dcgan_jax'

# Top to bottom, as in docs/layout.md.
COMMANDS = {'sample', 'evaluate', 'export', 'visualize', 'linear_probe'}
COMMANDS |= {'digits_classifier', 'reproduce', 'cli'}
LAYERS = {
  'commands': 4,
  'loop': 3,  # train, ensemble
  'evaluation': 2,
  'core': 1,
  'data': 1,
  'networks': 0,
  'util': 0,
}


def _layer(module: str) -> str:
  parts = module.split('.')[1:]
  if not parts:
    return 'commands'
  if parts[0] in COMMANDS:
    return 'commands'
  if parts[0] in ('train', 'ensemble'):
    return 'loop'
  assert parts[0] in LAYERS, f'{module} is in no layer: add it to LAYERS.'
  return parts[0]


def _modules() -> dict[str, pathlib.Path]:
  modules = {}
  for path in PACKAGE.rglob('*.py'):
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    if parts[-1] == '__init__':
      parts = parts[:-1]
    modules['.'.join(parts)] = path
  return modules


def _imports(path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
  """The package modules `path` imports, at any depth of its code."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      names = [node.module] + [f'{node.module}.{a.name}' for a in node.names]
    else:
      continue
    found |= {n for n in names if n in modules and n.startswith('dcgan_jax.')}
  return found - {'dcgan_jax'}


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  graph = {name: _imports(path, modules) for name, path in modules.items()}
  # A package's __init__ is not a dependency of its modules' importers.
  return {
    k: {v for v in vs if modules[v].name != '__init__.py'} for k, vs in graph.items()
  }


def test_no_module_imports_a_higher_layer():
  upward = [
    f'{module} ({_layer(module)}) imports {dep} ({_layer(dep)})'
    for module, deps in _graph().items()
    for dep in deps
    if LAYERS[_layer(dep)] > LAYERS[_layer(module)]
  ]
  assert not upward, '\n'.join(upward)


def test_import_graph_has_no_cycle():
  graph = _graph()
  state = {}

  def visit(module, path):
    state[module] = 'open'
    for dep in sorted(graph[module]):
      if state.get(dep) == 'open':
        pytest.fail('import cycle: ' + ' -> '.join([*path, module, dep]))
      if dep not in state:
        visit(dep, [*path, module])
    state[module] = 'done'

  for module in sorted(graph):
    if module not in state:
      visit(module, [])


def test_the_checks_see_function_level_imports(tmp_path):
  """The graph includes imports inside functions (a test that can fail)."""
  path = tmp_path / 'm.py'
  path.write_text('def f():\n  from dcgan_jax import train\n')
  assert _imports(path, {'dcgan_jax.train': path}) == {'dcgan_jax.train'}
