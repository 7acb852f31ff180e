"""The adaptive keep-alive (hybrid histogram policy): pure, fed idle gaps, no clock."""

from __future__ import annotations

import pytest

from lowtide.platform.keepalive import (
    IdleGaps,
    KeepAlive,
    KeepAliveSettings,
    bin_counts,
    coefficient_of_variation,
    fixed,
    percentile,
)

SETTINGS = KeepAliveSettings()


@pytest.mark.parametrize(
    ("values", "pct", "expected"),
    [
        ([], 50, 0.0),
        ([7.0], 99, 7.0),
        ([1.0, 2.0, 3.0], 0, 1.0),
        ([1.0, 2.0, 3.0], 50, 2.0),
        ([1.0, 2.0, 3.0], 100, 3.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([0.0, 10.0], 5, 0.5),
        ([0.0, 10.0], 150, 10.0),  # out of range: clamped
    ],
)
def test_percentile(values: list[float], pct: float, expected: float) -> None:
    assert percentile(values, pct) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("gaps", "bin_s", "range_s", "expected"),
    [
        ([], 60, 180, [0, 0, 0]),
        ([0, 59.9, 60, 179.9], 60, 180, [2, 1, 1]),
        ([180, 500], 60, 180, [0, 0, 0]),  # out of range
        ([10], 60, 30, [1]),  # at least one bin
    ],
)
def test_bin_counts(gaps: list[float], bin_s: float, range_s: float, expected: list[int]
                    ) -> None:
    assert bin_counts(gaps, bin_s, range_s) == expected


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ([], 0.0),
        ([0, 0, 0], 0.0),
        ([5, 5, 5, 5], 0.0),  # uniform: no pattern
        ([4, 0, 0, 0], 3 ** 0.5),  # one bin: concentrated
    ],
)
def test_coefficient_of_variation(counts: list[int], expected: float) -> None:
    assert coefficient_of_variation(counts) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("ka", "idle_s", "warm"),
    [
        (KeepAlive(0, 600, ""), 0, True),
        (KeepAlive(0, 600, ""), 599.9, True),
        (KeepAlive(0, 600, ""), 600, False),
        (KeepAlive(700, 1000, "", bridge_s=60), 30, True),  # a burst is bridged
        (KeepAlive(700, 1000, "", bridge_s=60), 60, False),  # unloaded
        (KeepAlive(700, 1000, "", bridge_s=60), 700, True),  # pre-warmed
        (KeepAlive(700, 1000, "", bridge_s=60), 1000, False),
    ],
)
def test_warm_at(ka: KeepAlive, idle_s: float, warm: bool) -> None:
    assert ka.warm_at(idle_s) is warm


def learned(gaps: list[float]) -> KeepAlive:
    idle = IdleGaps(SETTINGS)
    for gap in gaps:
        idle.note_idle_gap(gap)
    return idle.window()


def test_without_gaps_the_fixed_window_is_used() -> None:
    ka = learned([])
    assert (ka.prewarm_s, ka.keep_s) == (0.0, SETTINGS.fixed_s)
    assert "0 idle gaps seen" in ka.reason


def test_short_gaps_are_bursts_not_idle_periods() -> None:
    assert learned([1.0, 5.0, 59.0] * 10).keep_s == SETTINGS.fixed_s


def test_a_regular_timer_is_pre_warmed_before_its_next_call() -> None:
    ka = learned([900.0, 901.0, 899.0, 900.5, 900.0, 899.5])  # every 15 minutes
    assert ka.warm_at(899.0) and ka.warm_at(901.0)  # warm when it comes
    assert not ka.warm_at(300.0)  # unloaded in between: no idle memory
    assert ka.warm_at(10.0)  # but a burst right after a call still finds it warm
    assert ka.keep_s < SETTINGS.fixed_s * 2
    assert "pre-warm at" in ka.reason


def test_a_pattern_of_short_gaps_keeps_alive_just_past_its_tail() -> None:
    ka = learned([70.0, 80.0, 65.0, 90.0, 75.0, 70.0])  # idle about a minute each time
    assert ka.prewarm_s == 0.0
    assert 90.0 < ka.keep_s < SETTINGS.fixed_s
    assert "p99" in ka.reason


def test_gaps_without_a_pattern_fall_back_to_the_fixed_window() -> None:
    spread = [60.0 * k + 30 for k in range(0, 240, 2)]  # every other bin once: uniform
    ka = learned(spread)
    assert (ka.prewarm_s, ka.keep_s) == (0.0, SETTINGS.fixed_s)
    assert "without a pattern" in ka.reason


def test_gaps_mostly_beyond_the_range_fall_back_to_the_fixed_window() -> None:
    ka = learned([8 * 3600.0] * 6 + [900.0] * 2)  # a nightly pause is out of range
    assert ka.keep_s == SETTINGS.fixed_s
    assert "over 4 h" in ka.reason


def test_too_few_gaps_is_no_pattern_yet() -> None:
    ka = learned([900.0] * (SETTINGS.min_gaps - 1))
    assert ka.keep_s == SETTINGS.fixed_s


def test_old_gaps_fade_out() -> None:
    idle = IdleGaps(KeepAliveSettings(history=10))
    for _ in range(10):
        idle.note_idle_gap(900.0)
    for _ in range(10):
        idle.note_idle_gap(120.0)
    assert idle.window().keep_s < 300.0


def test_a_forced_window_says_so() -> None:
    assert fixed(4.0) == KeepAlive(0.0, 4.0, "fixed by --keep-alive")
