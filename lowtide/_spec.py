"""A deployment's spec: what the SDK sends and the platform stores, validated in one place.

Validation errors name the field, the value and what is allowed, so the SDK can raise them
before uploading and the platform can answer them with a 400.
"""

from __future__ import annotations

import re
import sys
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from ._manifest import MAX_MODELS, ManifestError, check_model_tag
from ._methods import CALL, MAX_METHODS

NAME_PATTERN = re.compile(r"[a-z][a-z0-9-]{0,62}")  # use with fullmatch
_METHOD = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,99}")
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?|[kmgt]i?|B|b)?\s*$")
_FACTORS = {
    None: 1, "B": 1, "b": 1,
    "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}
MAX_TIMEOUT_S = 3600.0
MAX_REQUIREMENTS = 100
MAX_REQUIREMENT_CHARS = 511
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")  # use with fullmatch
RESERVED_ENV_PREFIXES = ("LOWTIDE_", "BENTOML_")  # the replica's own settings
RESERVED_ENV = frozenset({"CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "PYTHONUNBUFFERED"})
MAX_ENV_VARS = 200
MAX_ENV_BYTES = 64 * 1024  # names and values of one deployment's env, or one secret
MAX_SECRETS = 50
MAX_PACKAGES = 32
PUBLIC, KEY = "public", "key"  # invoke access of an endpoint (lowtide._auth checks it)
ACCESS_MODES = (PUBLIC, KEY)


class SpecError(ValueError):
    """A deployment spec value is not allowed; the message says which and why."""


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise SpecError(
            f"name {name!r} is not allowed: use 1-63 characters, lowercase letters, digits and "
            "'-', starting with a letter (e.g. 'double' or 'resnet-50')"
        )
    return name


def check_requirement(text: object) -> str:
    """A PEP 508 requirement naming a package on the index: no pip options (`--index-url`,
    `-e`...), no URLs or paths, since each string becomes an argument of `pip install` on
    the hosts. A private index is configured on the agents (PIP_INDEX_URL), not per spec."""
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_REQUIREMENT_CHARS:
        raise SpecError(f"requirement {text!r} must be a non-empty string of at most "
                        f"{MAX_REQUIREMENT_CHARS} characters, e.g. 'scikit-learn>=1.3'")
    if text.lstrip().startswith("-"):
        raise SpecError(f"requirement {text!r} is a pip option, which is not allowed; for a "
                        "private index set PIP_INDEX_URL in the agents' environment")
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        raise SpecError(f"requirement {text!r} is not a PEP 508 requirement ({exc}); "
                        "use e.g. 'scikit-learn>=1.3' or 'numpy==1.26.4'") from None
    if req.url:
        raise SpecError(f"requirement {text!r} points at a URL or path, which is not "
                        "allowed: name a package on the index (e.g. 'mypkg==1.0'), or put "
                        "the code into the deployed function")
    return text


def check_env(env: object, what: str = "env") -> dict[str, str]:
    """Environment variables a replica gets: names like shell variables, string values, none
    of the replica's own settings (LOWTIDE_*, BENTOML_*, the GPU pinning). Errors name the
    variable, never its value (a secret's value must not reach an error body)."""
    if not isinstance(env, dict):
        raise SpecError(f"{what} must be an object of NAME: value strings")
    if len(env) > MAX_ENV_VARS:
        raise SpecError(f"{what} has {len(env)} variables: at most {MAX_ENV_VARS}")
    size = 0
    for key, value in env.items():
        if not isinstance(key, str) or not ENV_NAME.fullmatch(key):
            raise SpecError(f"{what}: {str(key)[:40]!r} is not a variable name (letters, "
                            "digits and '_', not starting with a digit)")
        if key.upper().startswith(RESERVED_ENV_PREFIXES) or key in RESERVED_ENV:
            raise SpecError(f"{what}: {key} is set by lowtide itself; choose another name")
        if not isinstance(value, str) or "\0" in value:
            raise SpecError(f"{what}: the value of {key} must be a string without NUL bytes")
        size += len(key) + len(value.encode())
    if size > MAX_ENV_BYTES:
        raise SpecError(f"{what} is {size} bytes: at most {MAX_ENV_BYTES}")
    return env


def check_secret_names(names: object) -> list[str]:
    if not isinstance(names, list) or len(names) > MAX_SECRETS:
        raise SpecError(f"secrets must be a list of at most {MAX_SECRETS} secret names, "
                        "e.g. ['hf-token']")
    for name in names:
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise SpecError(f"secret name {name!r} is not allowed: 1-63 characters, lowercase "
                            "letters, digits and '-', starting with a letter")
    return names


def check_methods(methods: object) -> None:
    if not isinstance(methods, dict) or len(methods) > MAX_METHODS:
        raise SpecError(f"methods must be an object of at most {MAX_METHODS} method names")
    for name, params in methods.items():
        if not isinstance(name, str) or not (name == CALL or _METHOD.fullmatch(name)):
            raise SpecError(f"method {name!r} is not a public method name (a Python "
                            "identifier not starting with '_', or __call__)")
        if params is not None and not (
            isinstance(params, list) and all(isinstance(p, str) for p in params)
        ):
            raise SpecError(f"the parameters of method {name!r} must be a list of names")


def parse_memory(value: object, key: str = "memory") -> int:
    """'512Mi', '8Gi', '1G' or a number of bytes -> bytes."""
    if isinstance(value, bool):
        raise SpecError(f"{key}={value!r} is not a size")
    if isinstance(value, (int, float)):
        if not value >= 1:
            raise SpecError(f"{key}={value!r} must be at least one byte")
        return int(value)
    if isinstance(value, str):
        m = _MEMORY.match(value)
        if m:
            unit = m.group(2)
            unit = unit[0].upper() + unit[1:] if unit and unit not in ("b",) else unit
            factor = _FACTORS.get(unit)
            if factor is not None and int(float(m.group(1)) * factor) >= 1:
                return int(float(m.group(1)) * factor)
    raise SpecError(f"{key}={value!r} is not a size: use bytes or e.g. '512Mi', '8Gi'")


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


@dataclass(frozen=True)
class DeploymentSpec:
    name: str
    cpu: float = 1.0
    memory_bytes: int = 2**30
    gpu: int = 0
    gpu_memory_bytes: int = 0  # memory each assigned GPU must have; 0: any GPU
    requirements: list[str] = field(default_factory=list)
    min_replicas: int = 0
    max_replicas: int | None = None
    timeout_s: float = 60.0
    python: str = field(default_factory=python_version)
    params: list[str] | None = None  # parameter names, to bind positional arguments
    access: str = PUBLIC  # invoke access: PUBLIC, or KEY (an invoke key of this endpoint)
    models: list[str] = field(default_factory=list)  # BentoML model tags, 'name:version'
    env: dict[str, str] = field(default_factory=dict)  # environment variables of replicas
    secrets: list[str] = field(default_factory=list)  # names of secrets (values stay apart)
    # installed top-level packages the code references (recorded by the SDK): the agents'
    # prewarmed workers import them ahead of a cold start
    packages: list[str] = field(default_factory=list)
    # a class deployment: its public methods -> their parameter names (None: *args), with
    # "__call__" for POST /fn/{name}; None for a function
    methods: dict[str, list[str] | None] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> DeploymentSpec:
        if not isinstance(data, dict):
            raise SpecError("the spec must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"unknown field(s) {', '.join(unknown)}; allowed: "
                            f"{', '.join(sorted(known))}")
        if "name" not in data:
            raise SpecError("missing field name")
        spec = cls(**data)
        spec.validate()
        return spec

    def check_new(self) -> None:
        """What a new deployment must also pass (stored specs are loaded without it, so a
        rule added later cannot make an existing deployment unreadable)."""
        self.validate()
        if len(self.requirements) > MAX_REQUIREMENTS:
            raise SpecError(f"{len(self.requirements)} requirements: at most "
                            f"{MAX_REQUIREMENTS} are allowed")
        for requirement in self.requirements:
            check_requirement(requirement)
        if not isinstance(self.models, list) or len(self.models) > MAX_MODELS:
            raise SpecError(f"models must be a list of at most {MAX_MODELS} BentoML model "
                            "tags, e.g. ['iris_clf:latest']")
        try:
            for tag in self.models:
                check_model_tag(tag)
        except ManifestError as exc:
            raise SpecError(str(exc)) from None

    def validate(self) -> None:
        check_name(self.name)
        self._validate_resources()
        self._validate_rest()

    def _validate_resources(self) -> None:
        if isinstance(self.cpu, bool) or not isinstance(self.cpu, (int, float)) or not (
            0 < self.cpu <= 512
        ):
            raise SpecError(f"cpu={self.cpu!r} must be a number of cores in (0, 512]")
        if isinstance(self.memory_bytes, bool) or not isinstance(self.memory_bytes, int) or (
            self.memory_bytes <= 0
        ):
            raise SpecError(f"memory={self.memory_bytes!r} must be a positive number of bytes")
        if isinstance(self.gpu, bool) or not isinstance(self.gpu, int) or not 0 <= self.gpu <= 16:
            raise SpecError(f"gpu={self.gpu!r} must be a whole number of GPUs in [0, 16]")
        if isinstance(self.gpu_memory_bytes, bool) or not isinstance(
            self.gpu_memory_bytes, int
        ) or self.gpu_memory_bytes < 0:
            raise SpecError(f"gpu_memory={self.gpu_memory_bytes!r} must be a number of bytes "
                            "(or e.g. '16Gi' in deploy())")
        if self.gpu_memory_bytes and not self.gpu:
            raise SpecError(f"gpu_memory={self.gpu_memory_bytes!r} needs gpu >= 1: it is the "
                            "memory each assigned GPU must have")

    def _validate_rest(self) -> None:
        if not isinstance(self.requirements, list) or not all(
            isinstance(r, str) and r.strip() and len(r) <= MAX_REQUIREMENT_CHARS
            for r in self.requirements
        ):
            raise SpecError("requirements must be a list of requirement strings, "
                            "e.g. ['scikit-learn>=1.3']")
        if not isinstance(self.min_replicas, int) or isinstance(self.min_replicas, bool) or not (
            0 <= self.min_replicas <= 1000
        ):
            raise SpecError(f"min_replicas={self.min_replicas!r} must be in [0, 1000]")
        if self.max_replicas is not None and (
            not isinstance(self.max_replicas, int) or isinstance(self.max_replicas, bool)
            or not max(1, self.min_replicas) <= self.max_replicas <= 1000
        ):
            raise SpecError(f"max_replicas={self.max_replicas!r} must be None or in "
                            f"[max(1, min_replicas), 1000]")
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float)) or (
            not 0 < self.timeout_s <= MAX_TIMEOUT_S
        ):
            raise SpecError(f"timeout={self.timeout_s!r} must be seconds in (0, {MAX_TIMEOUT_S:g}]")
        if not isinstance(self.python, str) or not re.fullmatch(r"[0-9]+\.[0-9]+", self.python):
            raise SpecError(f"python={self.python!r} must look like '3.11'")
        if self.params is not None and not (
            isinstance(self.params, list) and all(isinstance(p, str) for p in self.params)
        ):
            raise SpecError("params must be a list of parameter names")
        check_env(self.env)
        check_secret_names(self.secrets)
        if not isinstance(self.packages, list) or len(self.packages) > MAX_PACKAGES or not all(
            isinstance(p, str) and p.isidentifier() for p in self.packages
        ):
            raise SpecError(f"packages must be a list of at most {MAX_PACKAGES} top-level "
                            "package names, e.g. ['torch', 'sklearn']")
        if self.methods is not None:
            check_methods(self.methods)
        if self.access not in ACCESS_MODES:
            raise SpecError(f"access={self.access!r} must be one of {', '.join(ACCESS_MODES)} "
                            "(public: anyone with the URL; key: an invoke key of the endpoint)")
