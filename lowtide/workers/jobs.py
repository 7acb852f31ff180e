"""rq jobs executed by a host agent. The platform enqueues them on the host's queue by name
(`lowtide.workers.jobs.<function>`); they run inside the agent process."""

from __future__ import annotations

from . import agent


def build(endpoint: str, version: int) -> str:
    """A deploy's job on each host (`Supervisor.prepare_version`): the Bento's tag when one
    was built, else ''."""
    return agent.current().prepare_version(endpoint, version)


def start_replica(endpoint: str, version: int, replica_id: str,
                  gpus: list[int] | None = None) -> str:
    return agent.current().start_replica(endpoint, version, replica_id, gpus)


def stop_replica(endpoint: str, replica_id: str) -> bool:
    return agent.current().stop_replica(endpoint, replica_id)
