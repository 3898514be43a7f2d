"""On PYTHONPATH, makes this interpreter behave as if TensorFlow were not
installed: `import tensorflow` (or any of its modules) raises
ModuleNotFoundError, as it does in an environment without the 'tf' extra."""

import importlib.abc
import sys


class _NoTensorFlow(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    del path, target
    if name == 'tensorflow' or name.startswith('tensorflow.'):
      raise ModuleNotFoundError(f"No module named '{name}'", name=name)
    return None


sys.meta_path.insert(0, _NoTensorFlow())
