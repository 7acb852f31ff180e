"""A host's replica supervisor: starts replicas (a prewarmed pool worker specialized, or the
full path: build the Bento and serve it), stops them, reaps the ones that exit, reports
crashes, and files each replica's output in its endpoint's log stream (`replica_output`).
Each replica gets a Redis user of its own (`fence`) and, where the agent is root, runs as an
unprivileged user (`replica_user`).

Threads, not asyncio: it is driven by the agent's rq job thread (start, stop) and its main
loop (reap, orphans, pool upkeep); each replica has one log-pump thread.
"""

from __future__ import annotations

import getpass
import importlib.util
import json
import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
from prometheus_client import Counter, Gauge
from redis import Redis
from redis.exceptions import RedisError

from .. import _keys
from .._redisserver import free_port
from . import bento, replica_log, user_env
from .blobcache import DeploymentBlobs, HttpBlobSource, Prepared
from .fence import Fence, inherited_env
from .pool import PoolPolicy, PoolWorker, WarmPool
from .procs import RUN_BENTOML, die_with_parent_hook, stop_group
from .replica_output import ReplicaOutput, ReplicaProcess
from .replica_user import Identities, Identity, ReplicaUser, own_copy
from .resources import Gpus
from .settings import AgentSettings

log = logging.getLogger(__name__)

REPLICAS = Gauge("lowtide_agent_replicas", "Replica processes running on this host")
STARTS = Counter("lowtide_agent_replica_starts_total", "Replicas started", ["path"])
CRASHES = Counter("lowtide_agent_replica_crashes_total", "Replicas that exited unasked")

ORPHAN_GRACE_S = 15.0  # a replica this old whose record is gone was dropped by the platform
# BentoML records an OpenTelemetry span per request even when it samples none: about a fifth
# of a trivial function's CPU in the replica. Off unless the agent's environment turns it on
# (OTEL_SDK_DISABLED=false, with BentoML's tracing configured).
WORKER_ENV_DEFAULTS = {"OTEL_SDK_DISABLED": "true"}


