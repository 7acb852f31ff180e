"""The environment a replica's user code gets: the deployment's `env`, then the keys of
its secrets (a later secret wins over an earlier one and over `env`), and the secret
values to keep out of what the platform shows (log lines, crash reports, error bodies).

Values shorter than MIN_REDACT_CHARS are not redacted (replacing every "1" in the logs
would hide more than it protects); secrets are tokens and passwords, longer than that.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

MIN_REDACT_CHARS = 4
REDACTED = "[secret]"
SECRET_KEYS_ENV = "LOWTIDE_SECRET_KEYS"  # names of the variables whose values are secret


def replica_env(env: Mapping[str, str], secrets: Iterable[Mapping[str, str]]
                ) -> tuple[dict[str, str], tuple[str, ...]]:
    """(the variables to set, the secret values to redact), longest value first."""
    merged = dict(env)
    hidden: set[str] = set()
    keys: set[str] = set()
    for values in secrets:
        merged.update(values)
        keys.update(values)
    hidden = {merged[k] for k in keys if len(merged[k]) >= MIN_REDACT_CHARS}
    if keys:
        merged[SECRET_KEYS_ENV] = ",".join(sorted(keys))
    return merged, tuple(sorted(hidden, key=len, reverse=True))


def secret_values(environ: Mapping[str, str]) -> tuple[str, ...]:
    """In a replica: the values of its secret variables, to redact from error answers."""
    keys = [k for k in environ.get(SECRET_KEYS_ENV, "").split(",") if k]
    values = {environ[k] for k in keys if len(environ.get(k, "")) >= MIN_REDACT_CHARS}
    return tuple(sorted(values, key=len, reverse=True))


def redact(text: str, values: Iterable[str]) -> str:
    for value in values:
        if value in text:
            text = text.replace(value, REDACTED)
    return text
