"""Env and secrets: replicas get them; a secret's value appears in no answer, error body,
event, log line, cluster log or process environment but the replica's own."""

from __future__ import annotations

import hashlib
import json
import secrets as random_secrets
from pathlib import Path

import httpx
import psutil
import pytest

import lowtide
from lowtide import Client
from tests.conftest import RunningCluster, wait_for

pytestmark = pytest.mark.integration


def _replica_process(p: psutil.Process) -> bool:
    try:
        return "bentoml" in " ".join(p.cmdline())
    except psutil.Error:
        return True


def test_env_and_secrets_reach_the_replica_and_nothing_else(
        client: Client, cluster: RunningCluster, unique_name: str) -> None:
    value = "hf_" + random_secrets.token_hex(16)
    secret = f"s-{unique_name}"[:60]
    client.set_secret(secret, {"HF_TOKEN": value})

    def use(mode):
        import hashlib
        import os

        token = os.environ["HF_TOKEN"]
        if mode == "leak":
            print(f"my token is {token}", flush=True)
            raise ValueError(f"bad token {token}")
        return {"mode": os.environ["MODE"], "sha": hashlib.sha256(token.encode()).hexdigest()}

    with pytest.raises(lowtide.DeployError, match="do not exist") as missing:
        client.deploy(use, name=unique_name, secrets=["no-such-secret"])
    ep = client.deploy(use, name=unique_name, env={"MODE": "m1"}, secrets=[secret])
    assert ep("check") == {"mode": "m1", "sha": hashlib.sha256(value.encode()).hexdigest()}
    with pytest.raises(lowtide.FunctionError) as direct:
        ep("leak")
    with pytest.raises(lowtide.FunctionError) as buffered:
        ep.submit("leak").result(timeout=60)
    assert "[secret]" in direct.value.detail

    def logged():
        lines = [ln["line"] for ln in client.logs(unique_name)["lines"]]
        return lines if sum("my token is" in ln for ln in lines) >= 2 else None

    lines = wait_for(logged, 20, "the leaking prints in the logs")
    api = httpx.Client(base_url=cluster.config.platform_url,
                       headers={"Authorization": f"Bearer {cluster.config.token}"})
    bad_put = api.put(f"/v1/secrets/{secret}", json={"values": {"1BAD": value}})
    assert bad_put.status_code == 400
    texts = [
        json.dumps(client.status(unique_name)), json.dumps(client.events(unique_name)),
        json.dumps(client.list()), json.dumps(client.secrets()), "\n".join(lines),
        str(direct.value), str(buffered.value), json.dumps(direct.value.body),
        str(missing.value), bad_put.text, api.get(f"/v1/deployments/{unique_name}").text,
        Path(cluster.log_path).read_text(errors="replace"),
    ]
    for text in texts:
        assert value not in text
    assert any(s["name"] == secret and s["keys"] == ["HF_TOKEN"] for s in client.secrets())
    tree = [psutil.Process(cluster.proc.pid),
            *psutil.Process(cluster.proc.pid).children(recursive=True)]
    for proc in tree:
        if _replica_process(proc):
            continue
        try:
            environ = Path(f"/proc/{proc.pid}/environ").read_bytes()
        except OSError:
            continue
        assert value.encode() not in environ, proc.cmdline()
    assert api.delete(f"/v1/secrets/{secret}").status_code == 409  # in use
    ep.delete()
    client.delete_secret(secret)
    assert all(s["name"] != secret for s in client.secrets())
