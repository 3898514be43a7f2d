"""The errors a command reports as one line (`Error: ...`), not a traceback.

Each message says what to change. Library code raises them; the commands
(launch.py and `python -m dcgan_jax.<command>`) print them and exit with
status 1.
"""


class ConfigError(ValueError):
  """A config that cannot run; the message says what to change."""


class ConfigChangeError(ConfigError):
  """Resuming with a config or data set that would change the trajectory."""


class CheckpointError(RuntimeError):
  """The latest checkpoint cannot be read; the message says how to go on."""
