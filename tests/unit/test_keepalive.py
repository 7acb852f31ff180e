"""The adaptive keep-alive (hybrid histogram policy): pure, fed idle gaps, no clock."""

from __future__ import annotations

import pytest

from lowtide.platform.keepalive import (
    DailyArrivals,
    DailySettings,
    IdleGaps,
    KeepAlive,
    KeepAliveSettings,
    bin_counts,
    circular_offset,
    coefficient_of_variation,
    daily_habit,
    fixed,
    percentile,
)

SETTINGS = KeepAliveSettings()
DAILY = DailySettings()
DAY_S = 86400.0
MIDNIGHT = 19_000 * DAY_S  # a UTC midnight: times of day below read as clock times
NIGHT_S = 8 * 3600.0


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


# ---- the daily pattern ------------------------------------------------------------------
def at(day: int, clock: str) -> float:
    """Seconds since the epoch of `clock` (HH:MM) on `day` after MIDNIGHT."""
    hours, minutes = clock.split(":")
    return MIDNIGHT + day * DAY_S + int(hours) * 3600 + int(minutes) * 60


@pytest.mark.parametrize(
    ("a_s", "b_s", "expected"),
    [(100.0, 40.0, 60.0), (40.0, 100.0, -60.0), (60.0, DAY_S - 60, 120.0),
     (DAY_S - 60, 60.0, -120.0), (0.0, DAY_S / 2, -DAY_S / 2)],
)
def test_circular_offset(a_s: float, b_s: float, expected: float) -> None:
    assert circular_offset(a_s, b_s, DAY_S) == pytest.approx(expected)


def daily(wakeups: list[float], idle_s: float = NIGHT_S,
          settings: DailySettings = DAILY) -> DailyArrivals:
    d = DailyArrivals(settings)
    for w in wakeups:
        d.note_wakeup(w, idle_s)
    return d


MORNINGS = [at(0, "06:00"), at(1, "06:05"), at(2, "06:02")]


@pytest.mark.parametrize(
    ("wakeups", "now", "expected"),
    [
        ([], at(1, "05:59"), False),
        # one idle night ended at 06:00: the next morning is warm from 05:58 to 06:15
        ([at(0, "06:00")], at(1, "05:57"), False),
        ([at(0, "06:00")], at(1, "05:58"), True),
        ([at(0, "06:00")], at(1, "06:14"), True),
        ([at(0, "06:00")], at(1, "06:15"), False),  # it did not come: give up
        ([at(0, "06:00")], at(0, "06:05"), False),  # the same day: it has come already
        ([at(0, "06:00")], at(1, "12:00"), False),
        # three mornings within a few minutes: warm from the earliest less the lead time
        (MORNINGS, at(3, "05:57"), False),
        (MORNINGS, at(3, "05:58"), True),
        (MORNINGS, at(3, "06:19"), True),  # until the latest plus the hold
        (MORNINGS, at(3, "06:20"), False),
        ([*MORNINGS, at(3, "06:01")], at(3, "06:03"), False),  # today's came
        # a habit across midnight
        ([at(0, "23:55"), at(2, "00:05")], at(3, "23:53"), True),
        ([at(0, "23:55"), at(2, "00:05")], at(3, "22:00"), False),
        # no habit: each day at another time, or many wake-ups a day (random arrivals)
        ([at(0, "06:00"), at(1, "14:00"), at(2, "22:00")], at(3, "05:59"), False),
        ([at(0, "06:00"), at(1, "14:00"), at(2, "22:00")], at(3, "13:59"), False),
        ([at(0, "01:00"), at(0, "04:00"), at(0, "08:00")], at(1, "00:59"), False),
        # one day in five broke the habit: still 4 of 5 (80 %); two in five: not
        ([at(d, "06:00") for d in range(4)] + [at(4, "11:00")], at(5, "05:59"), True),
        ([at(d, "06:00") for d in range(3)] + [at(3, "11:00"), at(4, "16:00")],
         at(5, "05:59"), False),
    ],
)
def test_daily_expected(wakeups: list[float], now: float, expected: bool) -> None:
    assert (daily(wakeups).expected(now) is not None) is expected


def test_daily_reason_names_the_time_and_the_days() -> None:
    e = daily(MORNINGS).expected(at(3, "05:59"))
    assert e is not None
    assert e.reason == "arrivals expected around 06:02 UTC (daily pattern, 3 of last 3 days)"
    assert (e.from_at, e.until_at) == (at(3, "05:58"), at(3, "06:20"))


def test_short_idle_periods_are_not_wake_ups() -> None:
    assert not daily([at(0, "06:00")], idle_s=DAILY.min_idle_s - 1).wakeups
    assert daily([at(0, "06:00")], idle_s=DAILY.min_idle_s).wakeups


def test_the_daily_history_is_bounded_and_forgets_old_days() -> None:
    d = daily([at(day, "06:00") + hour * 3600 for day in range(30) for hour in range(0, 24, 2)])
    per_day = DAY_S / DAILY.min_idle_s
    assert len(d.wakeups) <= DAILY.days * per_day
    d = daily([at(0, "06:00")])
    assert d.expected(at(DAILY.days + 1, "05:59")) is None  # a week later: forgotten
    assert not d.wakeups


def test_daily_habit_takes_the_time_most_days_share() -> None:
    h = daily_habit([at(0, "06:00"), at(1, "09:00"), at(2, "06:10"), at(3, "06:05")], DAILY)
    assert h is not None
    assert (h.days, h.seen_days, h.wakeups) == (3, 4, 4)
    assert (h.earliest_s, h.latest_s) == (6 * 3600, 6 * 3600 + 600)
