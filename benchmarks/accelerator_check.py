"""One command that checks this project on a GPU or TPU host, offline.

  python benchmarks/accelerator_check.py [--json=PATH]
  python benchmarks/accelerator_check.py --dry   # CPU smoke run, for CI

Within 8 minutes on one host with no network it measures and prints:

  device        the backend, the chips (`device_kind`), their dense peak
                TFLOP/s from `benchmarks/train_step.py`'s table ('peak
                unknown' for chips not in it)
  step D C      the celeba preset's train step (`configs/celeba.py`: 64x64,
                batch 128, G from 4x4x1024, 5x5 kernels) on synthetic
                images, over all `jax.local_device_count()` local devices
                (the batch rounded up to a multiple of them where 128 is
                not one), for compute dtype D (`config.model.compute_dtype`:
                float32, bfloat16) and `config.model.conv_impl` C (xla,
                auto): images/s, step time, achieved TFLOP/s and utilisation
                against the local chips' peak (FLOPs per step counted from
                the architecture, `dcgan_jax/networks/flops.py`), compile
                time, peak device memory (`memory_stats()`; 'n/a' where the
                backend has none). Where 'auto' resolves to the program
                already measured ('xla' on GPU and TPU) that row is not
                run again.
  determinism   two processes train the same seed for a few steps with
                `config.deterministic_gpu=True` (XLA_FLAGS gets
                --xla_gpu_deterministic_ops=true before the backend starts,
                as launch.py does) on the local devices; their states are
                compared bit for bit.
  pmap tests    the tests that run the step and BatchNorm under pmap across
                devices (tests/train_test.py, models_test.py,
                gan_metrics_test.py), in pytest, on the real local devices
                (JAX_PLATFORMS is the accelerator's; on CPU, the
                DCGAN_TEST_DEVICES host devices of conftest.py, 4 unless
                set). They take the device count from the machine; those
                that compare replicas are skipped on one device, and the
                row says so ('n/a (1 device)').

Each part runs in its own process under a time limit taken from one
overall budget (--budget_s), so a crash, an out-of-memory or a hang is
reported in its row and the rest still runs. The table comes last;
--json=PATH also writes every figure. The exit status is 0 when every row
is ok. --dry runs every part on a reduced model (16x16 images, narrower G
and D, batch 8, 2 steps) and only the quickest pmap tests (after collecting
all of them), so that CI runs each code path of this script (about 85
CPU-seconds in all; benchmarks/README.md); its figures say nothing about
accelerators. With XLA_FLAGS=--xla_force_host_platform_device_count=N every
part of --dry runs on N host devices, the pmap tests included.
"""

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
_RESULT = 'accelerator_check_result '
DTYPES = ('float32', 'bfloat16')
CONV_IMPLS = ('xla', 'auto')
DRY = dict(
  image_size=16, g_width=32, d_width=8, batch=8, steps=2, warmup=1, det_steps=2
)
# The tests that run the train step or BatchNorm under pmap across the local
# devices. --dry collects all of them (a renamed test fails the check) and
# runs those that -k DRY_TESTS selects.
PMAP_TESTS = (
  'tests/train_test.py::test_step_finite_losses_and_metrics',
  'tests/train_test.py::test_replicas_never_diverge',
  'tests/train_test.py::test_d_update_leaves_g_unchanged',
  'tests/train_test.py::test_step_matches_textbook_reference',
  'tests/models_test.py::test_sync_batchnorm_under_pmap',
  'tests/gan_metrics_test.py::test_accumulator_takes_per_device_moments_from_pmap',
)
DRY_TESTS = 'sync_batchnorm_under_pmap or per_device_moments_from_pmap'
# Time limits (s) of the parts; every part not yet run keeps RESERVE_S of
# the budget.
LIMITS = {
  'full': dict(device=120, step=120, determinism=180, tests=180, budget=450),
  'dry': dict(device=60, step=90, determinism=120, tests=150, budget=400),
}
RESERVE_S = 20
# Test-session variables of conftest.py and compilation caches, left out of
# the parts' environment: an inner pytest starts a test session of its own,
# and no part loads a program compiled before the check began.
_SESSION_ENV = (
  'DCGAN_JAX_TEST_SESSION',
  'JAX_COMPILATION_CACHE_DIR',
  'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS',
)


