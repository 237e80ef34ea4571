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
    assert (a["n_runs"], a["n_seeds"], a["seeds"], a["eval_count"]) == (2, 2, [0, 1], 100)
    assert a["mean"] == pytest.approx(0.55)
    assert a["ci_method"] == "t"
    assert (a["ci_low"], a["ci_high"]) == pytest.approx(stats.t_interval([0.5, 0.6],
                                                                         bounds=(0, 1)))
    b = agg.loc[3]
    assert b["ci_method"] == "wilson" and (b["step_min"], b["step_max"]) == (20, 20)
    assert (b["ci_low"], b["ci_high"]) == pytest.approx(stats.wilson_interval(160, 200))
    one = stats.aggregate(s, None)
    assert one["n_runs"].iloc[0] == 3 and one["n_seeds"].iloc[0] == 2
    c = stats.counts(s.assign(last_step=[40, 40, 20]), "T")
    assert list(c["total_steps"]) == [80, 20]


def test_wilson_is_scipys_and_known_8_of_10():
    # Wilson (1927) score interval for 8/10 at 95 %: (0.4902, 0.9433)
    lo, hi = stats.wilson_interval(8, 10)
    assert (lo, hi) == pytest.approx((0.4902, 0.9433), abs=5e-5)
    ci = sps.binomtest(8, 10).proportion_ci(confidence_level=0.95, method="wilson")
    assert (lo, hi) == pytest.approx((ci.low, ci.high), rel=1e-12)
    # never outside [0, 1], never zero width at the edges
    for k in (0, 1, 9, 10):
        lo, hi = stats.wilson_interval(k, 10)
        assert 0.0 <= lo < hi <= 1.0


def test_t_interval_is_scipys_and_bounded():
    x = [0.2, 0.4, 0.45]
    m = np.mean(x)
    assert stats.t_interval(x, 0.9) == pytest.approx(
        sps.t.interval(0.9, 2, loc=m, scale=sps.sem(x)))
    lo, hi = stats.t_interval([0.95, 1.0], bounds=(0, 1))
    assert hi == 1.0 and 0 <= lo < 0.95
    assert stats.t_interval([0.95, 1.0])[1] > 1.0  # unbounded without bounds
    assert all(math.isnan(v) for v in stats.t_interval([0.5, 0.5]))  # never zero width


def test_bootstrap_is_scipys():
    x = np.array([0.61, 0.65, 0.66, 0.70, 0.58])
    got = stats.bootstrap_interval(x, 0.9, n_boot=500, seed=7)
    want = sps.bootstrap((x,), np.mean, n_resamples=500, confidence_level=0.9,
                         method="percentile", rng=np.random.default_rng(7)).confidence_interval
    assert got == pytest.approx((want.low, want.high))
    assert all(math.isnan(v) for v in stats.bootstrap_interval([0.5]))


def _summary(vals, count=100):
    return pd.DataFrame({"run": [f"r{i}" for i in range(len(vals))], "T": 2,
                         "seed": list(range(len(vals))), "final_eval_exact_accuracy": vals,
                         "eval_count": count, "final_eval_step": 40})


def test_identical_seeds_get_a_floor_never_pooled_puzzles():
    agg = stats.aggregate(_summary([0.9, 0.9, 0.9], count=100), "T").iloc[0]
    assert agg["ci_method"] == "t, sd floor"  # the sd is floored at one puzzle (1/100)
    half = sps.t.ppf(0.975, 2) * 0.01 / math.sqrt(3)
    assert (agg["ci_low"], agg["ci_high"]) == pytest.approx((0.9 - half, 0.9 + half))
    # a spread below one puzzle is floored too; a larger one is the plain t interval
    assert stats.aggregate(_summary([0.9, 0.901]), "T").iloc[0]["ci_method"] == "t, sd floor"
    assert stats.aggregate(_summary([0.8, 0.9]), "T").iloc[0]["ci_method"] == "t"
    # without an eval count there is no resolution to floor at: no interval, and it says so
    agg = stats.aggregate(_summary([0.9, 0.9], count=None), "T").iloc[0]
    assert agg["ci_method"] == "none" and math.isnan(agg["ci_low"])
    # all seeds at 100 %: the interval still has width and stays <= 1
    agg = stats.aggregate(_summary([1.0, 1.0]), "T").iloc[0]
    assert agg["ci_high"] == 1.0 and 0.8 < agg["ci_low"] < 1.0
    # many puzzles never narrow a seed interval: 2 seeds that disagree stay wide
    wide = stats.aggregate(_summary([0.5, 0.7], count=10**6), "T").iloc[0]
    assert wide["ci_high"] - wide["ci_low"] > 0.5


def test_one_run_is_wilson_and_seeds_are_averaged_first():
    one = stats.aggregate(_summary([0.8], count=200), "T").iloc[0]
    assert one["ci_method"] == "wilson"
    assert (one["ci_low"], one["ci_high"]) == pytest.approx(stats.wilson_interval(160, 200))
    # two runs of one seed are one per-seed value: no interval over seeds, and no Wilson
    s = _summary([0.6, 0.8]).assign(seed=[0, 0])
    agg = stats.aggregate(s, "T").iloc[0]
    assert (agg["n_seeds"], agg["mean"], agg["ci_method"]) == (1, pytest.approx(0.7), "none")


