"""What `Client.get()` and `deploy()` return: an `Endpoint` to call (and its class methods,
`Method`), and the `Handle` of an async call."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from .._methods import describe
from . import _stream
from ._codec import QUEUE_WAIT_ALLOWANCE_S, decode_result, encode_call
from ._errors import error_from_response

if TYPE_CHECKING:
    from ._client import Client


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
