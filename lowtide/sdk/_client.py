"""The SDK's HTTP client: deployments through the platform API, calls through the activator."""

from __future__ import annotations

import builtins
import getpass
import inspect
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

import httpx

from .._home import ClusterConfig, home_dir, resolve
from .._jsonable import jsonable
from .._methods import CALL, describe, method_params
from .._spec import DeploymentSpec, SpecError, parse_memory, python_version
from . import _blobs, _stream
from ._errors import (
    AuthError,
    BadInput,
    ConfigError,
    DeployError,
    LowtideError,
    error_from_response,
)
from ._packages import referenced_packages
from ._pickling import parameter_names, pickle_function

_JSON = "application/json"
_OCTETS = "application/octet-stream"
POLL_MIN_S, POLL_MAX_S = 0.05, 1.0
QUEUE_WAIT_ALLOWANCE_S = 180.0  # above the activator's default queue wait (120 s)


def encode_call(params: list[str] | None, args: tuple[Any, ...], kwargs: dict[str, Any]
                ) -> tuple[str, bytes]:
    """Arguments -> (content type, body): positional arguments bound to parameter names.
    numpy arrays and scalars and torch tensors become JSON lists and numbers. Arguments
    that cannot be sent raise BadInput before anything is sent."""
    if len(args) == 1 and not kwargs and isinstance(args[0], (bytes, bytearray, memoryview)):
        return _OCTETS, bytes(args[0])
    if args:
        if params is None:
            if len(args) == 1 and not kwargs and not isinstance(args[0], dict):
                return _JSON, _dumps(args[0])  # one JSON value, one argument
            raise _bad_input("this endpoint takes *args; pass keyword arguments or one JSON "
                             "value")
        if len(args) > len(params):
            raise _bad_input(f"takes {len(params)} positional argument(s) but {len(args)} "
                             f"were given (parameters: {', '.join(params) or 'none'})")
        for pname in params[: len(args)]:
            if pname in kwargs:
                raise _bad_input(f"got multiple values for argument {pname!r}")
        kwargs = {**dict(zip(params, args, strict=False)), **kwargs}
    return _JSON, _dumps(kwargs)


def _dumps(value: Any) -> bytes:
    try:
        return json.dumps(value, default=jsonable).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise _bad_input(f"the arguments cannot be sent as JSON: {exc}") from None


def _bad_input(detail: str) -> BadInput:
    """What the activator would answer; raised before sending."""
    return BadInput(400, "bad input", detail, {"error": "bad input", "detail": detail})


def _who() -> str:
    """Who deploys, for the versions list: user@host of this process."""
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:  # no user name (a container without passwd entry)
        return socket.gethostname()


