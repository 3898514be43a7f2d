"""benchmarks/accelerator_check.py: --dry runs every part; the bookkeeping."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'benchmarks', 'accelerator_check.py')
SECTIONS = (
  'device',
  'step float32 xla',
  'step float32 auto',
  'step bfloat16 xla',
  'step bfloat16 auto',
  'determinism',
  'pmap tests',
)


def _load_check():
  """The script as a module (importing it starts no JAX backend)."""
  spec = importlib.util.spec_from_file_location('accelerator_check', SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


check = _load_check()


def _table_rows(stdout: str) -> dict[str, str]:
  """{section: its line} of the table printed last."""
  lines = stdout.splitlines()
  start = max(i for i, line in enumerate(lines) if line.startswith('section '))
  rows = {}
  for line in lines[start + 2 :]:
    name = next((s for s in SECTIONS if line.startswith(s + ' ')), None)
    if name:
      rows[name] = line
  return rows


def test_dry_run_reports_every_section_ok(tmp_path):
  json_path = tmp_path / 'check.json'
  result = subprocess.run(
    [sys.executable, SCRIPT, '--dry', f'--json={json_path}'],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
  rows = _table_rows(result.stdout)
  assert list(rows) == list(SECTIONS), result.stdout
  for name, line in rows.items():
    assert line.split()[len(name.split())] == 'ok', line
  assert 'not accelerator figures' in result.stdout
  assert 'peak unknown' in rows['step float32 xla']  # No CPU in the table.
  assert 'n/a' in rows['step float32 xla']  # CPUs keep no memory statistics.

  report = json.loads(json_path.read_text())
  assert report['mode'] == 'dry'
  by_name = {row['name']: row for row in report['rows']}
  assert list(by_name) == list(SECTIONS)
  assert by_name['device']['backend'] == 'cpu'
  assert by_name['step float32 auto']['conv_impl'] == 'phases'  # 'auto' on CPU.
  assert by_name['step bfloat16 xla']['conv_impl'] == 'xla'
  for name in SECTIONS[1:5]:
    row = by_name[name]
    assert row['images_per_s'] > 0 and row['compile_s'] > 0, name
    assert row['gflop_per_step'] > 0 and row['utilisation'] == 'unknown', name
    assert row['image_size'] == check.DRY['image_size'], name
  assert by_name['determinism']['identical'] is True
  assert by_name['determinism']['leaves'] > 10
  assert by_name['pmap tests']['failing'] == []
  assert '3 passed, 0 failed' in by_name['pmap tests']['note']
  # Every part on this session's devices (conftest.py's DCGAN_TEST_DEVICES,
  # inherited through XLA_FLAGS).
  devices = int(os.environ['DCGAN_TEST_DEVICES'])
  assert by_name['device']['local_devices'] == devices
  assert by_name['pmap tests']['devices'] == devices
  for name in (*SECTIONS[1:5], 'determinism'):
    assert by_name[name]['devices'] == devices, name
    assert by_name[name]['batch'] == check.DRY['batch'], name


class _FakeClock(check._Clock):
  def __init__(self):
    super().__init__(budget_s=1000, parts=4)


def _fake_step(results):
  """_call_worker stand-in: pops a result (or failure) per step row."""

  def call(name, worker_args, timeout_s, env):
    outcome = results.pop(0)
    if outcome in ('FAIL', 'TIMEOUT'):
      return None, check._row(name, outcome, 'boom'), 1.0
    impl = next(a.split('=')[1] for a in worker_args if a.startswith('--conv_impl'))
    return {'conv_impl': outcome or impl, 'images_per_s': 10.0}, None, 1.0

  return call


def test_auto_resolving_to_a_measured_impl_is_not_run_again(monkeypatch):
  args = type('Args', (), dict(steps=1, warmup=0, dry=False, env={}))
  results = [None, None]  # Only the two 'xla' rows run.
  monkeypatch.setattr(check, '_call_worker', _fake_step(results))
  rows = list(check._step_rows(_FakeClock(), check.LIMITS['full'], args, 'xla'))
  assert [row['name'] for row in rows] == list(SECTIONS[1:5])
  assert results == []
  assert rows[1]['images_per_s'] == 10.0 and 'not rerun' in rows[1]['note']
  assert rows[1]['seconds'] == 0.0 and rows[0]['seconds'] == 1.0


def test_a_failed_row_does_not_stop_the_others(monkeypatch):
  args = type('Args', (), dict(steps=1, warmup=0, dry=False, env={}))
  results = ['FAIL', 'phases', 'TIMEOUT', 'phases']
  monkeypatch.setattr(check, '_call_worker', _fake_step(results))
  rows = list(check._step_rows(_FakeClock(), check.LIMITS['full'], args, 'phases'))
  assert [row['status'] for row in rows] == ['FAIL', 'ok', 'TIMEOUT', 'ok']
  figures = dict(
    utilisation='unknown', step_s=0.1, gflop_per_s=1.0, compile_s=2.0
  ) | dict(device_peak_mib=None)
  table = check._table(
    [row | figures if row['status'] == 'ok' else row for row in rows]
  )
  assert 'FAIL' in table and 'TIMEOUT' in table and 'peak unknown' in table


def test_budget_leaves_time_for_later_parts_and_skips_when_spent():
  clock = check._Clock(budget_s=100, parts=3)
  assert clock.limit(500) == pytest.approx(100 - 2 * check.RESERVE_S, abs=1)
  assert clock.limit(10) == 10
  _, row, _ = check._call_worker('step x', ['--worker=probe'], 4, {})
  assert row['status'] == 'SKIP'


def test_run_stops_a_process_group_at_its_time_limit():
  code, out, _ = check._run(
    [sys.executable, '-c', 'import time; print("started", flush=True); time.sleep(60)'],
    timeout_s=2,
  )
  assert code is None and 'started' in out


def test_compare_states_is_bit_for_bit(tmp_path):
  a = {'names': np.array(['.x', '.step']), 'leaf_0': np.float32([1, 2])}
  a['leaf_1'] = np.int32(3)
  b = dict(a, leaf_0=np.float32([1, np.nextafter(np.float32(2), np.float32(3))]))
  np.savez(tmp_path / 'a.npz', **a)
  np.savez(tmp_path / 'same.npz', **a)
  np.savez(tmp_path / 'b.npz', **b)
  same = check._compare_states(tmp_path / 'a.npz', tmp_path / 'same.npz')
  assert same['differing_leaves'] == [] and same['leaves'] == 2
  differ = check._compare_states(tmp_path / 'a.npz', tmp_path / 'b.npz')
  assert differ['differing_leaves'] == ['.x']
  assert 0 < differ['max_abs_diff'] < 1e-6


# What `pytest -v -rs` prints on one device (abridged).
_ONE_DEVICE_OUTPUT = """\
dcgan_jax: 1 forced CPU devices; JAX_PLATFORMS=cpu
tests/train_test.py::test_step_finite_losses_and_metrics PASSED          [ 20%]
tests/train_test.py::test_replicas_never_diverge[True] SKIPPED (n/a ...) [ 40%]
tests/train_test.py::test_replicas_never_diverge[False] SKIPPED (n/a...) [ 60%]
tests/train_test.py::test_step_matches_textbook_reference[1] PASSED      [ 80%]
tests/models_test.py::test_sync_batchnorm_under_pmap[dcgan-16] FAILED    [100%]
=========================== short test summary info ============================
SKIPPED [2] tests/train_test.py:95: n/a (1 device): replicas can only diverge
FAILED tests/models_test.py::test_sync_batchnorm_under_pmap[dcgan-16] - boom
"""


def test_skipped_tests_are_reported_with_their_reason():
  parsed = check._pytest_outcomes(_ONE_DEVICE_OUTPUT)
  assert parsed['cpu_devices'] == 1
  assert parsed['counts'] == {'PASSED': 2, 'FAILED': 1, 'ERROR': 0, 'SKIPPED': 2}
  assert parsed['failing'] == [
    'tests/models_test.py::test_sync_batchnorm_under_pmap[dcgan-16]'
  ]
  assert check._tests_note(parsed, '1 CPU device') == (
    '2 passed, 1 failed, 2 skipped (n/a (1 device): replicas can only diverge)'
    ' on 1 CPU device'
  )
