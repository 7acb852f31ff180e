"""The Redis fence around user code: each replica gets its own Redis ACL user.

A replica runs the user's function in its own process, so whatever Redis credentials the
replica holds, the function holds too. The agent (which holds the cluster's credentials)
therefore creates, before it starts a replica, an ACL user for that replica alone, with a
random password, allowed only the commands a replica runs and only on its own endpoint's
keys: its request stream and consumer group, its endpoint's replica records, its own
liveness key, the copy of the deployed version it watches, its endpoint's event stream,
and, written by request id, the answers of the requests it serves (results, chunk streams)
and the reply channels it publishes them on. No KEYS/SCAN/RANDOMKEY, no SUBSCRIBE, no other
endpoint's keys, no secrets, no `lt:routes`/`lt:wake`, no rq queues: the replica's route
changes reach the activators through the agent (`ROUTES_MARKER` on the replica's output).

Per replica, not per endpoint: a user lives exactly as long as its process (created before
the start, deleted when the agent reaps it), so there is no reference count to get wrong,
a stopped replica's credentials stop working at once, and a replica can write only its own
liveness key. Users are named `lowtide:{host_id}:{replica_id}`; an agent deletes the users of
its host that belong to no running replica of its (left by a crashed agent) and creates again
those a Redis restart lost, so their number stays the number of running replicas.

With Redis 7 selectors the answers are write-only (`%W~`): a replica cannot read another
request's result even knowing its id. Redis 6.2 has no selectors: there a replica can also
read results, chunk streams and replicas' load keys *by id* (random ids that it cannot list).
Redis older than 6.2 has no channel permissions: the agent refuses to start on it.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
from collections.abc import Mapping
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from redis import Redis
from redis.exceptions import RedisError, ResponseError

from .. import _keys
from .._streaming import cancel_key, chunks_key

log = logging.getLogger(__name__)

USER_PREFIX = "lowtide:"
MIN_VERSION = (6, 2)  # channel permissions (&pattern) arrived in 6.2; selectors in 7.0
SELECTORS_VERSION = (7, 0)
# printed alone on a line by a replica whose record changed (ready, failed, stopping): its
# agent publishes the endpoint on ROUTES_CHANNEL, which the replica's user may not
ROUTES_MARKER = "[lowtide:routes]"
MARKERS_PER_REPLICA = 16  # a replica has few state changes; more markers are ignored
# the agent's own credentials and settings, which never reach a replica
PRIVATE_ENV = frozenset({"REDIS_URL", "LOWTIDE_REDIS_URL", "LOWTIDE_TOKEN",
                         "LOWTIDE_TOKEN_SHA256", "LOWTIDE_PLATFORM_URL", "LOWTIDE_HOME"})

# what a replica runs (workers/replica.py, puller.py, streaming.py; redis-py's own PING and
# SELECT); nothing that lists keys, reads across keys or subscribes
COMMANDS = (
    "ping", "select",
    "multi", "exec", "discard", "watch", "unwatch",
    "get", "set", "del", "exists", "expire",
    "hget", "hset", "hdel",
    "xadd", "xlen", "xreadgroup", "xack", "xdel", "xpending", "xclaim",
    "xgroup|create", "xgroup|delconsumer",
    "publish",
)

_GLOB = re.compile(r"([\\*?\[\]])")


def glob_escape(text: str) -> str:
    """`text` as a Redis glob pattern that matches only itself."""
    return _GLOB.sub(r"\\\1", text)


def username(host_id: str, replica_id: str) -> str:
    safe_host = re.sub(r"[^A-Za-z0-9._-]", "_", host_id)
    return f"{USER_PREFIX}{safe_host}:{replica_id}"


def acl_rules(endpoint: str, replica_id: str, password: str, selectors: bool) -> list[str]:
    """The ACL SETUSER arguments of a replica's user (after its name)."""
    own = [_keys.stream(endpoint), _keys.replicas(endpoint), _keys.deployed_version(endpoint),
           _keys.decisions(endpoint), _keys.replica_alive(replica_id)]
    by_id = {"results": _keys.result("*"), "chunks": chunks_key("*"),
             "cancel": cancel_key("*"), "alive": _keys.replica_alive("*")}
    by_id = {k: glob_escape(v[:-1]) + "*" for k, v in by_id.items()}
    rules = ["reset", "resetchannels", f"&{glob_escape(_keys.reply_channel(''))}*",
             "resetkeys", *(f"~{glob_escape(k)}" for k in own),
             "-@all", *(f"+{c}" for c in COMMANDS)]
    if selectors:  # answers write-only; other replicas' liveness read-only
        rules += [f"(%W~{by_id['results']} +hset +expire)",
                  f"(%W~{by_id['chunks']} %R~{by_id['cancel']} +xadd +expire +xlen +exists)",
                  f"(%R~{by_id['alive']} +get)"]
    else:  # Redis 6.2: by id (random, never listed), read and write
        rules += [f"~{p}" for p in by_id.values()]
    return [*rules, "on", f">{password}"]


