"""The batch policy: the cost line it learns and its per-batch decisions, on a fake clock."""

from __future__ import annotations

import math

import pytest

from lowtide.workers.batcher import (
    FIRST_CAP,
    BatchObservation,
    BatchPolicy,
    CostFit,
    FixedWaitPolicy,
    LineFit,
    efficient_size,
    size_within_s,
)


def obs(queued: int, oldest_wait_s: float = 0.0, since_arrival_s: float = 0.0,
        running: int = 0, timeout_s: float = math.inf) -> BatchObservation:
    return BatchObservation(queued, oldest_wait_s, since_arrival_s, running, timeout_s)


def taught(fixed_s: float, per_item_s: float, sizes: tuple[int, ...] = (1, 8, 16, 32, 64)
           ) -> BatchPolicy:
    p = BatchPolicy()
    for n in sizes:
        p.on_batch(n, fixed_s + per_item_s * n)
    return p


def arrivals(p: BatchPolicy, gap_s: float, n: int = 50) -> float:
    now = 0.0
    for _ in range(n):
        p.on_arrival(now)
        now += gap_s
    return now


# ---- the learned line -------------------------------------------------------------------
def test_line_fit_recovers_fixed_and_per_item_cost() -> None:
    line = LineFit()
    for n in (1, 2, 4, 8, 16, 32):
        line.add(n, 0.010 + 0.0005 * n)
    fit = line.fit()
    assert fit is not None and fit.per_item_s is not None
    assert fit.fixed_s == pytest.approx(0.010)
    assert fit.per_item_s == pytest.approx(0.0005)


def test_line_fit_one_size_knows_no_slope() -> None:
    line = LineFit()
    for _ in range(5):
        line.add(1, 0.004)
    assert line.fit() == CostFit(pytest.approx(0.004), None)  # type: ignore[arg-type]


def test_line_fit_follows_a_changed_curve() -> None:
    line = LineFit()
    for _ in range(20):
        for n in (1, 16):
            line.add(n, 0.010 + 0.001 * n)
    for _ in range(60):
        for n in (1, 16):
            line.add(n, 0.002 + 0.001 * n)  # the model warmed up
    fit = line.fit()
    assert fit is not None and fit.fixed_s == pytest.approx(0.002, abs=0.0005)


def test_line_fit_flat_and_through_origin() -> None:
    flat = LineFit()
    for n in (1, 4, 16):
        flat.add(n, 0.05)
    assert flat.fit() == CostFit(pytest.approx(0.05), 0.0)  # type: ignore[arg-type]
    linear = LineFit()
    for n, t in ((1, 0.0008), (2, 0.0022), (8, 0.008)):
        linear.add(n, t)
    fit = linear.fit()
    assert fit is not None and fit.fixed_s == 0.0 and fit.per_item_s == pytest.approx(0.001,
                                                                                       rel=0.1)


@pytest.mark.parametrize(("fixed_s", "per_item_s", "size"), [
    (0.010, 0.001, 90),    # 90% of the best throughput at 9 x fixed / per item
    (0.001, 0.001, 9),
    (0.0, 0.001, 1),       # no fixed cost: batching gains nothing
    (0.010, 0.0, None),    # flat curve: no bound from efficiency
])
def test_efficient_size(fixed_s: float, per_item_s: float, size: int | None) -> None:
    assert efficient_size(CostFit(fixed_s, per_item_s)) == size


def test_size_within_budget() -> None:
    assert size_within_s(CostFit(0.010, 0.001), 0.050) == 40
    assert size_within_s(CostFit(0.010, 0.001), 0.005) == 1
    assert size_within_s(CostFit(0.010, None), 0.005) is None


# ---- the cap ------------------------------------------------------------------------------
def test_cap_starts_small_and_doubles_with_measured_batches() -> None:
    p = BatchPolicy()
    assert p.cap() == FIRST_CAP
    p.on_batch(8, 0.02)
    assert p.cap() == 16
    p.on_batch(16, 0.021)
    assert p.cap() == 32
    assert p.item_limit == 64


def test_cap_stops_where_batches_stop_paying() -> None:
    p = taught(0.001, 0.001, sizes=(1, 8, 16, 32, 64, 128))
    assert p.cap() == 9
    assert "best throughput" in p.cap_reason


def test_cap_respects_max_batch_size_and_timeout() -> None:
    p = BatchPolicy(max_batch_size=4)
    assert p.cap() == 4 and p.cap_reason == "max_batch_size"
    q = taught(0.010, 0.001)
    assert q.cap(timeout_s=0.060) == 20  # half the timeout: 0.010 + 20 x 0.001
    with pytest.raises(ValueError, match="max_batch_size=0"):
        BatchPolicy(max_batch_size=0)


# ---- decisions ------------------------------------------------------------------------------
def test_a_lone_request_runs_at_once() -> None:
    p = BatchPolicy()
    d = p.decide(obs(1), now=0.0)
    assert (d.take, d.wait_s) == (1, None)
    p = taught(0.010, 0.001)
    arrivals(p, gap_s=0.5)  # light load: a request every half second
    d = p.decide(obs(1), now=100.0)
    assert d.take == 1 and "costs more than a run" in d.reason


def test_nothing_runs_while_a_batch_runs_or_nothing_is_queued() -> None:
    p = taught(0.010, 0.001)
    assert p.decide(obs(0), 0.0).take == 0
    d = p.decide(obs(5, running=1), 0.0)
    assert d.take == 0 and d.wait_s is None


def test_heavy_load_waits_for_more_then_runs_within_a_run_time() -> None:
    p = taught(0.020, 0.0002)
    arrivals(p, gap_s=0.0005)  # 2000 arrivals a second; a run takes ~20 ms
    d = p.decide(obs(3, oldest_wait_s=0.001, since_arrival_s=0.0002), now=1.0)
    assert d.take == 0 and d.wait_s is not None and 0 < d.wait_s <= 0.001
    late = p.decide(obs(10, oldest_wait_s=0.03, since_arrival_s=0.0002), now=1.0)
    assert late.take == 10 and "run time" in late.reason


def test_paused_arrivals_end_the_wait() -> None:
    p = taught(0.020, 0.0002)
    arrivals(p, gap_s=0.0005)
    d = p.decide(obs(5, oldest_wait_s=0.002, since_arrival_s=0.002), now=1.0)
    assert d.take == 5 and "paused" in d.reason


def test_a_full_batch_runs_at_once() -> None:
    p = taught(0.010, 0.001, sizes=(1, 8, 16, 32, 64, 128))
    arrivals(p, gap_s=0.0001)
    cap = p.cap()
    d = p.decide(obs(cap + 5), now=1.0)
    assert d.take == cap and "full batch" in d.reason


def test_view_names_the_learned_parameters() -> None:
    p = taught(0.010, 0.001)
    arrivals(p, gap_s=0.002, n=3)
    v = p.view()
    assert v["fixed_ms"] == pytest.approx(10.0, abs=0.01)
    assert v["per_item_ms"] == pytest.approx(1.0, abs=0.01)
    assert v["arrival_gap_ms"] == pytest.approx(2.0)


def test_fixed_wait_baseline() -> None:
    p = FixedWaitPolicy(0.010, max_batch_size=4)
    assert p.decide(obs(1, oldest_wait_s=0.002), 0.0).wait_s == pytest.approx(0.008)
    assert p.decide(obs(2, oldest_wait_s=0.011), 0.0).take == 2
    assert p.decide(obs(9), 0.0).take == 4
    assert p.item_limit == 8
