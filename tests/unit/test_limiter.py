"""The learned concurrency limit: named math in tables, then scenarios against simulated
servers on a fake clock (no sleeping, no wall clock)."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from lowtide.limiter import GradientLimiter, LimiterConfig, grown, shrunk

# ---- named math -----------------------------------------------------------------------


@pytest.mark.parametrize(("limit", "growth", "max_limit", "expected"), [
    (1, 0.25, 1000, 2),      # at least one
    (4, 0.25, 1000, 5),
    (100, 0.25, 1000, 125),  # a quarter of itself
    (999, 0.25, 1000, 1000),  # never past the max
    (1000, 0.25, 1000, 1000),
    (8, 1.0, 1000, 16),
])
def test_grown(limit: int, growth: float, max_limit: int, expected: int) -> None:
    assert grown(limit, growth, max_limit) == expected


@pytest.mark.parametrize(("limit", "target_s", "recent_s", "expected"), [
    (10, 0.030, 0.031, 9),    # just over: at least one less
    (10, 0.030, 0.040, 7),    # in proportion
    (10, 0.030, 1.000, 5),    # at most half
    (1, 0.030, 1.000, 1),     # never under the min
    (2, 0.032, 0.040, 1),
    (300, 0.127, 0.200, 190),
])
def test_shrunk(limit: int, target_s: float, recent_s: float, expected: int) -> None:
    assert shrunk(limit, target_s, recent_s, min_limit=1) == expected


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"initial_limit": 0}, "min_limit"),
    ({"min_limit": 5, "initial_limit": 4}, "min_limit"),
    ({"initial_limit": 2000}, "max_limit"),
    ({"grow_ratio": 2.0, "shrink_ratio": 1.5}, "grow_ratio"),
    ({"growth": 0.0}, "growth"),
])
def test_config_is_validated(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LimiterConfig(**kwargs)  # type: ignore[arg-type]


# ---- a simulated server ---------------------------------------------------------------

Latency = Callable[[int, float], float]  # (in flight including this one, now) -> seconds


def cpu_bound(cores: int, service_s: float) -> Latency:
    """Processor sharing: beyond `cores` each added request only waits."""
    return lambda c, _now: service_s * max(1.0, c / cores)


def io_bound(wait_s: float, cpu_per_request_s: float = 0.0002) -> Latency:
    """Awaits wait_s; the replica's CPU (one core) saturates at 1/cpu_per_request_s req/s."""
    return lambda c, _now: max(wait_s, c * cpu_per_request_s)


@dataclass
class Sim:
    """A closed-loop load of `clients` callers against one replica admitted by the limiter."""
    latency: Latency
    clients: int = 1000
    limiter: GradientLimiter = field(default_factory=GradientLimiter)
    now: float = 0.0
    limits: list[tuple[float, int]] = field(default_factory=list)
    admitted: list[tuple[float, int]] = field(default_factory=list)
    done: int = 0
    _running: list[tuple[float, float, int]] = field(default_factory=list)

    def run_until(self, end_s: float) -> None:
        while self.now < end_s:
            while len(self._running) < min(self.limiter.admit_limit, self.clients):
                c = len(self._running) + 1
                heapq.heappush(self._running, (self.now + self.latency(c, self.now), self.now, c))
                self.admitted.append((self.now, len(self._running)))
            finish, started, c = heapq.heappop(self._running)
            self.now = finish
            self.limiter.on_sample(finish - started, c, finish)
            self.done += 1
            self.limits.append((self.now, self.limiter.limit))

    def limits_between(self, start_s: float, end_s: float) -> list[int]:
        return [lim for t, lim in self.limits if start_s <= t < end_s]


# ---- scenarios ------------------------------------------------------------------------


