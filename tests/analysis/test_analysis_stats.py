"""Wilson intervals (known values) and aggregation over seeds."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis import stats


@pytest.mark.parametrize("k,n,lo,hi", [
    # Newcombe (1998), Statistics in Medicine 17:857-872, Table I, method 3 (Wilson score)
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0000, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_known_values(k, n, lo, hi):
    got = stats.wilson_interval(k, n)
    assert got[0] == pytest.approx(lo, abs=5e-5)
    assert got[1] == pytest.approx(hi, abs=5e-5)


def test_wilson_edges():
    assert stats.wilson_interval(10, 10)[1] == 1.0
    assert all(math.isnan(v) for v in stats.wilson_interval(0, 0))
    lo99, hi99 = stats.wilson_interval(50, 100, confidence=0.99)
    lo95, hi95 = stats.wilson_interval(50, 100)
    assert lo99 < lo95 < 0.5 < hi95 < hi99
    with pytest.raises(ValueError):
        stats.wilson_interval(11, 10)


def test_t_and_bootstrap_intervals():
    x = [0.61, 0.65, 0.66, 0.70]
    lo, hi = stats.t_interval(x)
    m, se = np.mean(x), np.std(x, ddof=1) / 2
    t = sps.t.ppf(0.975, 3)
    assert (lo, hi) == pytest.approx((m - t * se, m + t * se))
    assert stats.bootstrap_interval(x, seed=3) == stats.bootstrap_interval(x, seed=3)
    b = stats.bootstrap_interval(x, seed=3)
    assert min(x) <= b[0] <= m <= b[1] <= max(x)
    assert all(math.isnan(v) for v in stats.t_interval([0.5]))


def test_aggregate_counts_and_intervals():
    s = pd.DataFrame({
        "run": ["a0", "a1", "b0"], "T": [2, 2, 3], "seed": [0, 1, 0],
        "final_eval_exact_accuracy": [0.5, 0.6, 0.8], "eval_count": [100, 100, 200],
        "final_eval_step": [40, 40, 20]})
    agg = stats.aggregate(s, "T").set_index("T")
    a = agg.loc[2]
    assert (a["n_runs"], a["n_seeds"], a["seeds"], a["eval_count"]) == (2, 2, [0, 1], 200)
    assert a["mean"] == pytest.approx(0.55)
    assert a["ci_method"] == "t"
    assert (a["ci_low"], a["ci_high"]) == pytest.approx(stats.t_interval([0.5, 0.6]))
    assert (a["wilson_low"], a["wilson_high"]) == pytest.approx(stats.wilson_interval(110, 200))
    b = agg.loc[3]
    assert b["ci_method"] == "wilson" and (b["step_min"], b["step_max"]) == (20, 20)
    assert (b["ci_low"], b["ci_high"]) == pytest.approx(stats.wilson_interval(160, 200))
    one = stats.aggregate(s, None)
    assert one["n_runs"].iloc[0] == 3 and one["n_seeds"].iloc[0] == 2
    c = stats.counts(s.assign(last_step=[40, 40, 20]), "T")
    assert list(c["total_steps"]) == [80, 20]
