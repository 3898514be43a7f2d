"""The GAN health monitors fire on the failures they name, and only then."""

import logging

import numpy as np

from dcgan_jax.core import monitors


def real_like(n=64, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (n, 8, 8, 1))


def test_diversity_is_the_mean_pairwise_distance():
  images = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
  # Pairs: 5, 0, 5 (each counted twice over 3 * 2 ordered pairs).
  assert np.isclose(monitors.diversity(images), 10 * 2 / 6)
  assert monitors.diversity(np.ones((5, 4, 4, 1))) == 0.0


def test_d_wins_warns_after_the_window_and_resets(caplog):
  monitor = monitors.GANMonitors(real_like(), d_wins_window=3, collapse_ratio=0.2)
  winning = {'d_real': 0.999, 'd_fake': 0.001}
  healthy = {'d_real': 0.7, 'd_fake': 0.3}
  with caplog.at_level(logging.WARNING):
    flags = [monitor.on_log(s, winning)['monitor/d_wins'] for s in (10, 20)]
    assert flags == [0.0, 0.0] and 'wins outright' not in caplog.text
    assert monitor.on_log(30, winning)['monitor/d_wins'] == 1.0
    assert 'wins outright since step 10' in caplog.text
    assert monitor.on_log(40, healthy)['monitor/d_wins'] == 0.0


def test_collapse_warns_for_identical_samples_only(caplog):
  monitor = monitors.GANMonitors(real_like(), d_wins_window=3, collapse_ratio=0.2)
  with caplog.at_level(logging.WARNING):
    fine = monitor.on_samples(5, real_like(seed=1))['monitor/sample_diversity']
    assert 0.8 < fine < 1.2 and 'mode collapse' not in caplog.text
    collapsed = np.repeat(real_like(1), 64, axis=0) + 1e-3 * real_like(seed=2)
    ratio = monitor.on_samples(6, collapsed)['monitor/sample_diversity']
    assert ratio < 0.01 and 'Possible mode collapse at step 6' in caplog.text


def collapsed_like(n=64):
  return np.repeat(real_like(1), n, axis=0) + 1e-3 * real_like(n, seed=2)


def test_collapse_is_not_judged_during_warm_up(caplog):
  monitor = monitors.GANMonitors(
    real_like(), d_wins_window=3, collapse_ratio=0.2, collapse_warmup_steps=100
  )
  with caplog.at_level(logging.WARNING):
    for step in (0, 50, 99):  # An untrained G: alike samples, no warning yet.
      ratio = monitor.on_samples(step, collapsed_like())['monitor/sample_diversity']
      assert ratio < 0.01  # The scalar is still reported.
    assert 'mode collapse' not in caplog.text
    monitor.on_samples(100, collapsed_like())
    assert 'Possible mode collapse at step 100' in caplog.text


def test_collapse_after_diverse_samples_warns_before_the_warm_up_ends(caplog):
  monitor = monitors.GANMonitors(
    real_like(), d_wins_window=3, collapse_ratio=0.2, collapse_warmup_steps=10_000
  )
  with caplog.at_level(logging.WARNING):
    monitor.on_samples(0, collapsed_like())
    monitor.on_samples(10, collapsed_like())
    assert 'mode collapse' not in caplog.text
    monitor.on_samples(20, real_like(seed=3))  # Diverse once: G has learned.
    monitor.on_samples(30, collapsed_like())
    assert 'Possible mode collapse at step 30' in caplog.text


def test_collapse_never_warns_at_step_zero(caplog):
  monitor = monitors.GANMonitors(
    real_like(), d_wins_window=3, collapse_ratio=0.2, collapse_warmup_steps=0
  )
  with caplog.at_level(logging.WARNING):
    monitor.on_samples(0, collapsed_like())
    assert 'mode collapse' not in caplog.text
    monitor.on_samples(1, collapsed_like())
    assert 'Possible mode collapse at step 1' in caplog.text