def replica_url(cluster_url: str, user: str, password: str) -> str:
    """The cluster's Redis URL with the replica's credentials instead of the cluster's."""
    parts = urlsplit(cluster_url)
    host = parts.netloc.rpartition("@")[2]
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query)
                       if k not in ("username", "password")])
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def inherited_env(environ: Mapping[str, str], cluster_url: str) -> dict[str, str]:
    """The agent's environment less its credentials (PRIVATE_ENV, and any variable holding
    the cluster's Redis password): what a replica inherits."""
    parts = urlsplit(cluster_url)
    password = unquote(parts.password or "") or dict(parse_qsl(parts.query)).get("password", "")
    return {k: v for k, v in environ.items()
            if k not in PRIVATE_ENV and not (password and password in v)}


def server_version(redis: Redis) -> tuple[int, ...]:
    raw = str(redis.info("server").get("redis_version", "0"))
    return tuple(int(p) for p in raw.split(".")[:2] if p.isdigit())


class FenceUnavailable(ValueError):
    """This Redis cannot fence replicas: the agent refuses to start (a setting to fix, so
    the CLI prints it as one line)."""


class Fence:
    """The ACL users of one host's replicas: granted before a start, revoked at the reap."""

    def __init__(self, redis: Redis, host_id: str, cluster_url: str) -> None:
        self.redis = redis
        self.host_id = host_id
        self.cluster_url = cluster_url
        self._lock = threading.Lock()
        self._users: dict[str, tuple[str, str, str]] = {}  # replica -> (user, endpoint, pw)
        self._selectors: bool | None = None  # known once Redis answered

    def check(self) -> None:
        """Refuse a Redis that cannot fence replicas (older than 6.2, or a cluster user not
        allowed to manage ACL users). Raises FenceUnavailable; RedisError while Redis is
        away (the caller retries)."""
        version = server_version(self.redis)
        if version < MIN_VERSION:
            raise FenceUnavailable(
                f"Redis {'.'.join(map(str, version))} has no per-channel ACLs (6.2+): the agent "
                "cannot fence user code off from the cluster's Redis and refuses to start; "
                "use Redis 6.2 or newer (7 recommended)")
        try:
            self.redis.execute_command("ACL", "WHOAMI")
            self.redis.execute_command("ACL", "USERS")
        except ResponseError as exc:
            raise FenceUnavailable(
                f"the agent's Redis user cannot manage ACL users ({exc}); replicas are fenced "
                "with per-replica ACL users: give the agent an admin Redis user") from exc
        self._selectors = version >= SELECTORS_VERSION
        if not self._selectors:
            log.warning("Redis %s has no ACL selectors (7.0+): replicas can read answers and "
                        "load keys by id (ids are random and cannot be listed); Redis 7 makes "
                        "them write-only", ".".join(map(str, version)))

    def grant(self, endpoint: str, replica_id: str) -> str:
        """Create the replica's user; its Redis URL (the one the replica gets)."""
        if self._selectors is None:
            self.check()
        user, password = username(self.host_id, replica_id), secrets.token_urlsafe(24)
        with self._lock:  # known before it exists: reconcile() never takes it for a stray
            self._users[replica_id] = (user, endpoint, password)
        self._set_user(user, endpoint, replica_id, password)
        return replica_url(self.cluster_url, user, password)

    def revoke(self, replica_id: str) -> None:
        with self._lock:
            entry = self._users.pop(replica_id, None)
        if entry is None:
            return
        try:
            self.redis.execute_command("ACL", "DELUSER", entry[0])
        except RedisError as exc:  # reconcile() deletes it once Redis answers
            log.warning("could not delete the Redis user of replica %s: %s", replica_id, exc)

    def reconcile(self) -> None:
        """Delete this host's users of no replica (a crashed agent's), create again those a
        Redis restart lost. Called with every heartbeat."""
        prefix = username(self.host_id, "")
        names = {n.decode() if isinstance(n, bytes) else str(n)
                 for n in self.redis.execute_command("ACL", "USERS")}
        with self._lock:  # after the listing: a user it lists is known here (see grant)
            wanted = dict(self._users)
        mine = {n for n in names if n.startswith(prefix)}
        stray = mine - {u for u, _, _ in wanted.values()}
        if stray:
            self.redis.execute_command("ACL", "DELUSER", *sorted(stray))
            log.info("deleted %d Redis user(s) of replicas gone from this host", len(stray))
        for replica_id, (user, endpoint, password) in wanted.items():
            if user not in names:
                log.info("creating again the Redis user of replica %s (Redis lost it)",
                         replica_id)
                self._set_user(user, endpoint, replica_id, password)

    def _set_user(self, user: str, endpoint: str, replica_id: str, password: str) -> None:
        assert self._selectors is not None
        self.redis.execute_command("ACL", "SETUSER", user,
                                   *acl_rules(endpoint, replica_id, password, self._selectors))
