"""Clusters and endpoints for the batching benchmarks: start a cluster, deploy and wait
until a replica is ready (with the platform's reason when it is not), measure closed-loop
runs with the batch sizes they formed."""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _load import LoadResult, wrk_closed

import lowtide
from lowtide import Client
from lowtide._local import LocalCluster, start_local_cluster

READY_TIMEOUT_S = 300.0  # torch and a model loading on a busy 2-core machine


class NotReady(RuntimeError):
    """An endpoint of the benchmark did not come up; the message says why."""


@contextmanager
def cluster(fixed_wait_ms: float | None = None) -> Iterator[LocalCluster]:
    """A fresh `lowtide up`; with `fixed_wait_ms` its replicas batch with that fixed window
    instead of the learned policy (LOWTIDE_BATCH_FIXED_WAIT_MS, the baseline)."""
    env = {} if fixed_wait_ms is None else {"LOWTIDE_BATCH_FIXED_WAIT_MS": f"{fixed_wait_ms:g}"}
    with tempfile.TemporaryDirectory(prefix="lowtide-bench-") as tmp, \
            start_local_cluster(Path(tmp), env=env) as running:
        yield running


def batch_view(client: Client, name: str) -> dict[str, Any]:
    """The batch view of a batched function, or of a class's batched `__call__`."""
    for r in client.status(name)["replicas"]["items"]:
        view = r.get("batch") or (r.get("batches") or {}).get("__call__")
        if view:
            return dict(view)
    return {}


def settle(client: Client, name: str, timeout_s: float = 120.0) -> None:
    """Until the endpoint runs and queues nothing: wrk's last requests still run after it
    stopped, in the replica, in the stream and in the activator's memory, and would slow the
    next measurement. Two idle looks a heartbeat apart (in-flight is a heartbeat's figure)."""
    deadline = time.monotonic() + timeout_s
    idle_looks = 0
    time.sleep(1.0)
    while idle_looks < 2:
        st = client.status(name)
        busy = sum(r["in_flight"] for r in st["replicas"]["items"])
        queue = st["queue"]
        idle = not busy and not queue["depth"] and not queue.get("in_memory")
        idle_looks = idle_looks + 1 if idle else 0
        if time.monotonic() > deadline:
            print(f"  {name}: still busy after {timeout_s:g} s ({busy} in flight, queue "
                  f"{queue}); measuring anyway", file=sys.stderr)
            return
        time.sleep(1.0)


def measured(client: Client, name: str, url: str, body: dict, callers: int, duration_s: float
             ) -> tuple[LoadResult, float | None]:
    """One closed-loop run (after a short unmeasured one) and its mean batch size."""
    wrk_closed(url, body, callers, 1)
    settle(client, name)
    before = batch_view(client, name)
    result = wrk_closed(url, body, callers, duration_s)
    settle(client, name)
    after = batch_view(client, name)
    batches = (after.get("batches") or 0) - (before.get("batches") or 0)
    items = ((after.get("mean_size") or 0) * (after.get("batches") or 0)
             - (before.get("mean_size") or 0) * (before.get("batches") or 0))
    return result, (items / batches if batches > 0 else None)


def wait_ready(client: Client, name: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until the endpoint has a ready replica (a class's constructor, the model load, has
    returned); NotReady with the platform's reason when it fails to start or takes too
    long."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        st = client.status(name)
        if st["replicas"]["ready"] >= 1:
            return
        failing = st.get("failing")
        if failing:
            raise NotReady(f"{name} cannot start: {failing.get('summary') or failing}")
        now = f"{st['state']}: {st.get('state_reason') or ''}"
        if now != last:
            print(f"  {name}: {now}", file=sys.stderr)
            last = now
        if time.monotonic() > deadline:
            raise NotReady(f"{name} had no ready replica after {timeout_s:g} s ({now}); see "
                           f"`lowtide status {name}` and `lowtide logs {name}`")
        time.sleep(1.0)


def deployed(client: Client, fn: Callable[..., Any] | type, name: str, body: dict
             ) -> lowtide.Endpoint:
    """Deploy with one replica kept up, wait until it is ready, then one warm-up call."""
    ep = client.deploy(fn, name=name, min_replicas=1, max_replicas=1, timeout=120,
                       memory="2Gi")
    wait_ready(client, name)
    try:
        ep.call(**body)
    except lowtide.LowtideError as exc:
        raise NotReady(f"{name}: the warm-up call failed: {exc}") from None
    return ep
