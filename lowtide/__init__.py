"""lowtide: serverless functions and model serving that adapt to each function.

    import lowtide
    ep = lowtide.deploy(lambda x: x * 2, name="double")
    ep(21)  # -> 42
"""

from ._batched import batched
from .sdk import (
    AuthError,
    BadInput,
    Client,
    ConfigError,
    DeadlineExceeded,
    DeployError,
    Endpoint,
    EndpointNotFound,
    FunctionError,
    Handle,
    InvocationError,
    LowtideError,
    Method,
    Overloaded,
    StartupError,
    deploy,
    on_shutdown,
)

__version__ = "0.1.0"

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
    "__version__",
    "batched",
    "deploy",
    "on_shutdown",
]
