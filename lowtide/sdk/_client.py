"""The SDK's HTTP client: deployments through the platform API, calls through the activator."""

from __future__ import annotations

import builtins
import getpass
import inspect
import json
import re
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import httpx

from .._home import ClusterConfig, home_dir, resolve
from .._methods import CALL, method_params
from .._spec import DeploymentSpec, SpecError, parse_memory, python_version
from . import _blobs
from ._codec import _JSON, _key_header, decode_result
from ._endpoint import Endpoint, Handle, Method
from ._errors import (
    AuthError,
    ConfigError,
    DeployError,
    LowtideError,
    error_from_response,
)
from ._packages import referenced_packages
from ._pickling import parameter_names, pickle_function

POLL_MIN_S, POLL_MAX_S = 0.05, 1.0


def _who() -> str:
    """Who deploys, for the versions list: user@host of this process."""
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:  # no user name (a container without passwd entry)
        return socket.gethostname()


class Client:
    """A connection to one lowtide cluster.

    Without arguments it uses LOWTIDE_PLATFORM_URL / LOWTIDE_ACTIVATOR_URL / LOWTIDE_TOKEN, or
    what `lowtide up` wrote to LOWTIDE_HOME (default ~/.lowtide).
    """

    def __init__(self, platform_url: str | None = None, activator_url: str | None = None,
                 token: str | None = None, timeout_s: float = 60.0) -> None:
        self.config: ClusterConfig = resolve(platform_url, activator_url, token)
        self._http = httpx.Client(timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- control plane ----------------------------------------------------------------
    def _api(self, method: str, path: str, **kw: Any) -> Any:
        if not self.config.token:
            raise ConfigError("no API token: run `lowtide up`, or set LOWTIDE_TOKEN and "
                              "LOWTIDE_PLATFORM_URL")
        headers = {"Authorization": f"Bearer {self.config.token}",
                   "X-Lowtide-Deployed-By": _who()}
        url = f"{self.config.platform_url}{path}"
        try:
            response = self._http.request(method, url, headers=headers, **kw)
        except httpx.TransportError as exc:
            raise ConfigError(f"cannot reach the platform at {self.config.platform_url} ({exc}); "
                              "is `lowtide up` running?") from None
        if response.status_code >= 400:
            err = error_from_response(response.status_code, response.content)
            if isinstance(err, AuthError):
                raise err
            cls = DeployError if method == "POST" and path == "/v1/deployments" else type(err)
            if cls is DeployError:
                raise DeployError(f"{err.error}: {err.detail}")
            raise err
        return response.json()

    def deploy(self, fn: Callable[..., Any] | type, name: str | None = None, *,
               cpu: float = 1.0,
               memory: str | int = "1Gi", gpu: int = 0, gpu_memory: str | int | None = None,
               requirements: Iterable[str] = (), min_replicas: int = 0,
               max_replicas: int | None = None, timeout: float = 60.0,
               access: str = "public", models: Iterable[str] = (),
               env: dict[str, str] | None = None, secrets: Iterable[str] = ()) -> Endpoint:
        """Upload fn and return its Endpoint.

        Resources are what one replica asks for, and placement keeps them free for it: `cpu`
        cores, `memory` and `gpu_memory` as bytes or '512Mi' / '8Gi', `gpu` whole GPUs
        (pinned with CUDA_VISIBLE_DEVICES), each with at least `gpu_memory`. `access="key"`
        makes its invoke URL need a key (`create_key`). `models` attaches models of your
        local BentoML model store by tag ("iris_clf:latest" is resolved now); replicas find
        them with `bentoml.models.get`. The function and the models' files are uploaded
        only when the platform does not have them yet. `env` are
        environment variables of the replicas (shown in the spec); `secrets` names secrets
        (`set_secret`) whose keys and values the replicas get as environment variables too
        (never shown).

        A class is a class deployment: each replica builds one instance (without arguments)
        before it takes a request, so its constructor is where a model is loaded; calls go
        to `__call__` and to its public methods (`ep.embed(...)`, `POST /fn/{name}/embed`).
        """
        if not callable(fn):
            raise TypeError(f"deploy() needs a function or a class, got {type(fn).__name__}")
        name = name or default_name(fn)
        methods = _class_methods(fn) if inspect.isclass(fn) else None
        params = methods.get(CALL) if methods is not None else parameter_names(fn)
        if isinstance(models, str):
            models = [models]
        artifact = pickle_function(fn)
        manifest, blobs = _blobs.prepare(artifact, models, home_dir() / _blobs.DIGESTS_FILE)
        try:
            spec = DeploymentSpec(
                name=name, cpu=cpu, memory_bytes=parse_memory(memory), gpu=gpu,
                gpu_memory_bytes=0 if gpu_memory is None else parse_memory(gpu_memory,
                                                                           "gpu_memory"),
                requirements=list(requirements), min_replicas=min_replicas,
                max_replicas=max_replicas, timeout_s=timeout, python=python_version(),
                params=params, access=access, methods=methods,
                models=[m.tag for m in manifest.models], env=dict(env or {}),
                secrets=builtins.list(secrets),
            )
            spec.check_new()
        except SpecError as exc:
            raise DeployError(str(exc)) from None
        spec = replace(spec, packages=referenced_packages(fn, artifact))
        _blobs.upload(self, blobs)
        files = {"spec": (None, json.dumps(spec.to_dict()), _JSON),
                 "manifest": (None, manifest.to_json(), _JSON)}
        info = self._api("POST", "/v1/deployments", files=files)
        return Endpoint(self, info["name"], info["url"], spec.params, spec.timeout_s,
                        int(info["version"]), methods=spec.methods)

    def get(self, name: str, key: str | None = None) -> Endpoint:
        """The deployed endpoint `name`; `key` is sent with its calls (access 'key')."""
        status = self.status(name)
        spec = status.get("spec", {})
        return Endpoint(self, name, status["url"], spec.get("params"),
                        float(spec.get("timeout_s", 60.0)), int(status["version"]), key=key,
                        methods=spec.get("methods"))

    def set_access(self, name: str, access: str) -> dict[str, Any]:
        """Make an endpoint 'public' or 'key'-protected, without a redeploy."""
        return dict(self._api("PATCH", f"/v1/deployments/{name}", json={"access": access}))

    def create_key(self, name: str, label: str = "") -> dict[str, Any]:
        """A new invoke key of `name`: the result's "key" is shown only this once."""
        return dict(self._api("POST", f"/v1/deployments/{name}/keys", json={"label": label}))

    def keys(self, name: str) -> builtins.list[dict[str, Any]]:
        """The invoke keys of `name`: ids, labels and creation times (never the keys)."""
        return builtins.list(self._api("GET", f"/v1/deployments/{name}/keys")["keys"])

    def revoke_key(self, name: str, key_id: str) -> dict[str, Any]:
        return dict(self._api("DELETE", f"/v1/deployments/{name}/keys/{key_id}"))

    def versions(self, name: str) -> builtins.list[dict[str, Any]]:
        """The kept versions of `name`, newest first: version, current, digests, spec,
        deployed_by, deployed_at and origin ("deploy" or "rollback to vN")."""
        return builtins.list(self._api("GET", f"/v1/deployments/{name}/versions")["versions"])

    def rollback(self, name: str, to: int | None = None) -> dict[str, Any]:
        """Route `name` to version `to` again (default: the version before the current one),
        as a new version, without an upload; running calls finish on the old one."""
        body = {} if to is None else {"to": to}
        return dict(self._api("POST", f"/v1/deployments/{name}/rollback", json=body))

    def set_secret(self, name: str, values: dict[str, str]) -> dict[str, Any]:
        """Create or replace the secret `name`: KEY -> value, given to the replicas of every
        endpoint deployed with `secrets=[name]` (at their next start) as environment
        variables. Values are never shown again."""
        return dict(self._api("PUT", f"/v1/secrets/{name}", json={"values": values}))

    def secrets(self) -> builtins.list[dict[str, Any]]:
        """Secret names with their key names and when they were set (never the values)."""
        return builtins.list(self._api("GET", "/v1/secrets")["secrets"])

    def delete_secret(self, name: str) -> dict[str, Any]:
        return dict(self._api("DELETE", f"/v1/secrets/{name}"))

    def list(self, state: str | None = None) -> builtins.list[dict[str, Any]]:
        """Every deployment's summary (all pages), or those of one `state`: "active"
        (replicas wanted) or "idle" (at zero)."""
        items: builtins.list[dict[str, Any]] = []
        cursor = None
        while True:
            page = self.list_page(cursor=cursor, limit=1000, state=state)
            items.extend(page["deployments"])
            cursor = page["next_cursor"]
            if cursor is None:
                return items

    def list_page(self, cursor: str | None = None, limit: int = 100,
                  state: str | None = None) -> dict[str, Any]:
        """One page: {"deployments", "next_cursor" (None on the last page), "total"}."""
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        if state is not None:
            params["state"] = state
        return dict(self._api("GET", "/v1/deployments", params=params))

    def status(self, name: str) -> dict[str, Any]:
        return dict(self._api("GET", f"/v1/deployments/{name}"))

    def hosts(self) -> dict[str, Any]:
        """{"hosts": [...live...], "lost": [...]}: per host its kind, capacity, allocated,
        utilization and replicas."""
        return dict(self._api("GET", "/v1/hosts"))

    def events(self, name: str, limit: int = 100) -> builtins.list[dict[str, Any]]:
        return builtins.list(self._api("GET", f"/v1/deployments/{name}/events",
                              params={"limit": limit})["events"])

    def logs(self, name: str, after: str = "0-0", wait_ms: int = 0) -> dict[str, Any]:
        return dict(self._api("GET", f"/v1/deployments/{name}/logs",
                              params={"after": after, "wait_ms": wait_ms},
                              timeout=wait_ms / 1000 + 30))

    def delete(self, name: str) -> dict[str, Any]:
        return dict(self._api("DELETE", f"/v1/deployments/{name}"))

    def series(self, name: str, window: str = "1h") -> dict[str, Any]:
        """The dashboard's chart data of an endpoint: columns, step_s, targets, events."""
        return dict(self._api("GET", f"/v1/deployments/{name}/series",
                              params={"window": window}))

    def dashboard_link(self) -> str:
        """A one-time dashboard sign-in URL: it works once, for about a minute."""
        link = self._api("POST", "/v1/ui/login-links")
        return f"{self.config.platform_url.rstrip('/')}{link['path']}"

    # ---- data plane -------------------------------------------------------------------
    def _post(self, url: str, content_type: str, body: bytes, timeout_s: float,
              params: dict[str, str] | None = None, key: str | None = None) -> httpx.Response:
        try:
            return self._http.post(url, content=body, params=params, timeout=timeout_s,
                                   headers={"Content-Type": content_type, **_key_header(key)})
        except httpx.TransportError as exc:
            raise ConfigError(f"cannot reach the activator at {self.config.activator_url} "
                              f"({exc}); is `lowtide up` running?") from None

    def invoke_url(self, name: str, method: str = "") -> str:
        tail = f"/{method}" if method and method != CALL else ""
        return f"{self.config.activator_url}/fn/{name}{tail}"

    def result(self, request_id: str, timeout: float | None = None, key: str | None = None
               ) -> Any:
        url = f"{self.config.activator_url}/requests/{request_id}"
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = POLL_MIN_S
        while True:
            try:
                response = self._http.get(url, headers=_key_header(key))
            except httpx.TransportError as exc:
                raise ConfigError(f"cannot reach the activator: {exc}") from None
            if response.status_code != 202:
                return decode_result(response)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"request {request_id} has no result after {timeout:g} s")
            time.sleep(delay if deadline is None else min(delay, deadline - time.monotonic()))
            delay = min(delay * 2, POLL_MAX_S)


