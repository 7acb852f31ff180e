from lowtide.workers.replica_log import LogFilter, exit_line, is_chatter, load_failed

PFX = "2026-12-01T12:35:39+0000 [INFO] [entry_service:lowtide-worker:1] "
ERR = "2026-12-01T12:35:39+0000 [ERROR] [entry_service:lowtide-worker:1] "


def run(lines: list[str]) -> list[str]:
    f = LogFilter()
    out = [kept for line in lines for kept in f.feed(line)]
    return out + f.flush()


def test_hook_chatter_is_dropped_and_user_lines_kept() -> None:
    lines = [PFX + "Running cleanup hook: _stop", PFX + "Completed async cleanup hook: _stop",
             PFX + "Service instance cleanup finalized", PFX + "Running startup hook: _start",
             "hello from the function", PFX + "something else BentoML says"]
    assert run(lines) == ["hello from the function", PFX + "something else BentoML says"]
    assert not is_chatter("Running cleanup hook: _stop")  # user output that looks alike


def test_a_repeated_traceback_block_is_dropped() -> None:
    block = [ERR + "Traceback (most recent call last):", '  File "x.py", line 1, in f',
             "ZeroDivisionError: division by zero", ""]
    failed = ERR + "Application startup failed. Exiting."
    out = run(["[lowtide] the function cannot be loaded: ZeroDivisionError", *block, *block,
               failed, failed])
    assert out == ["[lowtide] the function cannot be loaded: ZeroDivisionError", *block[:3]]


def test_an_unfinished_block_is_flushed() -> None:
    assert run([ERR + "Traceback (most recent call last):", "  boom"]) == [
        ERR + "Traceback (most recent call last):", "  boom"]


def test_exit_line_names_a_load_failure() -> None:
    assert load_failed(["x", "[lowtide] the replica cannot start: X"])
    assert not load_failed(["x"])
    assert "could not be loaded" in exit_line(0, True)
    assert exit_line(0, False) == "[lowtide] replica exited unexpectedly with code 0"
    assert exit_line(-9, False).endswith("code -9")


def test_log_waits_are_split_below_the_socket_timeout() -> None:
    from lowtide.platform.logs import block_slices_ms

    assert block_slices_ms(0, 2500) == []
    assert block_slices_ms(2000, 2500) == [2000]
    assert block_slices_ms(6000, 2500) == [2500, 2500, 1000]


def test_after_ids_are_checked_before_redis_sees_them() -> None:
    import pytest

    from lowtide.platform.logs import BadLogId, check_after

    assert check_after("1796123986032-1") == "1796123986032-1"
    for bad in ("$", "abc", "1-2-3", "", "1796123986032-1 "):
        with pytest.raises(BadLogId, match="'next'"):
            check_after(bad)


def test_remote_tracebacks_are_bounded_head_and_tail() -> None:
    from lowtide.workers.tracebacks import bound_text, format_remote

    text = "A" * 5000 + "Z" * 5000
    cut = bound_text(text, 1000)
    assert len(cut) == 1000 and cut.startswith("A") and cut.endswith("Z")
    assert "characters cut" in cut
    assert bound_text("short", 1000) == "short"

    def recurse(n: int) -> int:
        return recurse(n + 1)

    try:
        recurse(0)
    except RecursionError as exc:
        remote = format_remote(exc, limit=4000)
    assert len(remote) <= 4000 and remote.endswith("maximum recursion depth exceeded")


def test_function_error_shows_the_remote_traceback() -> None:
    from lowtide import FunctionError
    from lowtide.workers.runtime import raised

    def inner() -> None:
        raise KeyError("missing")

    try:
        inner()
    except KeyError as exc:
        result = raised(exc)
    import json

    err = FunctionError(500, "function raised", "KeyError: 'missing'", json.loads(result.body))
    shown = str(err)
    assert shown.startswith("500 function raised: KeyError: 'missing'")
    assert "Remote traceback" in shown and "in inner" in shown
    assert err.traceback.endswith("KeyError: 'missing'")


def test_replica_env_merges_secrets_over_env_and_lists_what_to_redact() -> None:
    from lowtide.workers.user_env import SECRET_KEYS_ENV, redact, replica_env, secret_values

    env, hidden = replica_env({"MODE": "fast", "TOKEN": "plain"},
                              [{"TOKEN": "hf_abcdef"}, {"DB": "pw-123456", "N": "1"}])
    assert env["TOKEN"] == "hf_abcdef" and env["MODE"] == "fast"
    assert env[SECRET_KEYS_ENV] == "DB,N,TOKEN"
    assert set(hidden) == {"hf_abcdef", "pw-123456"}  # "1" is too short to redact
    assert secret_values(env) == hidden or set(secret_values(env)) == set(hidden)
    assert redact("token hf_abcdef, db pw-123456", hidden) == "token [secret], db [secret]"
