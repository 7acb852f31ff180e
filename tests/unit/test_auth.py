"""The pure rules: credentials (token, invoke keys, 401 vs 403), requirement strings, JSON
depth, the approximate queue bound, and the platform holding only the token's digest."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from lowtide._auth import (
    KEY_PATTERN,
    Access,
    NewKey,
    bearer,
    check_invoke,
    check_token,
    digest,
    key_id,
    new_key,
    token_digest,
)
from lowtide._http import Forbidden, Unauthorized
from lowtide._protocol import MAX_JSON_DEPTH, json_too_deep
from lowtide._spec import MAX_REQUIREMENTS, DeploymentSpec, SpecError, check_requirement
from lowtide.activator.backlog import Backlog
from lowtide.activator.settings import ActivatorSettings
from lowtide.platform.settings import PlatformSettings
from lowtide.sdk import AuthError, Client, Endpoint
from lowtide.sdk._errors import error_from_response

TOKEN = "s3cret-token-value"


# ---- bearer parsing -------------------------------------------------------------------
@pytest.mark.parametrize(("header", "credential"), [
    (None, None), ("", None), ("Bearer", None), ("Bearer ", None), ("Bearer  ", None),
    ("Basic dXNlcjpwYXNz", None), ("Token abc", None), ("Bearer a b", None),
    ("Bearer abc", "abc"), ("bearer abc", "abc"), ("BEARER abc", "abc"),
    ("  Bearer   abc  ", "abc"),
])
def test_bearer(header: str | None, credential: str | None) -> None:
    assert bearer(header) == credential


# ---- control-plane token --------------------------------------------------------------
@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic x", "Bearer a b", TOKEN])
def test_token_missing_or_malformed_is_401_with_a_challenge(header: str | None) -> None:
    with pytest.raises(Unauthorized) as info:
        check_token(header, digest(TOKEN))
    assert info.value.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("token", ["wrong", TOKEN + "x", TOKEN.upper(), TOKEN[:-1]])
def test_wrong_token_is_403_and_not_echoed(token: str) -> None:
    with pytest.raises(Forbidden) as info:
        check_token(f"Bearer {token}", digest(TOKEN))
    assert token not in info.value.detail and TOKEN not in info.value.detail


def test_right_token_passes() -> None:
    check_token(f"Bearer {TOKEN}", digest(TOKEN))


def test_token_digest_is_the_hex_sha256() -> None:
    assert token_digest(TOKEN) == hashlib.sha256(TOKEN.encode()).hexdigest()


def test_platform_settings_hold_only_the_digest() -> None:
    names = {f.name for f in dataclasses.fields(PlatformSettings)}
    assert "token" not in names and "token_sha256" in names
    settings = PlatformSettings(redis_url="redis://x", token_sha256=token_digest(TOKEN))
    assert TOKEN not in repr(settings)


@pytest.mark.parametrize(("value", "message"), [
    ("", "needs an API token"), ("abc", "64 lowercase hex"), ("A" * 64, "64 lowercase hex"),
    (token_digest(TOKEN) + "0", "64 lowercase hex"),
])
def test_platform_settings_refuse_a_bad_digest(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PlatformSettings(redis_url="redis://x", token_sha256=value)


# ---- invoke keys ----------------------------------------------------------------------
def test_fixed_keys_are_well_formed() -> None:
    assert key_id(KEY.key) == KEY.id and key_id(OTHER.key) == OTHER.id


def test_new_keys_are_well_formed_unique_and_carry_their_id() -> None:
    keys = [new_key() for _ in range(200)]
    assert len({k.key for k in keys}) == len({k.id for k in keys}) == 200
    for k in keys:
        assert KEY_PATTERN.fullmatch(k.key)
        assert key_id(k.key) == k.id
        assert k.digest_hex == hashlib.sha256(k.key.encode()).hexdigest()


KEY = NewKey("abcdef012345", "lt_abcdef012345_" + "k3y-secret_" * 3 + "abcdefghij")
OTHER = NewKey("0123456789ab", "lt_0123456789ab_" + "other" * 8 + "xyz")
LOCKED = Access("key", {KEY.id: digest(KEY.key)})


@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic abc", f"Token {KEY.key}"])
def test_key_endpoint_without_credentials_is_401(header: str | None) -> None:
    with pytest.raises(Unauthorized) as info:
        check_invoke(LOCKED, header, "locked")
    assert info.value.headers["WWW-Authenticate"] == 'Bearer realm="lowtide"'
    assert "lowtide keys create locked" in info.value.detail


@pytest.mark.parametrize("credential", [
    "garbage", KEY.key + "x", KEY.key[:-1], KEY.key.upper(), "lt_" + KEY.id,
    KEY.key.replace("lt_", "lk_"), KEY.key + "\u00e9",
])
def test_malformed_key_is_401_invalid_token(credential: str) -> None:
    with pytest.raises(Unauthorized) as info:
        check_invoke(LOCKED, f"Bearer {credential}", "locked")
    assert 'error="invalid_token"' in info.value.headers["WWW-Authenticate"]
    assert credential not in info.value.detail


@pytest.mark.parametrize("credential", [
    OTHER.key,  # well formed, unknown id (another endpoint's, or revoked)
    f"lt_{KEY.id}_{OTHER.key.split('_', 2)[2]}",  # known id, wrong secret
])
def test_well_formed_but_not_allowed_is_403(credential: str) -> None:
    with pytest.raises(Forbidden) as info:
        check_invoke(LOCKED, f"Bearer {credential}", "locked")
    assert credential not in info.value.detail


def test_the_endpoints_key_passes_and_public_needs_nothing() -> None:
    check_invoke(LOCKED, f"Bearer {KEY.key}", "locked")
    for header in (None, "garbage", f"Bearer {OTHER.key}"):
        check_invoke(Access(), header, "open")


def test_a_key_endpoint_without_keys_refuses_everyone() -> None:
    with pytest.raises(Forbidden):
        check_invoke(Access("key", {}), f"Bearer {KEY.key}", "locked")


# ---- requirement strings --------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "numpy", "numpy>=1.24", "scikit-learn==1.3.2", "torch>=2.1,<3", "pandas[parquet]>=2",
    'tomli; python_version < "3.11"', "Pillow~=10.0",
])
def test_requirements_from_the_index_are_accepted(text: str) -> None:
    assert check_requirement(text) == text


@pytest.mark.parametrize(("text", "message"), [
    ("--index-url=https://evil.example/simple", "pip option"),
    ("-i https://evil.example/simple", "pip option"),
    ("--extra-index-url https://x", "pip option"),
    ("-e .", "pip option"),
    ("-r requirements.txt", "pip option"),
    ("  --pre", "pip option"),
    ("pkg @ https://example.com/pkg-1.0.whl", "URL or path"),
    ("pkg @ file:///etc/passwd", "URL or path"),
    ("git+https://github.com/x/y", "not a PEP 508"),
    ("https://example.com/pkg.tar.gz", "not a PEP 508"),
    ("./local/dir", "not a PEP 508"),
    ("numpy\n--index-url=x", "not a PEP 508"),
    ("numpy; os.system('x')", "not a PEP 508"),
    ("", "non-empty"), ("   ", "non-empty"), ("x" * 600, "at most"),
])
def test_requirement_strings_that_are_refused(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        check_requirement(text)


def test_new_deployments_check_requirements_but_stored_specs_still_load() -> None:
    data = {"name": "old", "requirements": ["pkg @ https://example.com/pkg.whl"]}
    spec = DeploymentSpec.from_dict(data)  # stored before the rule: still readable
    with pytest.raises(SpecError, match="URL"):
        spec.check_new()
    with pytest.raises(SpecError, match="at most"):
        DeploymentSpec.from_dict({"name": "many", "requirements": [f"p{i}" for i in range(
            MAX_REQUIREMENTS + 1)]}).check_new()


@pytest.mark.parametrize(("field", "value"), [
    ("access", "private"), ("access", ""), ("access", None), ("python", "3.11\n"),
    ("python", "\u0663.\u0661\u0661"),  # Arabic-Indic digits match \d, not [0-9]
    ("cpu", math.nan), ("cpu", math.inf), ("cpu", -1), ("cpu", "2"), ("cpu", True),
    ("memory_bytes", 0), ("memory_bytes", -5), ("memory_bytes", 1.5),
    ("gpu", -1), ("gpu", 17), ("gpu", 0.5), ("timeout_s", 0), ("timeout_s", 1e9),
    ("min_replicas", -1), ("max_replicas", 0),
])
def test_bad_spec_values_are_refused(field: str, value: object) -> None:
    with pytest.raises(SpecError):
        DeploymentSpec.from_dict({"name": "x", field: value})


# ---- JSON depth -----------------------------------------------------------------------
def nested(depth: int, open_: str = "[", close: str = "]") -> bytes:
    return (open_ * depth + close * depth).encode()


def alternating(depth: int) -> bytes:
    """[{"a": [{"a": ... 1 ...}]}] with `depth` levels, arrays and objects in turn."""
    value: object = 1
    for level in range(depth):
        value = [value] if level % 2 else {"a": value}
    return json.dumps(value).encode()


@pytest.mark.parametrize(("body", "too_deep"), [
    (alternating(MAX_JSON_DEPTH), False), (alternating(MAX_JSON_DEPTH + 1), True),
    (alternating(MAX_JSON_DEPTH + 1).replace(b'"a"', b'"{[}]"'), True),
    (b"[" * 60_000, False),  # unbalanced: the parser refuses it (RecursionError -> 400)
    (b"", False), (b"1", False), (b'{"x": [1, 2, {"y": 3}]}', False),
    (nested(MAX_JSON_DEPTH), False),
    (nested(MAX_JSON_DEPTH + 1), True),
    (nested(100_000), True),
    (('{"a":' * (MAX_JSON_DEPTH + 1) + "1" + "}" * (MAX_JSON_DEPTH + 1)).encode(), True),
    # brackets inside strings do not nest, escaped quotes do not end strings
    (json.dumps(["[" * 500, "{" * 500]).encode(), False),
    (json.dumps(['\\"[[[' * 100]).encode(), False),
    # many brackets side by side are wide, not deep
    (json.dumps([[1]] * 1000).encode(), False),
    (json.dumps({"k": [[[]]] * 500}).encode(), False),
])
def test_json_depth(body: bytes, too_deep: bool) -> None:
    assert json_too_deep(body) is too_deep


def test_json_depth_agrees_with_the_parser_where_it_can() -> None:
    body = nested(MAX_JSON_DEPTH)
    assert json.loads(body) is not None and not json_too_deep(body)


# ---- approximate queue bound ----------------------------------------------------------
def test_backlog_counts_its_own_buffered_requests_between_readings() -> None:
    b = Backlog(max_queued=3)
    assert not b.full("ep") and b.tracked() == []
    for _ in range(3):
        b.add("ep")
    assert b.full("ep") and b.depth("ep") == 3 and b.tracked() == ["ep"]


def test_backlog_reading_replaces_what_it_includes() -> None:
    b = Backlog(max_queued=10)
    for _ in range(4):
        b.add("ep")
    b.observe("ep", length=9, added_before=4)  # other activators added 5 more
    assert b.depth("ep") == 9
    b.add("ep")
    assert b.full("ep")
    b.observe("ep", length=2, added_before=0)  # drained; our one add is not in this reading
    assert b.depth("ep") == 3 and not b.full("ep")


def test_backlog_queued_counts_only_entries_no_replica_has_taken() -> None:
    b = Backlog(max_queued=10)
    b.add("ep")
    assert (b.depth("ep"), b.queued("ep")) == (1, 0)  # a replica with room takes it at once
    b.observe("ep", length=4, added_before=1, pending=1)  # three wait for room
    assert (b.depth("ep"), b.queued("ep")) == (4, 3)  # new requests join them
    b.add("ep")
    b.observe("ep", length=6, added_before=0, pending=6)  # all running (ours was taken)
    assert (b.depth("ep"), b.queued("ep")) == (7, 0)  # the direct path is open again
    b.observe("ep", length=1, added_before=1, pending=2)  # an entry deleted while pending
    assert b.queued("ep") == 0


def test_backlog_forgets_drained_endpoints() -> None:
    b = Backlog(max_queued=10)
    b.add("ep")
    b.observe("ep", length=0, added_before=1)
    assert b.tracked() == [] and b.observed == {} and "ep" not in b.added


@pytest.mark.parametrize("value", [0, -1, 10_000_001])
def test_max_queued_is_validated(value: int) -> None:
    with pytest.raises(ValueError, match="max_queued"):
        ActivatorSettings(redis_url="redis://x", max_queued=value)


# ---- the SDK's side -------------------------------------------------------------------
@pytest.mark.parametrize("status", [401, 403])
def test_sdk_maps_auth_refusals_to_auth_error(status: int) -> None:
    err = error_from_response(status, b'{"error": "unauthorized", "detail": "send a key"}')
    assert isinstance(err, AuthError) and err.status == status


def test_sdk_sends_the_endpoints_key_and_never_shows_it() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=2)

    client = Client("http://platform", "http://activator", "token")
    client._http = httpx.Client(transport=httpx.MockTransport(handler))
    ep = Endpoint(client, "double", "http://activator/fn/double", ["x"], 60.0, 1, key=KEY.key)
    assert ep(1) == 2
    assert seen[-1].headers["Authorization"] == f"Bearer {KEY.key}"
    assert KEY.key not in repr(ep)
    Endpoint(client, "open", "http://activator/fn/open", ["x"], 60.0, 1)(1)
    assert "Authorization" not in seen[-1].headers


# ---- docker/entrypoint.sh: the platform container gets the digest, never prints the token --
ENTRYPOINT = Path(__file__).resolve().parents[2] / "docker" / "entrypoint.sh"
STUB = """#!/bin/sh
echo "args=$*"
echo "token=${LOWTIDE_TOKEN:-unset}"
echo "sha=${LOWTIDE_TOKEN_SHA256:-unset}"
"""


def run_entrypoint(tmp_path: Path, token: str | None) -> tuple[str, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "lowtide").write_text(STUB)
    (bin_dir / "lowtide").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin",
           "LOWTIDE_HOME": str(tmp_path)}
    if token is not None:
        env["LOWTIDE_TOKEN"] = token
    done = subprocess.run(["sh", str(ENTRYPOINT), "platform"], env=env, capture_output=True,
                          text=True, timeout=30, check=True)
    return done.stdout + done.stderr, tmp_path / "token"


def test_entrypoint_generates_a_token_and_passes_only_its_digest(tmp_path: Path) -> None:
    out, token_file = run_entrypoint(tmp_path, None)
    token = token_file.read_text().strip()
    assert len(token) >= 40 and token not in out
    assert "token=unset" in out and f"sha={token_digest(token)}" in out
    again, _ = run_entrypoint(tmp_path, None)  # a restart keeps the token
    assert token_file.read_text().strip() == token and f"sha={token_digest(token)}" in again


def test_entrypoint_hashes_a_chosen_token(tmp_path: Path) -> None:
    out, token_file = run_entrypoint(tmp_path, "my-chosen-token")
    assert "my-chosen-token" not in out and not token_file.exists()
    assert "token=unset" in out and f"sha={token_digest('my-chosen-token')}" in out