def default_name(fn: Callable[..., Any] | type) -> str:
    """A function's name, or a class's in kebab case: `SentenceEmbedder` ->
    'sentence-embedder'."""
    raw = getattr(fn, "__name__", "")
    if inspect.isclass(fn):
        raw = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", raw)
    return raw.replace("_", "-").lower()


def _class_methods(cls: type) -> dict[str, list[str] | None]:
    """The methods a class deployment serves; refused when the class cannot be one."""
    try:
        inspect.signature(cls).bind()
    except TypeError as exc:
        raise DeployError(f"{cls.__name__} is built without arguments in each replica, but "
                          f"its constructor needs some ({exc}); give them defaults, or read "
                          "them from the environment or class attributes") from None
    except ValueError:
        pass  # no signature to check
    methods = method_params(cls)
    if not methods:
        raise DeployError(f"{cls.__name__} has no public method and no __call__: nothing "
                          "could be called")
    return methods


_default: Client | None = None


def default_client() -> Client:
    global _default
    if _default is None:
        _default = Client()
    return _default


def deploy(fn: Callable[..., Any] | type, name: str | None = None, **options: Any
           ) -> Endpoint:
    """Deploy a function or a class and return its Endpoint; see Client.deploy."""
    return default_client().deploy(fn, name, **options)


__all__ = ["Client", "Endpoint", "Handle", "LowtideError", "Method", "deploy"]