def _key_header(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def decode_result(response: httpx.Response) -> Any:
    if response.status_code != 200:
        raise error_from_response(response.status_code, response.content)
    media = response.headers.get("content-type", _JSON).split(";")[0].strip()
    if media == _OCTETS:
        return response.content
    if media == "application/x-ndjson":  # a stream's whole sequence (an async call's)
        return [json.loads(line) for line in response.content.splitlines() if line]
    return response.json()


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


class Handle:
    """An accepted asynchronous call; `result()` waits for its answer."""

    def __init__(self, client: Client, request_id: str, status_url: str,
                 key: str | None = None) -> None:
        self.client = client
        self.id = request_id
        self.status_url = status_url
        self._key = key

    def result(self, timeout: float | None = None) -> Any:
        return self.client.result(self.id, timeout, self._key)

    def __repr__(self) -> str:
        return f"Handle(id={self.id!r})"


class Endpoint:
    """A deployed function or class: call it like the function, or submit calls
    asynchronously. A class deployment's methods are attributes (`ep.embed(["hi"])`,
    `ep.embed.submit(...)`), or `ep.method("name")` for a name the Endpoint itself uses
    (`status`, `delete`...); `ep(...)` calls its `__call__`."""

    def __init__(self, client: Client, name: str, url: str, params: list[str] | None,
                 timeout_s: float, version: int, key: str | None = None,
                 methods: dict[str, list[str] | None] | None = None) -> None:
        self.client = client
        self.key = key  # invoke key sent with calls (endpoints whose access is 'key')
        self.name = name
        self.url = url
        self.params = params
        self.timeout_s = timeout_s
        self.version = version
        self.methods = methods  # a class deployment's methods; None for a function

    def __repr__(self) -> str:  # never shows the key
        return f"Endpoint(name={self.name!r}, url={self.url!r}, version={self.version})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("", self.params, args, kwargs)

    def call(self, **kwargs: Any) -> Any:
        return self(**kwargs)

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """Call a generator endpoint (or a class's generator `__call__`): `for item in
        ep.stream(...)` gets each yielded value as it is yielded (bytes in the pieces they
        arrive in). Leaving the loop early closes the generator in the replica. A
        generator method: `ep.tokens.stream(...)`."""
        return self._stream("", self.params, args, kwargs)

    def astream(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """`async for item in ep.astream(...)`: `stream` for asyncio code."""
        return self._astream("", self.params, args, kwargs)

    def _stream(self, method: str, params: list[str] | None, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Iterator[Any]:
        content_type, body = encode_call(params, args, kwargs)
        return _stream.stream(self.client._http, self.client.invoke_url(self.name, method),
                              content_type, body, self.key,
                              self.timeout_s + QUEUE_WAIT_ALLOWANCE_S)

    def _astream(self, method: str, params: list[str] | None, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        content_type, body = encode_call(params, args, kwargs)
        return _stream.astream(self.client.invoke_url(self.name, method), content_type, body,
                               self.key, self.timeout_s + QUEUE_WAIT_ALLOWANCE_S)

    def submit(self, *args: Any, **kwargs: Any) -> Handle:
        return self._submit("", self.params, args, kwargs)

    def method(self, name: str) -> Method:
        """The method `name` of a class deployment."""
        if self.methods is None:
            raise AttributeError(f"{self.name!r} is a function deployment; it has no methods")
        if name not in self.methods:
            raise AttributeError(f"{self.name!r} has no method {name!r}; its methods: "
                                 f"{describe(self.methods)}")
        return Method(self, name, self.methods[name])

    def __getattr__(self, name: str) -> Method:
        methods = self.__dict__.get("methods")
        if methods is None or name.startswith("_") or name not in methods:
            raise AttributeError(name)
        return Method(self, name, methods[name])

    def _call(self, method: str, params: list[str] | None, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> Any:
        content_type, body = encode_call(params, args, kwargs)
        url = self.client.invoke_url(self.name, method)
        # the activator answers 504 itself once a request waited or ran too long; wait for it
        wait_s = self.timeout_s + QUEUE_WAIT_ALLOWANCE_S
        return decode_result(self.client._post(url, content_type, body, wait_s, key=self.key))

    def _submit(self, method: str, params: list[str] | None, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Handle:
        content_type, body = encode_call(params, args, kwargs)
        response = self.client._post(self.client.invoke_url(self.name, method), content_type,
                                     body, 30.0, params={"async": "1"}, key=self.key)
        if response.status_code != 202:
            raise error_from_response(response.status_code, response.content)
        info = response.json()
        return Handle(self.client, info["id"], info["status_url"], self.key)

    def create_key(self, label: str = "") -> str:
        """Create an invoke key, use it for this Endpoint's calls, and return it (it is
        shown only this once: keep it to call from elsewhere)."""
        self.key = str(self.client.create_key(self.name, label)["key"])
        return self.key

    def status(self) -> dict[str, Any]:
        return self.client.status(self.name)

    def events(self, limit: int = 100) -> list[dict[str, Any]]:
        return self.client.events(self.name, limit)

    def versions(self) -> list[dict[str, Any]]:
        return self.client.versions(self.name)

    def rollback(self, to: int | None = None) -> dict[str, Any]:
        info = self.client.rollback(self.name, to)
        self.version = int(info["version"])
        return info

    def delete(self) -> None:
        self.client.delete(self.name)


class Method:
    """One method of a class deployment: `m(...)`, `m.call(**kw)`, `m.submit(...)`, and
    for a generator method `for item in m.stream(...)` / `async for item in
    m.astream(...)`."""

    def __init__(self, endpoint: Endpoint, name: str, params: list[str] | None) -> None:
        self.endpoint = endpoint
        self.name = name
        self.params = params

    def __repr__(self) -> str:
        return f"Method({self.endpoint.name!r}, {self.name!r})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.endpoint._call(self.name, self.params, args, kwargs)

    def call(self, **kwargs: Any) -> Any:
        return self(**kwargs)

    def submit(self, *args: Any, **kwargs: Any) -> Handle:
        return self.endpoint._submit(self.name, self.params, args, kwargs)

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """Each value the generator method yields, as it is yielded (`Endpoint.stream`)."""
        return self.endpoint._stream(self.name, self.params, args, kwargs)

    def astream(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        return self.endpoint._astream(self.name, self.params, args, kwargs)


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
