"""Redis key names and channels: the one place that says where shared state lives.

Every component reads and writes Redis only through the names built here, so the layout
of the data is visible at a glance and cannot drift between components.
"""

from __future__ import annotations

PREFIX = "lt:"

DEPLOYMENTS = PREFIX + "deployments"  # set of endpoint names
# sorted set of the same names, all scores 0: the list pages through it in name order
DEPLOYMENT_NAMES = PREFIX + "deployments:byname"
PLATFORMS = PREFIX + "platforms"  # sorted set: platform instance id -> last claim (ms)
PLATFORM_EVENTS = PREFIX + "platform:events"  # stream: shards taken over, capped
ACTIVE = PREFIX + "active"  # set of the endpoints whose desired replicas are above zero
# sorted set: endpoint -> when its desired replicas went to zero (or it was deleted); with
# ACTIVE, the endpoints that may still have replica records (placement reads only those)
COOLING = PREFIX + "cooling"
HOSTS = PREFIX + "hosts"  # hash host_id -> host description (JSON)
WAKE_CHANNEL = PREFIX + "wake"  # pubsub: endpoint name, sent by the activator when cold
ROUTES_CHANNEL = PREFIX + "routes"  # pubsub: endpoint name whose replicas or spec changed
STREAM_GROUP = "replicas"  # consumer group of every request stream
HOST_TOKEN = PREFIX + "host-token"  # string: the secret host agents fetch blobs with
PLATFORM_URL = PREFIX + "platform-url"  # string: where agents reach the platform's blob routes

RESULT_TTL_S = 3600
HOST_ALIVE_TTL_S = 5  # a host whose agent has not beaten for this long is lost
REQUEST_TTL_S = 3600


def deployment(name: str) -> str:
    """Hash: spec (JSON), version, created_at, updated_at."""
    return f"{PREFIX}dep:{name}"


def deployed_version(name: str) -> str:
    """String: the deployment's current version, a copy of `deployment(name)`'s field that
    the endpoint's replicas watch (their Redis user may not read the deployment's hash:
    it holds the spec, secret names included). Written and deleted with the deployment."""
    return f"{PREFIX}depver:{name}"


def version_counter(name: str) -> str:
    """Counter that is never deleted, so versions stay unique across delete and redeploy."""
    return f"{PREFIX}ver:{name}"


ARTIFACTS_MATCH = PREFIX + "art:*"  # SCAN pattern of every version's manifest


def artifact(name: str, version: int) -> str:
    """String: the version's manifest (JSON, lowtide._manifest): its blobs by digest."""
    return f"{PREFIX}art:{name}:{version}"


def versions(name: str) -> str:
    """Hash version -> JSON record of the last kept versions (spec, manifest, digests, who,
    when, origin); their artifacts stay while they are kept (`platform.versions`)."""
    return f"{PREFIX}versions:{name}"


def stream(name: str) -> str:
    """The endpoint's request buffer (a Redis stream with consumer group STREAM_GROUP)."""
    return f"{PREFIX}q:{name}"


def replicas(name: str) -> str:
    """Hash replica_id -> replica record (JSON)."""
    return f"{PREFIX}rep:{name}"


def replica_alive(replica_id: str) -> str:
    """Short-lived key refreshed by a running replica: its liveness and load (JSON)."""
    return f"{PREFIX}alive:{replica_id}"


def host_alive(host_id: str) -> str:
    return f"{PREFIX}hostalive:{host_id}"


def host_queue(host_id: str) -> str:
    """Name of the rq queue that carries commands for one host agent."""
    return f"lowtide-host-{host_id}"


def host_build_queue(host_id: str) -> str:
    """The rq queue of a host's Bento builds: apart, so a start never waits behind a build."""
    return f"lowtide-host-{host_id}-build"


def stats(name: str) -> str:
    """Hash flushed by activators about once a second: requests, last_request_at."""
    return f"{PREFIX}stats:{name}"


def latency(name: str) -> str:
    """Hash bucket index -> answered calls (cumulative, see `_latency`), flushed by
    activators about once a second; read by the platform's series recorder."""
    return f"{PREFIX}lat:{name}"


def series(name: str, tier: str) -> str:
    """List of JSON points of one resolution of an endpoint's charts (`platform.series`),
    oldest first, capped."""
    return f"{PREFIX}series:{name}:{tier}"


def ui_login(code_digest: str) -> str:
    """String: a one-time dashboard sign-in code (its SHA-256), short-lived."""
    return f"{PREFIX}ui:login:{code_digest}"


def ui_session(session_digest: str) -> str:
    """String: a dashboard session (JSON {csrf, created_at}) by its cookie's SHA-256."""
    return f"{PREFIX}ui:session:{session_digest}"


WAITING_TTL_S = 10  # a waiting hash no activator refreshed for this long is gone
WAITING_FRESH_S = 3.0  # an activator's entry older than this counts for nothing (it died)


def waiting(name: str) -> str:
    """Hash activator_id -> {"n", "oldest_s", "at"} (JSON): the requests waiting in that
    activator's memory for a replica slot, flushed about once a second; the autoscaler
    counts them as queued."""
    return f"{PREFIX}waiting:{name}"


def reply_channel(activator_id: str) -> str:
    return f"{PREFIX}reply:{activator_id}"


def result(request_id: str) -> str:
    """Hash: status, content_type, body — the stored answer of a buffered request."""
    return f"{PREFIX}res:{request_id}"


def request(request_id: str) -> str:
    """String: endpoint name of an accepted buffered request (tells pending from unknown)."""
    return f"{PREFIX}req:{request_id}"


def invoke_keys(name: str) -> str:
    """Hash key_id -> JSON {sha256, label, created_at}: an endpoint's invoke keys (digests
    only; the key itself is shown once, at creation)."""
    return f"{PREFIX}keys:{name}"


SECRETS = PREFIX + "secrets"  # set of secret names


def secret(name: str) -> str:
    """Hash KEY -> value of one secret (values never leave the platform API but to the
    agents that start replicas using it); `secret_meta` holds when it was set."""
    return f"{PREFIX}secret:{name}"


def secret_meta(name: str) -> str:
    """Hash: updated_at."""
    return f"{PREFIX}secretmeta:{name}"


def decisions(name: str) -> str:
    """Stream of scaling decisions, newest last, capped."""
    return f"{PREFIX}dec:{name}"


def learned(name: str) -> str:
    """String: what the autoscaler learned about the endpoint (versioned JSON, see
    `Autoscaler.learned()`), so a platform restart keeps it; deleted with the endpoint."""
    return f"{PREFIX}learned:{name}"


def logs(name: str) -> str:
    """Stream of replica output lines, capped."""
    return f"{PREFIX}logs:{name}"


def build_state(name: str, version: int, host_id: str) -> str:
    return f"{PREFIX}build:{name}:{version}:{host_id}"


def shard_lease(shard: int) -> str:
    """String with a TTL: the id of the platform instance that scales the shard's endpoints."""
    return f"{PREFIX}shard:{shard}:lease"


def shard_leader(shard: int) -> str:
    """String: the shard's last leader ("released:ID" when it gave the shard back)."""
    return f"{PREFIX}shard:{shard}:leader"
