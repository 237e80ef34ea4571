"""The paper's numbers and how configurations match them."""

import pytest

from analysis import published as pub

BASE = dict(T=3, n=6, mixer="mlp", ema=True, hidden_size=64, num_layers=2, halting="halt_only",
            gradient="last_cycle", core="trm")


def test_table_has_the_study_plan_numbers():
    vals = {(p.experiment, p.label): p.value for p in pub.PUBLISHED}
    assert vals[("E1.1", "baseline (MLP, T=3, n=6, EMA)")] == 87.4
    assert vals[("E2.1", "EMA off")] == 79.9
    assert vals[("E2.2", "T=2, n=2")] == 73.7
    assert vals[("E2.3", "self-attention mixer")] == 74.7
    assert {p.value for p in pub.for_experiment("E2.7")} == {82.4, 71.9, 79.5}
    assert pub.PUBLISHED[0].fraction == pytest.approx(0.874)


@pytest.mark.parametrize("change,varying,expected", [
    ({}, [], 87.4),
    ({"T": 2, "n": 2}, ["T", "n"], 73.7),
    ({"T": 2, "n": 2}, [], 73.7),  # structural axes count even when not varying
    ({"T": 4, "n": 6}, ["T", "n"], None),
    ({"ema": False}, ["ema"], 79.9),
    ({"mixer": "attention"}, ["mixer"], 74.7),
    ({"hidden_size": 64}, ["hidden_size"], None),  # a scale axis that varies
    ({"hidden_size": 512}, ["hidden_size"], 87.4),
    ({"num_layers": 4, "n": 3}, ["num_layers", "n"], 79.5),
    ({"halting": "halt_continue"}, ["halting"], 86.1),
    ({"halting": "none"}, ["halting"], None),
    ({"gradient": "one_step"}, [], 56.5),
    ({"gradient": "full"}, [], None),
    ({"core": "trm_separate"}, ["core"], 82.4),
    ({"core": "trm_single_latent"}, [], 71.9),
])
def test_match(change, varying, expected):
    entry = pub.match({**BASE, **change}, varying)
    assert (entry.value if entry else None) == expected


def test_match_other_tasks():
    maze = dict(BASE, mixer="attention", n=4, task_family="maze")
    assert pub.match(maze).value == 85.3
    assert pub.match(dict(maze, task_family="arc1"), metric="pass@2").value == 44.6


def test_relative_match_for_cpu_twins():
    twin = dict(BASE, T=2, n=3, hidden_size=64)
    assert pub.match(dict(twin, ema=False), ["ema"]) is None  # T, n differ from the paper's
    assert pub.match(dict(twin, ema=False), ["ema"], relative=True).value == 79.9
    assert pub.match(dict(twin, mixer="attention"), ["mixer"], relative=True).value == 74.7
    assert pub.match(dict(twin, T=2, n=2), ["T", "n"], relative=True).value == 73.7
    assert pub.match(twin, [], relative=True) is None  # nothing varies: no anchor


def test_get_and_percent_read_the_single_table():
    assert pub.get("E2.1").value == 79.9
    assert pub.get("E2.7", "single latent z").value == 71.9
    assert pub.percent("E2.2") == "73.7%" and pub.percent("ARC-2") == "7.8%"
    with pytest.raises(KeyError, match="3 published entries for 'E2.7'"):
        pub.get("E2.7")
    with pytest.raises(KeyError):
        pub.get("E9.9")
