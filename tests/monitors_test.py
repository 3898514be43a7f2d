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
