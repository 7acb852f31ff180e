"""A replica's output: filed line by line in its endpoint's log stream (secret values
redacted, BentoML's chatter dropped), its last lines kept for a crash report, and its
route-change markers turned into the ROUTES_CHANNEL publish its Redis user may not do."""

from __future__ import annotations

import logging
import subprocess
import threading
from collections import deque
from dataclasses import dataclass, field

from redis import Redis
from redis.exceptions import RedisError

from .. import _keys
from . import replica_log, user_env
from .fence import MARKERS_PER_REPLICA, ROUTES_MARKER
from .replica_user import Identity

log = logging.getLogger(__name__)

LOG_STREAM_MAXLEN = 5000
TAIL_LINES = 5  # a crashed replica's last output lines, kept for its crash report


@dataclass
class ReplicaProcess:
    endpoint: str
    version: int
    replica_id: str
    address: str
    proc: subprocess.Popen[bytes]
    started_at: float
    gpus: tuple[int, ...] = ()
    stopping: bool = False
    pump: threading.Thread | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    hidden: tuple[str, ...] = ()  # secret values redacted from its output
    load_failed: bool = False  # it said its function cannot be loaded (maybe beyond the tail)
    markers: int = 0  # ROUTES_MARKER lines seen (bounded: user code can print them too)
    identity: Identity | None = None  # its user and scratch directory (released when reaped)


class ReplicaOutput:
    def __init__(self, redis: Redis, host_id: str) -> None:
        self.redis = redis
        self.host_id = host_id

    def pump(self, rp: ReplicaProcess) -> None:
        """Until the process closes its output (a thread of its own)."""
        assert rp.proc.stdout is not None
        chatter = replica_log.LogFilter()  # BentoML's hook lines, repeated tracebacks
        for raw in rp.proc.stdout:
            line = user_env.redact(raw.decode(errors="replace").rstrip("\n"), rp.hidden)
            if ROUTES_MARKER in line:
                self._routes_changed(rp)
                line = line.replace(ROUTES_MARKER, "")
                if not line.strip():
                    continue
            rp.tail.append(line)
            rp.load_failed = rp.load_failed or replica_log.load_failed((line,))
            for kept in chatter.feed(line):
                self._keep_line(rp, kept)
        for kept in chatter.flush():
            self._keep_line(rp, kept)

    def _routes_changed(self, rp: ReplicaProcess) -> None:
        """The replica changed its record (ready, failed, stopping): tell the activators at
        once, as its Redis user may not (a user function printing the marker can make at
        most MARKERS_PER_REPLICA such announcements of its own endpoint)."""
        rp.markers += 1
        if not rp.endpoint or rp.markers > MARKERS_PER_REPLICA:
            return
        try:
            self.redis.publish(_keys.ROUTES_CHANNEL, rp.endpoint)
        except RedisError as exc:  # activators also resync on their own
            log.warning("could not announce the routes of %s: %s", rp.endpoint, exc)

    def _keep_line(self, rp: ReplicaProcess, line: str) -> None:
        if rp.endpoint:
            self.log_line(rp, line)
        else:  # an idle pool worker: no endpoint to file it under yet
            log.debug("pool worker %s: %s", rp.address, line)

    def log_line(self, rp: ReplicaProcess, line: str) -> None:
        try:
            self.redis.xadd(
                _keys.logs(rp.endpoint),
                {"replica": rp.replica_id, "host": self.host_id, "line": line},
                maxlen=LOG_STREAM_MAXLEN, approximate=True,
            )
        except RedisError:
            log.debug("dropped a log line of %s", rp.replica_id)
