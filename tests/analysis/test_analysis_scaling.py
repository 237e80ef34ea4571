"""Power-law fits recover known exponents; bootstrap CIs cover them."""

import numpy as np
import pytest

from analysis import scaling


def test_recovers_saturating_power_law():
    rng = np.random.default_rng(0)
    x = np.repeat(np.logspace(4, 8, 8), 2)
    y = 3.0 * x ** -0.32 + 0.04
    y = y * np.exp(rng.normal(0, 0.02, len(x)))
    fit = scaling.fit_power_law(x, y, n_boot=200, seed=1)
    assert fit.saturating
    assert fit.alpha == pytest.approx(0.32, abs=0.04)
    assert fit.c == pytest.approx(0.04, abs=0.01)
    assert fit.alpha_ci[0] < 0.32 < fit.alpha_ci[1]
    assert fit.n_boot_ok >= 150
    assert fit.predict(1e6) == pytest.approx(3.0 * 1e6 ** -0.32 + 0.04, rel=0.05)
    again = scaling.fit_power_law(x, y, n_boot=200, seed=1)
    assert again.alpha_ci == fit.alpha_ci  # seeded


def test_pure_power_law_with_few_points():
    x = np.array([1e5, 3e5, 1e6, 1e5, 3e5, 1e6])
    y = 50.0 * x ** -0.5 * np.array([1.01, 0.99, 1.0, 0.99, 1.01, 1.0])
    fit = scaling.fit_power_law(x, y, n_boot=100)
    assert not fit.saturating and fit.c == 0.0  # 3 distinct x -> c = 0
    assert fit.alpha == pytest.approx(0.5, abs=0.02)
    with pytest.raises(ValueError):
        scaling.fit_power_law([1, 1, 1], [0.5, 0.4, 0.3])
    with pytest.raises(ValueError):
        scaling.fit_power_law([1, 2], [0.5, 0.4], saturating=True)


def test_pareto_frontier_and_loglinear():
    x = [1, 2, 3, 4, 5]
    y = [0.9, 0.95, 0.7, 0.8, 0.5]
    assert list(scaling.pareto_frontier(x, y)) == [0, 2, 4]
    f = scaling.fit_loglinear([32, 128, 512], [1e-4, 2e-4, 4e-4])
    assert f.beta == pytest.approx(0.5)
    assert f.predict(2048) == pytest.approx(8e-4)
