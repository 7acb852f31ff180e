"""The client side of lowtide: deploy functions, call them, watch them."""

from .._methods import on_shutdown
from ._client import Client, Endpoint, Handle, Method, default_client, deploy
from ._errors import (
    AuthError,
    BadInput,
    ConfigError,
    DeadlineExceeded,
    DeployError,
    EndpointNotFound,
    FunctionError,
    InvocationError,
    LowtideError,
    Overloaded,
    StartupError,
)

__all__ = [
    "AuthError",
    "BadInput",
    "Client",
    "ConfigError",
    "DeadlineExceeded",
    "DeployError",
    "Endpoint",
    "EndpointNotFound",
    "FunctionError",
    "Handle",
    "InvocationError",
    "LowtideError",
    "Method",
    "Overloaded",
    "StartupError",
    "default_client",
    "deploy",
    "on_shutdown",
]
