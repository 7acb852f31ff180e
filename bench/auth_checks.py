"""What the per-request checks added for auth and bounds cost on the activator's warm path.

    python bench/auth_checks.py

1. In-process timings of the pure checks, next to json.loads of the same body (the parse
   every JSON invoke already paid): the invoke-key check, the JSON depth bound.
2. Redis commands per warm request to a key-protected endpoint: the real platform and
   activator apps in this process (tests/_apps.py) with an echo server as the replica and a
   Redis of their own; the count comes from Redis' own INFO stats.
Prints figures only; nothing here passes or fails.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from redis import Redis  # noqa: E402

from lowtide._auth import Access, check_invoke, digest, new_key  # noqa: E402
from lowtide._protocol import json_too_deep  # noqa: E402
from lowtide._redisserver import start_redis_server  # noqa: E402
from tests._apps import Apps  # noqa: E402


def per_call_us(fn, number: int = 2000) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def pure_checks() -> None:
    key = new_key()
    locked = Access("key", {key.id: digest(key.key)})
    header = f"Bearer {key.key}"
    bodies = {
        "small object": json.dumps({"x": 21}).encode(),
        "224x224x3 nested floats": json.dumps(
            [[[0.5] * 3 for _ in range(224)] for _ in range(224)]).encode(),
        "2000 rows with strings": json.dumps(
            {"rows": [[i, i * 2.5, str(i)] for i in range(2000)]}).encode(),
    }
    print(f"{'check':<44}{'us/call':>10}")
    print(f"{'invoke key, public endpoint':<44}"
          f"{per_call_us(lambda: check_invoke(Access(), None, 'e'), 20000):>10.2f}")
    print(f"{'invoke key, key endpoint (SHA-256)':<44}"
          f"{per_call_us(lambda: check_invoke(locked, header, 'e'), 20000):>10.2f}")
    print(f"\n{'JSON body':<28}{'KiB':>8}{'json.loads us':>16}{'depth check us':>16}"
          f"{'ratio':>8}")
    for label, body in bodies.items():
        n = 20000 if len(body) < 1000 else 20
        parse = per_call_us(lambda b=body: json.loads(b), n)
        depth = per_call_us(lambda b=body: json_too_deep(b), n)
        print(f"{label:<28}{len(body) / 1024:>8.1f}{parse:>16.1f}{depth:>16.1f}"
              f"{depth / parse:>8.2f}")


def redis_commands(n: int = 2000) -> None:
    proc, url = start_redis_server(Path(tempfile.mkdtemp()), appendonly=False)
    apps = Apps(url).start()
    try:
        apps.deploy("bench", access="key", timeout_s=5)
        apps.add_replica("bench")
        key = apps.api("POST", "/v1/deployments/bench/keys").json()["key"]
        redis = Redis.from_url(url)
        with httpx.Client(timeout=10, headers={"Authorization": f"Bearer {key}"}) as http:
            for _ in range(50):  # warm: the route and the key are cached
                http.post(f"{apps.activator_url}/fn/bench", json={"x": 1})
            before = int(redis.info("stats")["total_commands_processed"])
            started = time.monotonic()
            ok = sum(http.post(f"{apps.activator_url}/fn/bench", json={"x": 1}).status_code
                     == 200 for _ in range(n))
            elapsed = time.monotonic() - started
            used = int(redis.info("stats")["total_commands_processed"]) - before - 1
        redis.close()
        print(f"\nwarm requests to a key endpoint: {ok}/{n} answered 200 in {elapsed:.1f} s; "
              f"Redis commands meanwhile: {used} ({used / n:.3f} per request; the route "
              "resync reads Redis every 2 s)")
    finally:
        apps.stop()
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    pure_checks()
    redis_commands()