# --- Worker: one part, in a process of its own ------------------------------
# JAX and the project are imported here, inside the workers, never in the
# process that runs them: a GPU client there would hold most of the memory
# the workers need, and XLA_FLAGS must be final before JAX starts.


def _config(
  dry: bool, num_devices: int, compute_dtype: str = 'float32', conv_impl: str = 'auto'
):
  """The celeba preset (reduced with --dry) with the given dtype and impl;
  its batch rounded up to a multiple of `num_devices` (128 and --dry's 8
  already are one for 1, 2, 4 and 8 devices)."""
  from configs import celeba

  config = celeba.get_config()
  config.model.compute_dtype = compute_dtype
  config.model.conv_impl = conv_impl
  if dry:
    config.image_size = DRY['image_size']
    config.model.g_width = DRY['g_width']
    config.model.d_width = DRY['d_width']
    config.global_batch_size = DRY['batch']
  config.global_batch_size = -(-config.global_batch_size // num_devices) * num_devices
  return config


def _probe(args) -> dict:
  import importlib.metadata

  import jax
  import train_step

  from dcgan_jax.networks import models

  device = jax.local_devices()[0]
  return {
    'backend': jax.default_backend(),
    'device_kind': device.device_kind,
    'local_devices': jax.local_device_count(),
    'jax': jax.__version__,
    'jaxlib': importlib.metadata.version('jaxlib'),
    'auto_conv_impl': models.resolve_conv_impl('auto'),
    'peak_tflop_s': {d: train_step.peak_tflop_s(device.device_kind, d) for d in DTYPES},
    'memory_stats': device.memory_stats() is not None,
    'xla_flags': os.environ.get('XLA_FLAGS', ''),
  }


def _step(args) -> dict:
  """benchmarks/train_step.py's measurement, with the device's memory peak."""
  import jax
  import train_step

  config = _config(args.dry, jax.local_device_count(), args.dtype, args.conv_impl)
  result = train_step.benchmark(config, args.steps, args.warmup)
  # train_step reports XLA's buffer plan where the device keeps no
  # statistics; here that is 'n/a', with the plan beside it.
  stats = jax.local_devices()[0].memory_stats() or {}
  peak = stats.get('peak_bytes_in_use')
  result['device_peak_mib'] = None if peak is None else peak / 2**20
  result['planned_mib'] = result.pop('peak_mem_mb') if peak is None else None
  return result


def _train(args) -> dict:
  """Trains `args.steps` steps as train.py does; saves the state to args.out."""
  import functools

  import jax
  import numpy as np
  from flax import jax_utils

  from dcgan_jax.core import state as gan_state
  from dcgan_jax.core import step as step_lib

  n = jax.local_device_count()
  config = _config(args.dry, n)
  config.deterministic_gpu = True
  if '--xla_gpu_deterministic_ops=true' not in os.environ.get('XLA_FLAGS', ''):
    raise RuntimeError('XLA_FLAGS lacks --xla_gpu_deterministic_ops=true')
  hyper = step_lib.make_step_config(
    config, bn_axis_name='batch' if step_lib.syncs_batchnorm(config) else None
  )
  p_step = jax.pmap(
    step_lib.make_ensemble_step(hyper, 1, config.ensemble),
    axis_name='batch',
    in_axes=(0, 0, None),
    donate_argnums=(0,),
  )
  # One program instead of train.py's op-by-op initialisation, which on a
  # GPU compiles a hundred small programs; the same in both runs.
  host = jax.jit(functools.partial(gan_state.initial_state, config))()
  state = jax_utils.replicate(jax.tree.map(lambda x: x[None], host))
  train_key = gan_state.split_root_key(jax.random.key(config.seed))[1][None]
  rng = np.random.default_rng(config.seed)
  size, channels = config.image_size, config.num_channels
  shape = (n, 1, config.global_batch_size // n, size, size, channels)
  for _ in range(args.steps):
    images = rng.uniform(-1, 1, shape).astype(np.float32)
    state, _ = p_step(state, images, train_key)
  final = jax.device_get(gan_state.unreplicate(state))
  leaves = jax.tree_util.tree_leaves_with_path(final)
  np.savez(
    args.out,
    names=np.array([jax.tree_util.keystr(path) for path, _ in leaves]),
    **{f'leaf_{i}': np.asarray(x) for i, (_, x) in enumerate(leaves)},
  )
  return {
    'steps': int(final.step[0]),
    'leaves': len(leaves),
    'devices': n,
    'batch': config.global_batch_size,
  }


def _worker(args) -> None:
  sys.path[:0] = [REPO, HERE]
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from dcgan_jax.util import xla_cpu  # Imports no JAX.

  xla_cpu.use_project_kernels()  # As launch.py does, before JAX starts.
  result = {'probe': _probe, 'step': _step, 'train': _train}[args.worker](args)
  print(_RESULT + json.dumps(result), flush=True)


# --- Orchestration: runs the workers, never starts a backend itself ---------


class _Clock:
  """One overall budget shared by the parts, in order."""

  def __init__(self, budget_s: float, parts: int):
    self.deadline = time.monotonic() + budget_s
    self.parts_left = parts
    self.cpu_mark = 0.0

  def children_cpu_s(self) -> float:
    """CPU seconds of the finished child processes since the last call."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = usage.ru_utime + usage.ru_stime
    spent, self.cpu_mark = total - self.cpu_mark, total
    return spent

  def limit(self, cap_s: float) -> float:
    """This part's time limit: its cap, leaving RESERVE_S per later part."""
    self.parts_left -= 1
    left = self.deadline - time.monotonic() - RESERVE_S * self.parts_left
    return min(cap_s, left)


def _run(command: list[str], timeout_s: float, env=None) -> tuple[int | None, str, str]:
  """(exit status, None on timeout; stdout; stderr) of a process group."""
  proc = subprocess.Popen(
    command,
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    start_new_session=True,
  )
  try:
    out, err = proc.communicate(timeout=max(timeout_s, 1))
    return proc.returncode, out, err
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    out, err = proc.communicate()
    return None, out, err
  except BaseException:
    os.killpg(proc.pid, signal.SIGKILL)
    raise


def _row(name: str, status: str, note: str = '', **data) -> dict:
  return {'name': name, 'status': status, 'note': note, **data}


def _failure(name: str, code: int | None, timeout_s: float, err: str) -> dict:
  lines = [line for line in err.splitlines() if line.strip()]
  if code is None:
    return _row(name, 'TIMEOUT', f'stopped after {timeout_s:.0f} s', stderr=err[-3000:])
  last = lines[-1][:240] if lines else f'exit status {code}'
  return _row(name, 'FAIL', last, stderr=err[-3000:])


def _worker_env(cache_dir: str | None) -> dict[str, str]:
  """The workers' environment, with `cache_dir` as compilation cache.

  The step rows share one cache, new for each check: each compiles the same
  op-by-op parameter initialisation (once is enough), while their steps are
  different programs, so compile times stay compile times. The two
  determinism runs get none, so that each compiles (and on GPU autotunes)
  its own; except under --dry, which is about time, not figures.
  """
  env = {k: v for k, v in os.environ.items() if k not in _SESSION_ENV}
  if cache_dir:
    env['JAX_COMPILATION_CACHE_DIR'] = cache_dir
    env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  return env


def _call_worker(name: str, worker_args: list[str], timeout_s: float, env):
  """(result dict or None, row for a failure or None, seconds)."""
  if timeout_s < 5:
    return None, _row(name, 'SKIP', 'out of time (--budget_s)'), 0.0
  command = [sys.executable, os.path.abspath(__file__), *worker_args]
  t0 = time.monotonic()
  code, out, err = _run(command, timeout_s, env)
  seconds = time.monotonic() - t0
  results = [line for line in out.splitlines() if line.startswith(_RESULT)]
  if code != 0 or not results:
    row = _failure(name, code, timeout_s, err)
    row['seconds'] = seconds
    return None, row, seconds
  return json.loads(results[-1][len(_RESULT) :]), None, seconds


def _device_row(clock: _Clock, limits: dict, args) -> dict:
  probe, failed, seconds = _call_worker(
    'device', ['--worker=probe'], clock.limit(limits['device']), args.env
  )
  if failed:
    return failed
  peaks = probe['peak_tflop_s']
  peak_note = (
    'peak unknown'
    if peaks['float32'] is None
    else f'peak {peaks["float32"]:g} (float32) / {peaks["bfloat16"]:g} (bfloat16) TFLOP/s a chip'
  )
  note = (
    f'{probe["local_devices"]} x {probe["device_kind"]} ({probe["backend"]}), '
    f'{peak_note}; jax {probe["jax"]}, jaxlib {probe["jaxlib"]}; '
    f"conv_impl 'auto' = {probe['auto_conv_impl']}"
  )
  return _row('device', 'ok', note, seconds=seconds, **probe)


def _step_rows(clock: _Clock, limits: dict, args, auto_impl: str | None):
  """Yields the row of each (compute dtype, conv_impl) as it finishes."""
  for dtype in DTYPES:
    measured = {}
    for impl in CONV_IMPLS:
      name = f'step {dtype} {impl}'
      resolved = auto_impl if impl == 'auto' else impl
      if resolved in measured:  # The same program: not compiled again.
        clock.parts_left -= 1
        note = f"'auto' is '{resolved}' here: the row above, not rerun"
        yield measured[resolved] | {'name': name, 'note': note, 'seconds': 0.0}
        continue
      worker_args = ['--worker=step', f'--dtype={dtype}', f'--conv_impl={impl}']
      worker_args += [f'--steps={args.steps}', f'--warmup={args.warmup}']
      worker_args += ['--dry'] if args.dry else []
      result, failed, seconds = _call_worker(
        name, worker_args, clock.limit(limits['step']), args.env
      )
      if failed:
        yield failed
        continue
      note = f"conv_impl '{result['conv_impl']}'" + _batch_note(result)
      measured[result['conv_impl']] = _row(name, 'ok', note, seconds=seconds) | result
      yield measured[result['conv_impl']]


def _compare_states(path_a: str, path_b: str) -> dict:
  """Bit-for-bit comparison of two saved states."""
  import numpy as np

  with np.load(path_a) as a, np.load(path_b) as b:
    names = [str(n) for n in a['names']]
    differ, max_diff = [], 0.0
    for i, name in enumerate(names):
      x, y = a[f'leaf_{i}'], b[f'leaf_{i}']
      if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
        differ.append(name)
        if x.shape == y.shape and np.issubdtype(x.dtype, np.floating):
          diff = np.abs(x.astype(np.float64) - y.astype(np.float64)).max()
          max_diff = max(max_diff, float(diff))
  return {'leaves': len(names), 'differing_leaves': differ, 'max_abs_diff': max_diff}


def _batch_note(result: dict) -> str:
  """'; batch B = N devices x B/N' from a worker's result ('' without)."""
  batch, devices = result.get('batch'), result.get('devices')
  if not (batch and devices):
    return ''
  return f'; batch {batch} = {devices} device{"s" * (devices > 1)} x {batch // devices}'


def _determinism_row(clock: _Clock, limits: dict, args) -> dict:
  """Two processes, same seed, deterministic_gpu=True: equal bit for bit?"""
  name, limit, t0 = 'determinism', clock.limit(limits['determinism']), time.monotonic()
  env = _worker_env(args.cache if args.dry else None)
  # As launch.py does for config.deterministic_gpu:
  flags = env.get('XLA_FLAGS', '') + ' --xla_gpu_deterministic_ops=true'
  env['XLA_FLAGS'] = flags.strip()
  with tempfile.TemporaryDirectory(prefix='accelerator_check_') as tmp:
    paths = [os.path.join(tmp, f'run_{i}.npz') for i in range(2)]
    for path in paths:
      worker_args = ['--worker=train', f'--steps={args.det_steps}', f'--out={path}']
      worker_args += ['--dry'] if args.dry else []
      left = limit - (time.monotonic() - t0)
      result, failed, _ = _call_worker(name, worker_args, left, env)
      if failed:
        return failed | {'seconds': time.monotonic() - t0}
    compared = _compare_states(*paths)
  differ = compared['differing_leaves']
  note = f'2 processes x {args.det_steps} steps of the float32 step, same seed, '
  note += f'deterministic_gpu=True{_batch_note(result)}: '
  note += (
    f'all {compared["leaves"]} state arrays bit-identical'
    if not differ
    else f'{len(differ)} of {compared["leaves"]} state arrays differ '
    f'(first {differ[0]}, max |diff| {compared["max_abs_diff"]:.3g})'
  )
  status = 'FAIL' if differ else 'ok'
  seconds = time.monotonic() - t0
  return _row(
    name,
    status,
    note,
    seconds=seconds,
    identical=not differ,
    devices=result['devices'],
    batch=result['batch'],
    **compared,
  )


def _pytest_outcomes(out: str) -> dict:
  """What `pytest -v -rs` printed: the tests' outcomes, the skip reasons and
  the device count from conftest.py's header line."""
  outcomes = re.findall(
    r'^(tests/\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b', out, re.M
  )
  counts = {
    o: sum(1 for _, x in outcomes if x == o)
    for o in ('PASSED', 'FAILED', 'ERROR', 'SKIPPED')
  }
  # -rs: 'SKIPPED [2] tests/train_test.py:95: n/a (1 device): ...'
  reasons = re.findall(r'^SKIPPED \[\d+\] \S+: (.+)$', out, re.M)
  header = re.search(r'^dcgan_jax: (\d+) forced CPU devices', out, re.M)
  return {
    'outcomes': outcomes,
    'counts': counts,
    'failing': [test for test, o in outcomes if o in ('FAILED', 'ERROR')],
    'skip_reasons': sorted(set(reasons)),
    'cpu_devices': int(header.group(1)) if header else None,
  }


def _tests_note(parsed: dict, devices: str) -> str:
  counts = parsed['counts']
  note = f'{counts["PASSED"]} passed, {counts["FAILED"]} failed'
  note += f', {counts["ERROR"]} errors' if counts['ERROR'] else ''
  if counts['SKIPPED']:
    note += f', {counts["SKIPPED"]} skipped ({"; ".join(parsed["skip_reasons"])})'
  return note + f' on {devices}'


def _tests_row(clock: _Clock, limits: dict, args, device: dict) -> dict:
  """pytest on PMAP_TESTS, on the real local devices of an accelerator."""
  name, limit = 'pmap tests', clock.limit(limits['tests'])
  if limit < 5:
    return _row(name, 'SKIP', 'out of time (--budget_s)')
  env = {k: v for k, v in os.environ.items() if k not in _SESSION_ENV}
  backend = device.get('backend')
  on_chips = backend and backend != 'cpu'  # Else conftest.py's CPU devices.
  if on_chips:
    env['JAX_PLATFORMS'] = backend
  command = [sys.executable, '-m', 'pytest', '-n', '0', '-p', 'no:cacheprovider']
  command += ['-v', '-rs', *PMAP_TESTS] + (['-k', DRY_TESTS] if args.dry else [])
  t0 = time.monotonic()
  code, out, err = _run(command, limit, env)
  seconds = time.monotonic() - t0
  parsed = _pytest_outcomes(out)
  if on_chips:
    count = device['local_devices']
    devices = f'{count} {backend} device{"s" * (count > 1)}'
  else:
    count = parsed['cpu_devices']
    devices = f'{count or "?"} CPU device{"s" * (count != 1)} (conftest.py)'
  note = _tests_note(parsed, devices)
  failing = parsed['failing']
  if code is None:
    status, note = 'TIMEOUT', f'stopped after {limit:.0f} s; so far {note}'
  elif code == 0 and parsed['counts']['PASSED'] and not failing:
    status = 'ok'
  else:
    status = 'FAIL'
    lines = [line for line in (out + err).splitlines() if line.strip()]
    lines = [line for line in lines if line.startswith('ERROR')] or lines
    note += f'; {failing[0]}' if failing else f'; {lines[-1][:200] if lines else code}'
  output = out[-3000:] if status != 'ok' else ''
  return _row(
    name,
    status,
    note,
    seconds=seconds,
    devices=count,
    failing=failing,
    skipped=parsed['counts']['SKIPPED'],
    output=output,
  )


# --- The report --------------------------------------------------------------

COLUMNS = ('section', 'status', 'images/s', 'step ms', 'TFLOP/s', 'util')
COLUMNS += ('compile s', 'peak mem', 'notes')


def _cells(row: dict) -> list[str]:
  if 'images_per_s' not in row:
    return [row['name'], row['status'], *([''] * 6), row['note']]
  util = row['utilisation']
  peak = row['device_peak_mib']
  note = row['note']
  if row.get('planned_mib') is not None:
    note += f'; XLA buffer plan {row["planned_mib"]:.0f} MiB'
  return [
    row['name'],
    row['status'],
    f'{row["images_per_s"]:.1f}',
    f'{1e3 * row["step_s"]:.1f}',
    f'{row["gflop_per_s"] / 1e3:.3g}',
    'peak unknown' if isinstance(util, str) else f'{100 * util:.1f}%',
    f'{row["compile_s"]:.1f}',
    'n/a' if peak is None else f'{peak:.0f} MiB',
    note,
  ]


def _table(rows: list[dict]) -> str:
  cells = [list(COLUMNS)] + [_cells(row) for row in rows]
  widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS) - 1)]
  lines = []
  for line in cells:
    padded = [
      c.ljust(w) if i < 2 else c.rjust(w)
      for i, (c, w) in enumerate(zip(line[:-1], widths, strict=True))
    ]
    lines.append('  '.join([*padded, line[-1]]).rstrip())
  lines.insert(1, '-' * len(lines[0]))
  return '\n'.join(lines)


