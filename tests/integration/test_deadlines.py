"""A synchronous call that no replica takes by its latest start is answered then (503 when the
endpoint has no replica, 504 when its replicas had no room), not after the function's timeout
as well; a call a replica took is waited for until its full deadline.

The real activator and platform apps in-process against a real Redis, no agent: the
endpoint never gets a replica unless the test plays one.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from redis import Redis
from redis.exceptions import ResponseError

from lowtide import _keys
from lowtide._protocol import QueuedRequest, Result

from .._apps import Apps

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")]

QUEUE_WAIT_S = 1.0


@pytest.fixture(scope="module")
def apps(own_redis_url: str) -> Iterator[Apps]:
    running = Apps(own_redis_url, activator_options={"max_queue_wait_s": QUEUE_WAIT_S}).start()
    yield running
    running.stop()


@pytest.fixture
def own_redis(own_redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(own_redis_url)
    yield client
    client.close()


def deploy(apps: Apps, name: str) -> None:
    r = apps.deploy(name, timeout_s=600)  # a long function timeout, not waited for
    assert r.status_code == 201, r.text


def test_a_call_no_replica_takes_is_answered_at_its_latest_start(
        apps: Apps, own_redis: Redis) -> None:
    deploy(apps, "never-started")
    started = time.monotonic()
    r = httpx.post(f"{apps.activator_url}/fn/never-started", json={"x": 1}, timeout=60)
    waited = time.monotonic() - started
    assert r.status_code == 503, r.text
    assert "no replica of 'never-started' became ready" in r.json()["detail"]
    assert waited < 30  # the function's 600 s timeout was not added to the queue wait
    assert own_redis.xlen(_keys.stream("never-started")) == 0  # nothing left to run later


def test_a_stream_no_replica_ever_read_counts_as_not_started(
        apps: Apps, own_redis: Redis) -> None:
    # the consumer group is made at deploy and by replicas; without it (lost with a Redis
    # that kept no data, say) nobody can have taken the entry
    deploy(apps, "no-group")
    own_redis.xgroup_destroy(_keys.stream("no-group"), _keys.STREAM_GROUP)
    started = time.monotonic()
    r = httpx.post(f"{apps.activator_url}/fn/no-group", json={"x": 1}, timeout=60)
    assert r.status_code == 503, r.text
    assert time.monotonic() - started < 30  # not the function's 600 s timeout as well
    assert own_redis.xlen(_keys.stream("no-group")) == 0


def test_a_call_a_replica_took_is_waited_for_past_its_latest_start(
        apps: Apps, own_redis: Redis) -> None:
    deploy(apps, "taken-late")
    stream = _keys.stream("taken-late")
    answer = Result(200, "application/json", b"42")

    def play_replica() -> None:
        """Take the entry at once, answer it only after its latest start has passed."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            got = own_redis.xreadgroup(_keys.STREAM_GROUP, "fake.1", {stream: ">"}, count=1,
                                       block=200)
            if got:
                entry_id, fields = got[0][1][0]
                request = QueuedRequest.from_fields(fields)
                time.sleep(QUEUE_WAIT_S + 2.5)
                own_redis.hset(_keys.result(request.id), mapping=answer.to_fields())
                own_redis.publish(_keys.reply_channel(request.reply_to),
                                  answer.to_message(request.id))
                own_redis.xack(stream, _keys.STREAM_GROUP, entry_id)
                return

    with contextlib.suppress(ResponseError):  # the deployment may have created it
        own_redis.xgroup_create(stream, _keys.STREAM_GROUP, id="0", mkstream=True)
    replica = threading.Thread(target=play_replica, daemon=True)
    replica.start()
    r = httpx.post(f"{apps.activator_url}/fn/taken-late", json={"x": 1}, timeout=60)
    replica.join()
    assert (r.status_code, r.json()) == (200, 42)
