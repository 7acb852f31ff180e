"""LOWTIDE_HOME and the order in which settings are resolved."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from lowtide._home import (
    CONFIG_FILE,
    DEFAULT_ACTIVATOR_URL,
    DEFAULT_PLATFORM_URL,
    ClusterConfig,
    home_dir,
    resolve,
)

SAVED = ClusterConfig(platform_url="http://saved:1", activator_url="http://saved:2",
                      token="saved-token", redis_url="redis://saved:6379/0")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


# ---- resolve: explicit > LOWTIDE_* > LOWTIDE_HOME/config.json > defaults --------------
FULL_ENV = {"LOWTIDE_PLATFORM_URL": "http://env:1", "LOWTIDE_ACTIVATOR_URL": "http://env:2",
            "LOWTIDE_TOKEN": "env-token"}
EXPLICIT = {"platform_url": "http://arg:1", "activator_url": "http://arg:2", "token": "arg-token"}


@pytest.mark.parametrize(
    ("explicit", "env", "saved", "expected"),
    [
        pytest.param({}, {}, False,
                     ClusterConfig(DEFAULT_PLATFORM_URL, DEFAULT_ACTIVATOR_URL, "", ""),
                     id="defaults"),
        pytest.param({}, {}, True, SAVED, id="saved"),
        pytest.param({}, FULL_ENV, True,
                     ClusterConfig("http://env:1", "http://env:2", "env-token", SAVED.redis_url),
                     id="env-beats-saved"),
        pytest.param(EXPLICIT, FULL_ENV, True,
                     ClusterConfig("http://arg:1", "http://arg:2", "arg-token", SAVED.redis_url),
                     id="explicit-beats-env"),
        pytest.param({"token": "arg-token"}, {"LOWTIDE_PLATFORM_URL": "http://env:1"}, True,
                     ClusterConfig("http://env:1", SAVED.activator_url, "arg-token",
                                   SAVED.redis_url),
                     id="each-value-on-its-own"),
        pytest.param({}, {"LOWTIDE_TOKEN": ""}, True, SAVED, id="empty-env-is-unset"),
        pytest.param({"token": ""}, {}, True, SAVED, id="empty-explicit-is-unset"),
        pytest.param({"platform_url": "http://arg:1/"}, {"LOWTIDE_ACTIVATOR_URL": "http://e/"},
                     False, ClusterConfig("http://arg:1", "http://e", "", ""),
                     id="trailing-slash-dropped"),
    ],
)
def test_resolve(home: Path, explicit: dict[str, str], env: dict[str, str], saved: bool,
                 expected: ClusterConfig) -> None:
    if saved:
        SAVED.write(home)
    environ = {"LOWTIDE_HOME": str(home), **env}
    assert resolve(**explicit, environ=environ) == expected


def test_resolve_reads_only_the_environ_it_is_given(home: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOWTIDE_TOKEN", "from-process-env")
    assert resolve(environ={"LOWTIDE_HOME": str(home)}).token == ""


def test_home_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert home_dir({"LOWTIDE_HOME": "/x/y"}) == Path("/x/y")
    assert home_dir({"LOWTIDE_HOME": "~/lt"}) == tmp_path / "lt"
    assert home_dir({}) == tmp_path / ".lowtide"
    assert home_dir({"LOWTIDE_HOME": ""}) == tmp_path / ".lowtide"


# ---- ClusterConfig.write / read ---------------------------------------------------------
def test_write_creates_a_private_file_and_read_round_trips(home: Path) -> None:
    path = SAVED.write(home)
    assert path == home / CONFIG_FILE
    assert mode(path) == 0o600
    assert ClusterConfig.read(home) == SAVED
    assert not (home / "config.tmp").exists()


def test_write_replaces_a_readable_file_with_a_private_one(home: Path) -> None:
    home.mkdir()
    (home / CONFIG_FILE).write_text("{}")
    (home / CONFIG_FILE).chmod(0o644)
    SAVED.write(home)
    assert mode(home / CONFIG_FILE) == 0o600
    assert ClusterConfig.read(home) == SAVED


def test_write_is_private_even_over_a_stale_tmp_file(home: Path) -> None:
    home.mkdir()
    (home / "config.tmp").write_text("left over from a crash")
    (home / "config.tmp").chmod(0o644)
    SAVED.write(home)
    assert mode(home / CONFIG_FILE) == 0o600


def test_read_ignores_unknown_keys(home: Path) -> None:
    home.mkdir()
    (home / CONFIG_FILE).write_text(json.dumps({"token": "t", "added_later": 1}))
    assert ClusterConfig.read(home) == ClusterConfig(token="t")


def test_read_missing_home_or_file(tmp_path: Path) -> None:
    assert ClusterConfig.read(tmp_path / "nowhere") is None
    assert ClusterConfig.read(tmp_path) is None


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"not json", b'{"token": "t"', b"\xff\xfe\x00"],
    ids=["empty", "truncated", "text", "unclosed", "binary"],
)
def test_read_corrupt_file_is_none(home: Path, content: bytes) -> None:
    home.mkdir()
    (home / CONFIG_FILE).write_bytes(content)
    assert ClusterConfig.read(home) is None


def test_read_a_directory_in_place_of_the_file_is_none(home: Path) -> None:
    (home / CONFIG_FILE).mkdir(parents=True)
    assert ClusterConfig.read(home) is None


@pytest.mark.parametrize("content", [b"[]", b"null", b'"token"', b"42"])
def test_read_json_that_is_not_an_object_is_none(home: Path, content: bytes) -> None:
    home.mkdir()
    (home / CONFIG_FILE).write_bytes(content)
    assert ClusterConfig.read(home) is None