def test_paired_interval_and_labels():
    a = {0: 0.50, 1: 0.60, 2: 0.55, 9: 0.1}
    b = {0: 0.60, 1: 0.65, 2: 0.70}
    ci = stats.paired_seed_interval(a, b)
    assert ci.n == 3 and ci.method == "t"
    assert (ci.low, ci.high) == pytest.approx(stats.t_interval([0.10, 0.05, 0.15]))
    assert stats.interval_label("t") == "95% t interval over seeds"
    assert stats.interval_label(["t", "wilson", "t"], 0.9) == (
        "90% t interval over seeds; Wilson interval over one run's puzzles")
    assert stats.interval_label("none") == "no interval"


def test_accuracy_intervals_stay_in_0_1():
    for vals in ([0.97, 1.0], [0.0, 0.04], [0.5, 0.99, 0.01]):
        a = stats.aggregate(_summary(vals), "T").iloc[0]
        assert 0.0 <= a["ci_low"] <= a["mean"] <= a["ci_high"] <= 1.0
    # a loss is not bounded and gets no floor even with an eval count
    s = _summary([0.5, 1.5]).rename(columns={"final_eval_exact_accuracy": "final_eval_lm_loss"})
    a = stats.aggregate(s, "T", "final_eval_lm_loss").iloc[0]
    assert a["ci_low"] < 0 and a["eval_count"] == 100
    s = _summary([0.5, 0.5]).rename(columns={"final_eval_exact_accuracy": "final_eval_lm_loss"})
    assert stats.aggregate(s, "T", "final_eval_lm_loss").iloc[0]["ci_method"] == "none"


@pytest.mark.parametrize("p,want", [
    # by hand: sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04,
    # then the running maximum (0.04 -> 0.06), back in the input order
    ([0.01, 0.04, 0.03, 0.005], [0.03, 0.06, 0.06, 0.02]),
    # ties: 0.02 x3 = 0.06 and 0.02 x2 = 0.04 -> raised to 0.06; the tied values stay equal
    ([0.02, 0.5, 0.02], [0.06, 0.5, 0.06]),
    # capped at 1: 0.6 x2 = 1.2
    ([0.7, 0.6], [1.0, 1.0]),
    ([0.4, 0.6], [0.8, 0.8]),
    ([0.03], [0.03]),
    ([], []),
])
def test_holm_known_values(p, want):
    assert stats.holm(p) == pytest.approx(want)


def test_holm_is_monotone_keeps_the_order_and_never_lowers_a_p_value():
    rng = np.random.default_rng(3)
    for _ in range(50):
        p = rng.uniform(0, 0.2, size=rng.integers(2, 9))
        p[rng.integers(0, len(p))] = p[0]  # a tie
        adj = np.asarray(stats.holm(p))
        assert np.all(adj >= p) and np.all(adj <= 1)
        order = np.argsort(p, kind="stable")
        assert np.all(np.diff(adj[order]) >= 0)  # the raw values' order is kept
        assert adj[np.argmin(p)] == pytest.approx(len(p) * p.min())  # smallest: x m
        # the input order is kept: adjusting a permutation permutes the result
        perm = rng.permutation(len(p))
        assert stats.holm(p[perm]) == pytest.approx(list(adj[perm]))


@pytest.mark.parametrize("bad", [[0.1, math.nan], [-0.01], [0.2, 1.5]])
def test_holm_refuses_what_is_not_a_p_value(bad):
    with pytest.raises(ValueError, match=r"p-values must lie in \[0, 1\]"):
        stats.holm(bad)


def test_paired_p_is_the_paired_t_of_the_interval():
    a = {0: 0.54, 1: 0.38, 2: 0.53}
    b = {0: 0.48, 1: 0.31, 2: 0.43, 3: 0.9}  # seed 3 has no partner: left out
    p = stats.paired_seed_p(a, b)
    want = sps.ttest_rel([0.48, 0.31, 0.43], [0.54, 0.38, 0.53]).pvalue
    assert p == pytest.approx(want)
    ci = stats.paired_seed_interval(a, b)
    assert (p < 0.05) == (ci.high < 0) and ci.n == 3
    # the (1 - p) interval ends at zero: a little wider includes it, a little narrower not
    assert stats.paired_seed_interval(a, b, confidence=1 - p + 1e-9).high > 0
    assert stats.paired_seed_interval(a, b, confidence=1 - p - 1e-9).high < 0
    # identical per-seed differences: the floored sd gives both the interval and the p
    same = {0: 0.1, 1: 0.2, 2: 0.3}
    shifted = {k: v + 0.004 for k, v in same.items()}
    t = 0.004 / (0.002 / math.sqrt(3))
    assert stats.paired_seed_p(same, shifted, floor_sd=0.002) == pytest.approx(
        2 * sps.t.sf(t, 2))
    assert stats.paired_seed_interval(same, shifted, floor_sd=0.002).method == "t, sd floor"
    assert math.isnan(stats.paired_seed_p(same, shifted))  # no spread, no floor: none
    assert math.isnan(stats.paired_seed_p({0: 0.1}, {0: 0.2}))  # one seed


def test_paired_interval_bounds():
    a, b = {0: 0.0, 1: 0.0, 2: 0.01}, {0: 1.0, 1: 0.95, 2: 0.6}
    assert stats.paired_seed_interval(a, b).high > 1
    ci = stats.paired_seed_interval(a, b, bounds=(-1, 1))
    assert ci.high == 1.0 and -1 <= ci.low < 0.85
