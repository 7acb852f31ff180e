"""The `lowtide` argument parser: every command documents itself, env values become defaults,
bad values are clean argparse errors (exit status 2), never tracebacks."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from lowtide.cli import COMMANDS, build_parser


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A hermetic environment: nothing from the developer's shell leaks into defaults."""
    return {"LOWTIDE_HOME": str(tmp_path / "home")}


def parse(env: dict[str, str], *argv: str) -> argparse.Namespace:
    return build_parser(env).parse_args(list(argv))


def exit_code(env: dict[str, str], *argv: str) -> int | str | None:
    with pytest.raises(SystemExit) as exc:
        parse(env, *argv)
    return exc.value.code


# ---- --help ---------------------------------------------------------------------------
def test_top_level_help_lists_every_command(env: dict[str, str],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(env, "--help") == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: lowtide ")
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(env: dict[str, str], command: str,
                                capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(env, command, "--help") == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"usage: lowtide {command}")
    assert captured.err == ""


def test_unknown_command_is_a_usage_error(env: dict[str, str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(env, "launch") == 2
    assert "invalid choice: 'launch'" in capsys.readouterr().err


# ---- defaults from LOWTIDE_* -----------------------------------------------------------
def test_up_port_defaults(env: dict[str, str]) -> None:
    args = parse(env, "up")
    assert (args.activator_port, args.platform_port) == (8080, 8081)


def test_up_ports_from_env(env: dict[str, str]) -> None:
    env.update(LOWTIDE_ACTIVATOR_PORT="9080", LOWTIDE_PLATFORM_PORT="9081")
    args = parse(env, "up")
    assert (args.activator_port, args.platform_port) == (9080, 9081)


def test_flags_beat_env(env: dict[str, str]) -> None:
    env.update(LOWTIDE_ACTIVATOR_PORT="9080", LOWTIDE_PLATFORM_PORT="9081")
    args = parse(env, "up", "--activator-port", "7000", "--platform-port", "0")
    assert (args.activator_port, args.platform_port) == (7000, 0)


@pytest.mark.parametrize(
    ("command", "var", "value"),
    [("platform", "LOWTIDE_PLATFORM_PORT", "9081"),
     ("activator", "LOWTIDE_ACTIVATOR_PORT", "9080"),
     ("agent", "LOWTIDE_AGENT_PORT", "9082")],
)
def test_component_port_from_env(env: dict[str, str], command: str, var: str,
                                 value: str) -> None:
    env[var] = value
    assert parse(env, command).port == int(value)


def test_empty_env_value_means_unset(env: dict[str, str]) -> None:
    env.update(LOWTIDE_ACTIVATOR_PORT="", LOWTIDE_PLATFORM_PORT="")
    args = parse(env, "up")
    assert (args.activator_port, args.platform_port) == (8080, 8081)


def test_up_home_and_redis_from_env(env: dict[str, str]) -> None:
    env["REDIS_URL"] = "redis://elsewhere:6379/0"
    args = parse(env, "up")
    assert args.home == env["LOWTIDE_HOME"]
    assert args.redis_url == "redis://elsewhere:6379/0"
    env["LOWTIDE_REDIS_URL"] = "redis://preferred:6379/0"
    assert parse(env, "up").redis_url == "redis://preferred:6379/0"


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("30", 30.0), ("0", 0.0)])
def test_keep_alive_from_env(env: dict[str, str], value: str | None,
                             expected: float | None) -> None:
    if value is not None:
        env["LOWTIDE_KEEP_ALIVE_S"] = value
    assert parse(env, "up").keep_alive == expected


# ---- bad values: clean argparse errors --------------------------------------------------
@pytest.mark.parametrize("value", ["99999", "65536", "-1", "abc", "80.5", ""])
@pytest.mark.parametrize(
    ("command", "flag"),
    [("up", "--activator-port"), ("up", "--platform-port"), ("platform", "--port"),
     ("activator", "--port"), ("agent", "--port")],
)
def test_invalid_port_flag_is_a_usage_error(env: dict[str, str], command: str, flag: str,
                                            value: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(env, command, f"{flag}={value}") == 2
    err = capsys.readouterr().err
    assert f"usage: lowtide {command}" in err
    assert f"argument {flag}:" in err


@pytest.mark.parametrize("value", ["-1", "abc"])
def test_invalid_keep_alive_is_a_usage_error(env: dict[str, str], value: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(env, "up", f"--keep-alive={value}") == 2
    assert "argument --keep-alive:" in capsys.readouterr().err


def test_invalid_keep_alive_env_is_a_usage_error(env: dict[str, str],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    env["LOWTIDE_KEEP_ALIVE_S"] = "soon"
    assert exit_code(env, "up") == 2
    assert "'soon' is not a number" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("var", "value", "command"),
    [
        ("LOWTIDE_ACTIVATOR_PORT", "99999", "up"),
        ("LOWTIDE_ACTIVATOR_PORT", "abc", "up"),
        ("LOWTIDE_PLATFORM_PORT", "99999", "up"),
        ("LOWTIDE_PLATFORM_PORT", "abc", "platform"),
        ("LOWTIDE_AGENT_PORT", "70000", "agent"),
        ("LOWTIDE_MAX_BODY_BYTES", "10MiB", "activator"),
        ("LOWTIDE_ACTIVATOR_WORKERS", "many", "activator"),
        ("LOWTIDE_MAX_QUEUE_WAIT_S", "later", "activator"),
    ],
)
def test_invalid_env_value_is_a_usage_error(env: dict[str, str], var: str, value: str,
                                            command: str) -> None:
    env[var] = value
    assert exit_code(env, command) == 2


def test_negative_max_queue_wait_env_is_a_usage_error(env: dict[str, str]) -> None:
    env["LOWTIDE_MAX_QUEUE_WAIT_S"] = "-5"
    assert exit_code(env, "activator") == 2


def test_max_queue_wait_flag_is_checked(env: dict[str, str]) -> None:
    assert parse(env, "activator").max_queue_wait == 120.0
    assert parse(env, "activator", "--max-queue-wait", "2.5").max_queue_wait == 2.5
    assert exit_code(env, "activator", "--max-queue-wait", "-5") == 2


def test_invalid_port_env_does_not_break_unrelated_commands(env: dict[str, str]) -> None:
    env["LOWTIDE_ACTIVATOR_PORT"] = "abc"
    assert parse(env, "ls").command == "ls"


# ---- user commands --------------------------------------------------------------------
def test_deploy_arguments(env: dict[str, str]) -> None:
    args = parse(env, "deploy", "app:predict", "--memory", "2Gi", "-r", "numpy",
                 "-r", "pillow>=10", "--max-replicas", "3", "--wait")
    assert (args.command, args.target, args.memory) == ("deploy", "app:predict", "2Gi")
    assert args.requirements == ["numpy", "pillow>=10"]
    assert (args.min_replicas, args.max_replicas, args.wait) == (0, 3, True)


def test_invoke_defaults_to_an_empty_object(env: dict[str, str]) -> None:
    args = parse(env, "invoke", "double")
    assert (args.name, args.payload, args.is_async) == ("double", "{}", False)
    assert parse(env, "invoke", "double", '{"x": 1}', "--async").is_async is True


def test_keep_alive_bin_defaults_to_a_minute_and_reads_the_env(env: dict[str, str]) -> None:
    assert parse(env, "platform").keep_alive_bin == 60.0
    env["LOWTIDE_KEEP_ALIVE_BIN_S"] = "1.5"
    assert parse(env, "platform").keep_alive_bin == 1.5
