"""The SDK's errors, one small tree:

    LowtideError
    ├── ConfigError          no cluster configured or reachable
    ├── DeployError          the platform refused a deployment (message says why)
    └── InvocationError      an invocation was answered with an error status
        ├── BadInput             400: the arguments do not fit the function
        ├── AuthError            401 / 403: no valid token or invoke key (never echoed back)
        ├── EndpointNotFound     404
        ├── Overloaded           429 / 503: a bound was hit, retry later
        ├── StartupError         503: the endpoint's replicas cannot start (reason says why)
        ├── FunctionError        500: the function raised (exc_type names the exception)
        └── DeadlineExceeded     504
"""

from __future__ import annotations

import json
from typing import Any


class LowtideError(Exception):
    pass


class ConfigError(LowtideError):
    pass


class DeployError(LowtideError):
    pass


class InvocationError(LowtideError):
    def __init__(self, status: int, error: str, detail: str, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {error}: {detail}" if detail else f"{status} {error}")
        self.status = status
        self.error = error
        self.detail = detail
        self.body = body


class BadInput(InvocationError):
    pass


class AuthError(InvocationError):
    """401: credentials missing or malformed; 403: well formed but not allowed."""


class EndpointNotFound(InvocationError):
    pass


class Overloaded(InvocationError):
    pass


class FunctionError(InvocationError):
    """The function raised on its replica. `exc_type` names the exception, `traceback` is
    the remote traceback (the user's frames, bounded in size); printing the error shows it
    below the message, as a local traceback would be shown."""

    @property
    def exc_type(self) -> str:
        return str(self.body.get("type", ""))

    @property
    def traceback(self) -> str:
        return str(self.body.get("traceback") or "")

    def __str__(self) -> str:
        message = super().__str__()
        if not self.traceback:
            return message
        return f"{message}\n\nRemote traceback (on the replica):\n{self.traceback}"


class DeadlineExceeded(InvocationError):
    pass


class StartupError(InvocationError):
    """503: no replica of the endpoint can start — its code failed to load (an import
    error, a package missing on the workers, a requirement pip cannot install, the
    constructor raised) or no host can ever place it. `reason` is the cause as the replica
    or the placement reported it (e.g. "ModuleNotFoundError: No module named 'tabulate'");
    `retry_in_s` is when the platform tries again (None: after a redeploy or a new host)."""

    @property
    def reason(self) -> str:
        return str(self.body.get("reason", self.detail))

    @property
    def retry_in_s(self) -> float | None:
        value = self.body.get("retry_in_s")
        return float(value) if isinstance(value, (int, float)) else None


STARTUP_ERRORS = ("startup failed", "cannot be placed")  # the `error` of StartupError bodies


_BY_STATUS: dict[int, type[InvocationError]] = {
    400: BadInput, 401: AuthError, 403: AuthError, 404: EndpointNotFound,
    429: Overloaded, 503: Overloaded, 500: FunctionError, 504: DeadlineExceeded,
}


def error_from_response(status: int, content: bytes) -> InvocationError:
    try:
        body = json.loads(content)
        if not isinstance(body, dict):
            body = {"detail": body}
    except ValueError:
        body = {"detail": content[:500].decode(errors="replace")}
    cls = _BY_STATUS.get(status, InvocationError)
    if status == 503 and body.get("error") in STARTUP_ERRORS:
        cls = StartupError
    return cls(status, str(body.get("error", "error")), str(body.get("detail", "")), body)
