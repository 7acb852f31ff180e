"""The client side of lowtide: deploy functions, call them, watch them."""

from ._client import Client, Endpoint, Handle, default_client, deploy
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
)

__all__ = [
    "AuthError", "BadInput", "Client", "ConfigError", "DeadlineExceeded", "DeployError", "Endpoint",
    "EndpointNotFound", "FunctionError", "Handle", "InvocationError", "LowtideError",
    "Overloaded", "default_client", "deploy",
]