@pytest.mark.parametrize("cores", [1, 2, 4, 8])
def test_cpu_bound_settles_near_its_cores(cores: int) -> None:
    sim = Sim(cpu_bound(cores, 0.020))
    sim.run_until(120.0)
    late = sim.limits_between(60.0, 120.0)
    assert max(late) <= 2 * cores
    assert min(late) >= max(1, cores // 2)


def test_io_bound_grows_to_hundreds() -> None:
    sim = Sim(io_bound(0.100), clients=2000)
    sim.run_until(60.0)
    late = sim.limits_between(30.0, 60.0)
    assert min(late) >= 200
    assert max(late) <= 1000


def test_io_bound_stops_where_the_replica_cpu_saturates() -> None:
    sim = Sim(io_bound(0.100, cpu_per_request_s=0.001), clients=2000)  # knee at 100 in flight
    sim.run_until(120.0)
    late = sim.limits_between(60.0, 120.0)
    assert min(late) >= 50
    assert max(late) <= 200


@pytest.mark.parametrize("clients", [1, 2, 10, 100])
def test_no_growth_while_in_flight_stays_under_half_the_limit(clients: int) -> None:
    sim = Sim(io_bound(0.100), clients=clients)  # never more than `clients` in flight
    sim.run_until(300.0)
    # the last step that was allowed started at in-flight >= half the limit
    assert max(lim for _, lim in sim.limits) <= max(4, grown(2 * clients, 0.25, 1000))
    assert sim.limiter.limit >= clients


def test_latency_rise_shrinks_by_at_most_half_per_window() -> None:
    slow_from = 60.0
    sim = Sim(lambda c, now: 0.500 if now >= slow_from else 0.100)
    sim.run_until(slow_from)
    before = sim.limiter.limit
    assert before >= 200
    sim.run_until(slow_from + 5.0)
    after = sim.limits_between(slow_from, slow_from + 5.0)
    assert after[-1] < before / 2
    steps = [b / a for a, b in itertools.pairwise(after) if b < a]
    assert steps and min(steps) >= 0.5 - 1e-9


def test_recovers_after_a_slow_period() -> None:
    sim = Sim(lambda c, now: 0.500 if 60.0 <= now < 70.0 else 0.100, clients=400)
    sim.run_until(60.0)
    before = sim.limiter.limit
    sim.run_until(70.0)
    assert min(sim.limits_between(60.0, 70.0)) < before / 4
    sim.run_until(150.0)
    assert min(sim.limits_between(120.0, 150.0)) >= before / 2
    assert sim.limiter.no_load_s == pytest.approx(0.100)  # re-probed after the slow period


def test_reprobe_follows_a_function_that_got_slower() -> None:
    sim = Sim(lambda c, now: (0.020 if now < 60.0 else 0.060) * max(1, c / 2))
    sim.run_until(60.0)
    assert sim.limiter.no_load_s == pytest.approx(0.020)
    sim.run_until(150.0)
    assert sim.limiter.no_load_s == pytest.approx(0.060)
    assert max(sim.limits_between(120.0, 150.0)) <= 4


def test_probe_admits_one_at_a_time_and_restores_the_limit() -> None:
    config = LimiterConfig(probe_interval_s=10.0)
    sim = Sim(io_bound(0.100), clients=2000, limiter=GradientLimiter(config))
    sim.run_until(9.9)
    grown_to = sim.limiter.limit
    sim.run_until(10.5)
    assert sim.limiter.probing and sim.limiter.admit_limit == 1
    assert sim.limiter.limit >= grown_to  # what the autoscaler sees does not drop
    sim.run_until(11.5)
    assert not sim.limiter.probing and sim.limiter.admit_limit == sim.limiter.limit


def test_first_requests_probe_no_load() -> None:
    lim = GradientLimiter()
    assert lim.probing and lim.admit_limit == 1 and lim.no_load_s is None
    for i in range(3):
        lim.on_sample(0.050, 1, 0.050 * (i + 1))
    assert not lim.probing and lim.no_load_s == pytest.approx(0.050)
    assert lim.admit_limit == 4


def test_probe_without_lone_requests_is_abandoned_by_tick() -> None:
    lim = GradientLimiter(LimiterConfig(max_probe_s=5.0))
    assert not lim.tick(4.9)
    assert lim.probing
    assert lim.tick(5.0)
    assert not lim.probing and lim.admit_limit == 4


def test_samples_admitted_under_an_older_limit_are_ignored() -> None:
    lim = GradientLimiter(LimiterConfig(window_samples=2, window_s=0.0))
    for i in range(3):
        lim.on_sample(0.010, 1, 0.01 * (i + 1))
    window_start = 0.03
    assert lim.no_load_s == pytest.approx(0.010)
    # a slow request that started before the window: no decision from it
    assert not lim.on_sample(1.0, 4, window_start + 0.5)
    assert not lim.on_sample(1.0, 4, window_start + 0.6)
    assert lim.limit == 4
