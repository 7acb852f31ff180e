"""What every command module shares: flag parsing helpers read from the environment once,
the console and the SDK client."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Mapping
from typing import Any


def env_value(env: Mapping[str, str], key: str, default: Any = None) -> Any:
    value = env.get(key)
    return default if value in (None, "") else value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number >= 0")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def overcommit_factor(text: str) -> float:
    value = positive_float(text)
    if not 1.0 <= value <= 64.0:
        raise argparse.ArgumentTypeError(f"{text} must be in [1, 64]")
    return value


def size_bytes(text: str) -> int:
    """'64Gi', '500M' or a number of bytes."""
    from .._spec import SpecError, parse_memory

    try:
        return parse_memory(text, "size")
    except SpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} must be in [0, 65535]")
    return value


def redis_url_from(env: Mapping[str, str]) -> str:
    return str(env_value(env, "LOWTIDE_REDIS_URL", env_value(env, "REDIS_URL", "")))


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if logging.getLogger().isEnabledFor(logging.INFO) and not logging.getLogger().isEnabledFor(
            logging.DEBUG):
        # one line per HTTP request (the agent's probes of its pool workers): debug detail
        for noisy in ("httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def sdk_client() -> Any:
    from ..sdk import Client

    return Client()