class ReplicaSupervisor:
    """The replica processes of one host (pool workers included) and their lifecycle."""

    def __init__(self, settings: AgentSettings, redis: Redis, gpus: Gpus) -> None:
        self.settings = settings
        self.redis = redis
        self.gpus = gpus
        self.replicas: dict[str, ReplicaProcess] = {}
        self._lock = threading.Lock()
        self._build_locks: dict[tuple[str, int], threading.Lock] = {}
        self._stopping = False
        self._found: dict[str, bool] = {}  # package -> importable here
        self.pool = (WarmPool(self._spawn_pool_worker, PoolPolicy()) if settings.pool
                     else None)
        self.blobs = DeploymentBlobs(redis, settings.home, settings.blob_cache_bytes,
                                     HttpBlobSource(redis, settings.platform_url))
        self.fence = Fence(redis, settings.host_id, settings.redis_url)
        self.output = ReplicaOutput(redis, settings.host_id)
        self.identities = Identities(ReplicaUser(getpass.getuser()), settings.home / "scratch")

    @property
    def user(self) -> ReplicaUser:
        """Who replica processes run as (per process when `per_process`)."""
        return self.identities.user

    @user.setter
    def user(self, user: ReplicaUser) -> None:
        self.identities.user = user

    # ---- state the agent reports ------------------------------------------------------
    def count(self) -> int:
        with self._lock:
            return len(self.replicas)

    def replica_pids(self) -> dict[str, int]:
        """Serving replicas (idle pool workers left out) -> their process ids."""
        with self._lock:
            return {r.replica_id: r.proc.pid for r in self.replicas.values() if r.endpoint}

    def pool_status(self) -> dict[str, object]:
        if self.pool is None:
            return {"ready": 0, "starting": 0, "idle_memory_bytes": 0}
        ready, starting = self.pool.size()
        return {"ready": ready, "starting": starting,
                "idle_memory_bytes": self.pool.idle_memory_bytes(),
                "packages": sorted(self.pool.wanted()),
                "ready_packages": self.pool.ready_packages()}

    def maintain_pool(self) -> None:
        if self.pool is not None and not self._stopping:
            self.pool.maintain()

    def shutdown(self) -> None:
        """Refuse new starts, then stop every replica and pool worker (in parallel)."""
        with self._lock:
            self._stopping = True  # from now on start jobs are refused
            replicas = list(self.replicas.values())
        if self.pool is not None:
            self.pool.stop_all()
        threads = [threading.Thread(target=self._stop_process, args=(r,)) for r in replicas]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.reap()

    # ---- starting and stopping --------------------------------------------------------
    def prepare_version(self, endpoint: str, version: int) -> str:
        """A deploy's job on each host: fetch the version's blobs (a cold start finds its
        weights on disk) and build its Bento only when its replicas take the full path here
        (a GPU, or requirements this environment lacks). A pool worker serves the others,
        and their rare full-path start (the pool used up) builds it then: a thousand
        deploys are not a thousand builds on every host."""
        spec_raw = self.redis.hget(_keys.deployment(endpoint), "spec")
        if spec_raw is None:
            raise LookupError(f"deployment {endpoint} v{version} is gone")
        spec = json.loads(spec_raw)
        if spec.get("gpu") or self.pool is None or bento.unsatisfied(
                spec.get("requirements", [])):
            return self.build(endpoint, version).tag
        key = _keys.build_state(endpoint, version, self.settings.host_id)
        try:
            with self.blobs.holding(endpoint, version, f"fetch-{endpoint}-{version}"):
                pass
        except Exception as exc:  # said where the deploy's status shows it, as a build's
            self.redis.set(key, f"failed: {type(exc).__name__}: {exc}", ex=86400)
            raise
        self.redis.set(key, "ready", ex=86400)  # startable here: a pool worker serves it
        return ""

    def build(self, endpoint: str, version: int) -> bento.BuiltBento:
        with self._lock:
            lock = self._build_locks.setdefault((endpoint, version), threading.Lock())
        with lock:
            found = bento.find_bento(endpoint, version)
            if found is not None:
                self.redis.set(_keys.build_state(endpoint, version, self.settings.host_id),
                               "ready", ex=86400)
                return found
            spec_raw = self.redis.hget(_keys.deployment(endpoint), "spec")
            if spec_raw is None:
                raise LookupError(f"deployment {endpoint} v{version} is gone")
            spec = json.loads(spec_raw)
            key = _keys.build_state(endpoint, version, self.settings.host_id)
            self.redis.set(key, "building", ex=86400)
            try:  # fetches the version's blobs (models too: a later start finds them here)
                with self.blobs.holding(endpoint, version, f"build-{endpoint}-{version}") as p:
                    artifact = p.artifact.read_bytes()
                built = bento.build_bento(endpoint, version, artifact,
                                          spec.get("requirements", []))
            except Exception as exc:
                self.redis.set(key, f"failed: {type(exc).__name__}: {exc}", ex=86400)
                raise
            self.redis.set(key, "ready", ex=86400)
            return built

    def start_replica(self, endpoint: str, version: int, replica_id: str,
                      gpus: list[int] | None = None) -> str:
        """Start a replica; `gpus` are the indices placement assigned to it (pinned with
        CUDA_VISIBLE_DEVICES; such a replica takes the full path: pool workers see no GPU)."""
        if self._stopping:
            raise RuntimeError(f"agent {self.settings.host_id} is stopping")
        spawned_at = time.time()
        prepared = self.blobs.prepare(endpoint, version, replica_id)  # released when reaped
        try:  # its own Redis user (revoked when reaped)
            redis_url = self.fence.grant(endpoint, replica_id)
            return self._start(endpoint, version, replica_id, gpus, spawned_at, prepared,
                               redis_url)
        except BaseException:
            self.blobs.release(replica_id)
            self.fence.revoke(replica_id)
            raise

    def _start(self, endpoint: str, version: int, replica_id: str, gpus: list[int] | None,
               spawned_at: float, prepared: Prepared, redis_url: str) -> str:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(_keys.deployment(endpoint), ["spec", "version"])
            (spec_raw, current), = pipe.execute()
        if current is not None:  # a deployment older than the copy its replicas watch
            self.redis.set(_keys.deployed_version(endpoint), current, nx=True)
        spec = json.loads(spec_raw or b"{}")
        requirements = spec.get("requirements", [])
        user = self._user_env(spec)
        cpu = spec.get("cpu")  # the replica fits its compute threads to it (threads.py)
        if gpus:
            known = {g.index for g in self.gpus.info}
            if not set(gpus) <= known:
                raise RuntimeError(f"host {self.settings.host_id} has no GPU "
                                   f"{sorted(set(gpus) - known)} (it has {sorted(known)})")
            return self._start_full(endpoint, version, replica_id, requirements, spawned_at,
                                    prepared, user, redis_url, tuple(gpus), cpu=cpu)
        if self.pool is not None:
            packages = self._importable(spec.get("packages") or [])
            self.pool.note_cold_start(packages)
            if not bento.unsatisfied(requirements):
                worker = self.pool.take(packages)
                if worker is not None:
                    return self._specialize(worker, endpoint, version, replica_id, spawned_at,
                                            prepared, user, redis_url, cpu=cpu)
        return self._start_full(endpoint, version, replica_id, requirements, spawned_at,
                                prepared, user, redis_url, cpu=cpu)

    def _user_env(self, spec: dict[str, Any]) -> tuple[dict[str, str], tuple[str, ...]]:
        """The deployment's env and its secrets' keys: (variables, values to redact)."""
        values = []
        for name in spec.get("secrets") or []:
            raw = self.redis.hgetall(_keys.secret(name))
            if not raw:
                raise RuntimeError(f"secret {name!r} does not exist (deleted after the "
                                   f"deploy?); create it with `lowtide secrets set {name} "
                                   "KEY=VALUE`")
            values.append({k.decode(): v.decode() for k, v in raw.items()})
        return user_env.replica_env(spec.get("env") or {}, values)

    def _specialize(self, worker: PoolWorker, endpoint: str, version: int, replica_id: str,
                    spawned_at: float, prepared: Prepared,
                    user: tuple[dict[str, str], tuple[str, ...]], redis_url: str,
                    cpu: float | None = None) -> str:
        """Fast path: hand the function (and its environment) to a prewarmed worker."""
        rp = worker.extra["rp"]
        assert isinstance(rp, ReplicaProcess)
        rp.endpoint, rp.version, rp.replica_id = endpoint, version, replica_id
        rp.hidden = user[1]
        body = {"redis_url": redis_url, "endpoint": endpoint, "version": version,
                "replica_id": replica_id, "address": worker.address,
                "artifact": str(prepared.artifact),
                "model_store": str(own_copy(prepared.model_store, rp.identity, "models")),
                "spawned_at": spawned_at, "env": user[0],
                **({} if cpu is None else {"cpu": cpu})}
        with self._lock:
            self.replicas[replica_id] = rp
            REPLICAS.set(len(self.replicas))
        try:
            r = httpx.post(f"http://{worker.address}/lt/specialize", json=body, timeout=60)
        except httpx.HTTPError as exc:
            self._stop_process(rp)
            raise RuntimeError(f"specializing a pool worker failed: {exc}") from exc
        if not r.is_success:  # 202: loading; the replica reports ready or its failure
            self._stop_process(rp)
            try:
                detail = r.json().get("detail") or r.text
            except ValueError:
                detail = r.text
            self.output.log_line(rp, f"[lowtide] the replica cannot start: {detail[:500]}")
            raise RuntimeError(detail[:500])
        STARTS.labels("pool").inc()
        log.info("specialized pool worker %s as replica %s of %s v%d in %.0f ms",
                 worker.address, replica_id, endpoint, version,
                 (time.time() - spawned_at) * 1000)
        return worker.address

    def _importable(self, packages: list[str]) -> frozenset[str]:
        """The endpoint's packages a pool worker (this interpreter) can import."""
        found = set()
        for name in packages:
            if name not in self._found:
                try:
                    self._found[name] = importlib.util.find_spec(name) is not None
                except (ImportError, ValueError):
                    self._found[name] = False
            if self._found[name]:
                found.add(name)
        return frozenset(found)

    def _spawn_pool_worker(self, packages: frozenset[str]) -> PoolWorker:
        s = self.settings
        port = free_port(s.bind_host)
        identity = self.identities.take()
        env = {**WORKER_ENV_DEFAULTS, **self._agent_env(), "LOWTIDE_POOL": "1",
               "LOWTIDE_POOL_PACKAGES": ",".join(sorted(packages)),
               "BENTOML_HOME": str(s.bentoml_home), "PYTHONUNBUFFERED": "1",
               **self.gpu_env(()), **identity.env()}
        cmd = [sys.executable, "-c", RUN_BENTOML, "bentoml", "serve",
               "lowtide.workers.service:Worker",
               "--host", s.bind_host, "--port", str(port)]
        proc = self._popen(cmd, env, identity)
        address = f"{s.advertise_address}:{port}"
        rp = ReplicaProcess("", 0, "", address, proc, time.time(), identity=identity)
        rp.pump = threading.Thread(target=self._pump_pool_worker, args=(rp,), daemon=True,
                                   name=f"logs-pool-{port}")
        rp.pump.start()
        return PoolWorker(proc, address, time.time(), extra={"rp": rp}, preload=packages)

    def _pump_pool_worker(self, rp: ReplicaProcess) -> None:
        """Its output until it exits; one never specialized (retired by the pool, or ended
        at shutdown) is never reaped: its identity goes here."""
        self.output.pump(rp)
        if not rp.replica_id:
            rp.proc.wait()
            self.identities.release(rp.identity)

    def _popen(self, cmd: list[str], env: dict[str, str],
               identity: Identity) -> subprocess.Popen[bytes]:
        try:
            return subprocess.Popen(
                cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=die_with_parent_hook(),
                **identity.popen_args())  # type: ignore[call-overload]
        except BaseException:
            self.identities.release(identity)
            raise

    def _agent_env(self) -> dict[str, str]:
        return inherited_env(os.environ, self.settings.redis_url)

    def gpu_env(self, gpus: tuple[int, ...]) -> dict[str, str]:
        """Pin a replica to its GPUs (NVML's PCI order, which CUDA then follows); a replica
        without GPUs on a GPU host sees none, so whole GPUs stay whole."""
        if not gpus and not self.gpus.info:
            return {}
        return {"CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus)),
                "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}

    def _start_full(self, endpoint: str, version: int, replica_id: str,
                    requirements: list[str], spawned_at: float, prepared: Prepared,
                    user_vars: tuple[dict[str, str], tuple[str, ...]], redis_url: str,
                    gpus: tuple[int, ...] = (), cpu: float | None = None) -> str:
        """Full path: build the Bento (once per host and version) and serve it."""
        python = bento.ensure_python(requirements, self.settings.home / "envs")  # fails fast
        built = self.build(endpoint, version)
        s = self.settings
        port = free_port(s.bind_host)
        address = f"{s.advertise_address}:{port}"
        identity = self.identities.take()
        bento_dir = own_copy(built.path, identity, "bento")
        env = {
            **WORKER_ENV_DEFAULTS,
            **self._agent_env(),
            **user_vars[0],
            "LOWTIDE_REDIS_URL": redis_url,
            "LOWTIDE_ENDPOINT": endpoint,
            "LOWTIDE_VERSION": str(version),
            "LOWTIDE_REPLICA_ID": replica_id,
            "LOWTIDE_ADDRESS": address,
            "LOWTIDE_ARTIFACT": str(bento_dir / built.artifact_path.relative_to(built.path)),
            "LOWTIDE_MODEL_STORE": str(own_copy(prepared.model_store, identity, "models")),
            "BENTOML_HOME": str(s.bentoml_home),
            "PYTHONUNBUFFERED": "1",
            "LOWTIDE_START_PATH": "full",
            "LOWTIDE_SPAWNED_AT": repr(spawned_at),
            **({} if cpu is None else {"LOWTIDE_CPU": repr(float(cpu))}),
            **self.gpu_env(gpus),
            **identity.env(),
        }
        cmd = [python, "-c", RUN_BENTOML, "bentoml", "serve", str(bento_dir), "--host",
               s.bind_host, "--port", str(port)]
        proc = self._popen(cmd, env, identity)
        rp = ReplicaProcess(endpoint, version, replica_id, address, proc, time.time(), gpus,
                            hidden=user_vars[1], identity=identity)
        rp.pump = threading.Thread(target=self.output.pump, args=(rp,), daemon=True,
                                   name=f"logs-{replica_id}")
        rp.pump.start()
        with self._lock:
            stopping = self._stopping
            self.replicas[replica_id] = rp
            REPLICAS.set(len(self.replicas))
        STARTS.labels("full").inc()
        if stopping:  # shutdown began while it was starting: it must not outlive us
            self._stop_process(rp)
            raise RuntimeError(f"agent {self.settings.host_id} is stopping")
        log.info("started replica %s of %s v%d on %s (pid %d%s)", replica_id, endpoint,
                 version, address, proc.pid, f", GPU {','.join(map(str, gpus))}" if gpus else "")
        return address

    def stop_replica(self, endpoint: str, replica_id: str) -> bool:
        with self._lock:
            rp = self.replicas.get(replica_id)
        if rp is None:
            self.forget(endpoint, replica_id)
            return False
        # drained and stopped off the job thread: a start queued behind must not wait for it;
        # the supervision loop reaps the process and removes it from routing
        rp.stopping = True
        threading.Thread(target=self._stop_process, args=(rp,), name=f"stop-{replica_id}",
                         daemon=True).start()
        return True

    # ---- supervision ------------------------------------------------------------------
    def stop_orphans(self) -> None:
        """Stop replicas the platform no longer knows: it dropped them while this host was
        considered lost (no heartbeat), and their replacements run elsewhere."""
        now = time.time()
        with self._lock:
            old = [r for r in self.replicas.values()
                   if r.endpoint and not r.stopping and now - r.started_at > ORPHAN_GRACE_S]
        if not old:
            return
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                for r in old:
                    pipe.hexists(_keys.replicas(r.endpoint), r.replica_id)
                known = pipe.execute()
        except RedisError as exc:
            log.warning("cannot check for orphaned replicas: %s", exc)
            return
        for r, exists in zip(old, known, strict=True):
            if not exists:
                log.warning("stopping replica %s of %s: the platform dropped it (this host "
                            "was considered lost)", r.replica_id, r.endpoint)
                self.stop_replica(r.endpoint, r.replica_id)

    def _stop_process(self, rp: ReplicaProcess) -> None:
        rp.stopping = True
        code = stop_group(rp.proc, self.settings.stop_grace_s)
        log.info("stopped replica %s (exit %s)", rp.replica_id, code)

    def reap(self) -> None:
        with self._lock:
            exited = [r for r in self.replicas.values() if r.proc.poll() is not None]
            for r in exited:
                del self.replicas[r.replica_id]
            REPLICAS.set(len(self.replicas))
        for r in exited:
            if r.replica_id:
                self.blobs.release(r.replica_id)
                self.fence.revoke(r.replica_id)
            if not r.stopping:
                CRASHES.inc()
                stop_group(r.proc, 0)  # the leader died: take the rest of its group down
                self.output.log_line(r, replica_log.exit_line(r.proc.returncode, r.load_failed))
                log.warning("replica %s of %s exited with code %s", r.replica_id, r.endpoint,
                            r.proc.returncode)
            if r.pump is not None:
                r.pump.join(timeout=1)
            self.identities.release(r.identity)
            if r.stopping or not r.endpoint:
                self.forget(r.endpoint, r.replica_id)
            else:
                self._report_crash(r)

    def _report_crash(self, r: ReplicaProcess) -> None:
        """Out of routing at once; the platform reads why, records it and backs off."""
        last = " | ".join(line.strip() for line in r.tail if line.strip())[-500:]
        try:
            key = _keys.replicas(r.endpoint)
            raw = self.redis.hget(key, r.replica_id)
            if raw is None:  # the platform dropped it already (it reported its failure)
                return
            record = json.loads(raw)
            record.update(state="crashed", exit_code=r.proc.returncode, last_output=last)
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, r.replica_id, json.dumps(record))
                pipe.delete(_keys.replica_alive(r.replica_id))
                pipe.publish(_keys.ROUTES_CHANNEL, r.endpoint)
                pipe.execute()
        except RedisError as exc:
            log.warning("could not report the crash of %s: %s", r.replica_id, exc)

    def forget(self, endpoint: str, replica_id: str) -> None:
        try:
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.hdel(_keys.replicas(endpoint), replica_id)
                pipe.delete(_keys.replica_alive(replica_id))
                pipe.publish(_keys.ROUTES_CHANNEL, endpoint)
                pipe.execute()
        except RedisError as exc:
            log.warning("could not remove replica %s from routing: %s", replica_id, exc)
