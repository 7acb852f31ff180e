"""The replicas' Redis users (`workers.fence`): the rules an endpoint's replica gets, checked
against a real redis-server (this module's own), in both forms (Redis 7 selectors, and the
Redis 6.2 form without them); glob characters in names match only themselves; stray users
go and lost ones come back."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis import Redis
from redis.exceptions import NoPermissionError

from lowtide import _keys
from lowtide._streaming import cancel_key, chunks_key
from lowtide.workers import fence as fence_module
from lowtide.workers.fence import (
    Fence,
    FenceUnavailable,
    acl_rules,
    glob_escape,
    inherited_env,
    replica_url,
    username,
)


def test_glob_escape_matches_only_itself() -> None:
    assert glob_escape("a*b?[c]\\d") == "a\\*b\\?\\[c\\]\\\\d"
    assert glob_escape("plain-name") == "plain-name"


def test_rules_name_only_the_endpoints_keys() -> None:
    rules = acl_rules("ep", "r-1", "pw", selectors=True)
    keys = [r for r in rules if r.startswith("~")]
    assert keys == ["~lt:q:ep", "~lt:rep:ep", "~lt:depver:ep", "~lt:dec:ep", "~lt:alive:r-1"]
    assert rules[:2] == ["reset", "resetchannels"] and rules[-2:] == ["on", ">pw"]
    assert "&lt:reply:*" in rules and "-@all" in rules
    assert not any(c in " ".join(rules) for c in ("+@", "+keys", "+scan", "+subscribe"))
    assert "(%W~lt:res:* +hset +expire)" in rules
    old = acl_rules("ep", "r-1", "pw", selectors=False)
    assert not any(r.startswith("(") for r in old) and "~lt:res:*" in old


def test_replica_url_swaps_the_credentials() -> None:
    assert (replica_url("redis://:secret@10.0.0.5:6380/2?password=x&ssl_cert_reqs=none",
                        "lowtide:h:r-1", "p/w")
            == "redis://lowtide%3Ah%3Ar-1:p%2Fw@10.0.0.5:6380/2?ssl_cert_reqs=none")
    assert replica_url("redis://127.0.0.1:6379/0", "u", "p") == "redis://u:p@127.0.0.1:6379/0"


def test_inherited_env_drops_the_agents_credentials() -> None:
    env = {"PATH": "/bin", "LOWTIDE_REDIS_URL": "redis://:s3cret@h/0", "REDIS_URL": "x",
           "LOWTIDE_TOKEN": "t", "OTHER": "has s3cret inside", "LOWTIDE_FIXED_CONCURRENCY": "4"}
    assert inherited_env(env, "redis://:s3cret@h/0") == {
        "PATH": "/bin", "LOWTIDE_FIXED_CONCURRENCY": "4"}


@pytest.fixture
def admin(own_redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(own_redis_url)
    client.flushall()
    yield client
    client.close()


def _refused(call: object) -> bool:
    try:
        call()  # type: ignore[operator]
    except NoPermissionError:
        return True
    return False


@pytest.mark.parametrize("selectors", [True, False])
def test_a_replica_user_reaches_its_endpoint_only(admin: Redis, own_redis_url: str,
                                                  selectors: bool) -> None:
    fence = Fence(admin, "host-1", own_redis_url)
    fence.check()
    fence._selectors = selectors and fence._selectors  # the 6.2 form runs on Redis 7 too
    url = fence.grant("ep", "r-1")
    assert username("host-1", "r-1") in set(admin.acl_users())
    admin.hset(_keys.result("other"), "body", "private")
    admin.set(_keys.deployed_version("ep"), 3)
    with Redis.from_url(url) as r:
        # what a replica does
        r.xgroup_create(_keys.stream("ep"), _keys.STREAM_GROUP, id="0", mkstream=True)
        r.xreadgroup(_keys.STREAM_GROUP, "r-1.1", {_keys.stream("ep"): ">"}, count=1)
        r.hset(_keys.replicas("ep"), "r-1", "{}")
        r.set(_keys.replica_alive("r-1"), "{}", ex=3)
        assert r.get(_keys.deployed_version("ep")) == b"3"
        with r.pipeline(transaction=True) as pipe:
            pipe.hset(_keys.result("q-1"), mapping={"status": 200})
            pipe.expire(_keys.result("q-1"), 60)
            pipe.xadd(chunks_key("q-1"), {"k": "v"})
            pipe.xlen(chunks_key("q-1"))
            pipe.exists(cancel_key("q-1"))
            pipe.publish(_keys.reply_channel("act-1"), "answer")
            pipe.execute()
        # what it may not
        assert _refused(lambda: r.hget(_keys.replicas("other"), "x"))
        assert _refused(lambda: r.xadd(_keys.stream("other"), {"x": "1"}))
        assert _refused(lambda: r.hget(_keys.deployment("ep"), "spec"))
        assert _refused(lambda: r.hgetall(_keys.secret("s")))
        assert _refused(lambda: r.keys("*"))
        assert _refused(lambda: r.publish(_keys.ROUTES_CHANNEL, "ep"))
        assert _refused(lambda: r.publish(_keys.WAKE_CHANNEL, "ep"))
        if selectors:  # answers write-only, other replicas' liveness read-only
            assert _refused(lambda: r.hget(_keys.result("other"), "body"))
            assert _refused(lambda: r.set(_keys.replica_alive("r-2"), "{}"))
        else:  # by id only (ids are random and cannot be listed)
            assert r.hget(_keys.result("other"), "body") == b"private"
    fence.revoke("r-1")
    assert username("host-1", "r-1") not in set(admin.acl_users())


def test_glob_characters_in_a_name_match_only_themselves(admin: Redis,
                                                          own_redis_url: str) -> None:
    fence = Fence(admin, "h", own_redis_url)
    with Redis.from_url(fence.grant("a*", "r-1")) as r:
        r.hset(_keys.replicas("a*"), "r-1", "{}")
        assert _refused(lambda: r.hset(_keys.replicas("ab"), "r-1", "{}"))


def test_reconcile_deletes_strays_and_restores_lost_users(admin: Redis,
                                                          own_redis_url: str) -> None:
    fence = Fence(admin, "h", own_redis_url)
    url = fence.grant("ep", "r-1")
    admin.acl_setuser(username("h", "r-old"), enabled=True)  # a crashed agent's
    admin.acl_setuser(username("other-host", "r-9"), enabled=True)  # not this host's
    admin.acl_deluser(username("h", "r-1"))  # as a Redis restart loses it
    fence.reconcile()
    users = set(admin.acl_users())
    assert username("h", "r-old") not in users
    assert {username("h", "r-1"), username("other-host", "r-9")} <= users
    with Redis.from_url(url) as r:  # the same password works again
        r.hset(_keys.replicas("ep"), "r-1", "{}")


def test_a_redis_without_channel_acls_is_refused(admin: Redis, own_redis_url: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fence_module, "server_version", lambda redis: (6, 0))
    with pytest.raises(FenceUnavailable, match=r"Redis 6\.0 has no per-channel ACLs"):
        Fence(admin, "h", own_redis_url).check()


def test_a_redis_user_that_cannot_manage_users_is_refused(admin: Redis,
                                                          own_redis_url: str) -> None:
    admin.acl_setuser("weak", enabled=True, passwords=["+pw"], keys=["*"],
                      commands=["+@all", "-acl"])
    url = replica_url(own_redis_url, "weak", "pw")
    with Redis.from_url(url) as weak, pytest.raises(FenceUnavailable, match="admin"):
        Fence(weak, "h", url).check()