def _say(row: dict, clock: _Clock) -> dict:
  """Prints a finished part's row, with its processes' CPU time."""
  row['cpu_s'] = clock.children_cpu_s()
  took = f'{row.get("seconds", 0):.1f} s, CPU {row["cpu_s"]:.1f} s'
  print(
    f'[{took}] {row["name"]}: {row["status"]} {row["note"]}',
    flush=True,
  )
  return row


def check(args) -> list[dict]:
  """Runs every part in order; one row per part."""
  limits = LIMITS['dry' if args.dry else 'full']
  clock = _Clock(args.budget_s, parts=3 + len(DTYPES) * len(CONV_IMPLS))
  with tempfile.TemporaryDirectory(prefix='accelerator_check_cache_') as cache:
    args.cache, args.env = cache, _worker_env(cache)
    device = _say(_device_row(clock, limits, args), clock)
    rows = [device]
    for row in _step_rows(clock, limits, args, device.get('auto_conv_impl')):
      rows.append(_say(row, clock))
    rows.append(_say(_determinism_row(clock, limits, args), clock))
    rows.append(_say(_tests_row(clock, limits, args, device), clock))
  return rows


def main():
  p = argparse.ArgumentParser(
    description=__doc__.split('\n\n')[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog=__doc__.split('\n\n', 2)[2],
  )
  p.add_argument('--dry', action='store_true', help='CPU smoke run of every part.')
  p.add_argument('--json', metavar='PATH', help='Also write every figure here.')
  p.add_argument('--steps', type=int, help='Timed steps per row (50; --dry 2).')
  p.add_argument('--warmup', type=int, help='Untimed steps first (5; --dry 1).')
  p.add_argument(
    '--det_steps', type=int, help='Steps per determinism run (10; --dry 2).'
  )
  p.add_argument(
    '--budget_s', type=float, help='All parts together (450 s; --dry 400).'
  )
  for hidden in ('--worker', '--dtype', '--conv_impl', '--out'):
    p.add_argument(hidden, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    return _worker(args)
  mode = 'dry' if args.dry else 'full'
  defaults = DRY if args.dry else dict(steps=50, warmup=5, det_steps=10)
  for key in ('steps', 'warmup', 'det_steps'):
    if getattr(args, key) is None:
      setattr(args, key, defaults[key])
  if args.budget_s is None:
    args.budget_s = LIMITS[mode]['budget']
  title = 'dcgan_jax accelerator check'
  if args.dry:
    title += ' --dry: reduced model, CPU smoke run; not accelerator figures'
  print(title, flush=True)
  t0 = time.monotonic()
  rows = check(args)
  wall_s = time.monotonic() - t0
  print(f'\n{title} ({wall_s:.0f} s)\n{_table(rows)}', flush=True)
  if args.json:
    report = {'mode': mode, 'wall_s': wall_s, 'budget_s': args.budget_s, 'rows': rows}
    with open(args.json, 'w') as f:
      json.dump(report, f, indent=2)
  return 0 if all(row['status'] == 'ok' for row in rows) else 1


if __name__ == '__main__':
  sys.exit(main())
