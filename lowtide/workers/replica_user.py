"""The OS user replicas run as: unprivileged where the agent runs as root.

User code must not read what the agent can (the cluster's config file with its token and
Redis password, other endpoints' files), so an agent running as root starts every replica,
pool workers included, as `--replica-user` (LOWTIDE_REPLICA_USER, default `nobody`), with no
supplementary groups, its HOME and TMPDIR a scratch directory of its own (mode 0700, removed
when it exits). The agent's home becomes traversable but not listable (0711) so that the
replica reaches what it needs there by name (its artifact and models in the blob cache, its
Bento); what the cluster keeps there for itself stays the agent's alone (config.json 0600,
the embedded Redis's directory 0700, the platform's blob store 0700).

Before it serves, the agent checks that the user can run its Python with lowtide importable
and reach its home. When the user was not chosen (the default) and cannot, the agent logs
why at ERROR and runs replicas as itself (the host's `replica_user` says so); a chosen user
that cannot is refused (the agent exits). An agent that is not root runs replicas as itself.
"""

from __future__ import annotations

import getpass
import logging
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_USER = "nobody"
PROBE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ReplicaUser:
    name: str
    uid: int | None = None  # None: the agent's own user (nothing to change)
    gid: int | None = None
    problem: str = ""  # why the default user is not used

    @property
    def drops(self) -> bool:
        return self.uid is not None

    def popen_args(self) -> dict[str, object]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def env(self, scratch: Path) -> dict[str, str]:
        """HOME, TMPDIR and the user's names for a process that runs as this user."""
        if self.uid is None:
            return {}
        return {"HOME": str(scratch), "TMPDIR": str(scratch), "USER": self.name,
                "LOGNAME": self.name, "XDG_CACHE_HOME": str(scratch / ".cache")}

    def make_scratch(self, root: Path, name: str) -> Path:
        """A directory only this user (and root) can read: the replica's HOME and TMPDIR."""
        path = root / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(mode=0o700, parents=True)
        if self.uid is not None:
            os.chown(path, self.uid, self.gid if self.gid is not None else -1)
        return path


def resolve(requested: str, home: Path, python: str = sys.executable) -> ReplicaUser:
    """The user replicas run as (see the module docstring); ValueError (a setting to fix) for
    a chosen user that cannot run them."""
    if os.geteuid() != 0:
        return ReplicaUser(getpass.getuser())
    name = requested or DEFAULT_USER
    if name == "root":
        log.warning("--replica-user root: user code runs as root, with access to everything "
                    "the agent can read")
        return ReplicaUser("root")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        problem = f"there is no user {name!r} on this host"
    else:
        if entry.pw_uid == 0:
            return ReplicaUser(name)
        user = ReplicaUser(name, entry.pw_uid, entry.pw_gid)
        prepare_home(home)
        problem = probe(user, home, python)
        if not problem:
            log.info("replicas run as %s (uid %d)", name, entry.pw_uid)
            return user
    if requested:
        raise ValueError(f"replicas cannot run as --replica-user {name}: {problem}")
    log.error("replicas run as root, not as %s: %s. User code can then read the cluster's "
              "config and every endpoint's files; install Python and lowtide where %s can "
              "read them (not under a 0700 home such as /root) and keep the agent's --home "
              "reachable, or pass --replica-user", name, problem, name)
    return ReplicaUser("root", problem=problem)


def prepare_home(home: Path) -> None:
    """Traversable, not listable: replicas reach their files by name; the cluster's own
    files in it stay the agent's."""
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o711)
    for private in ("config.json", "config.tmp"):
        if (home / private).exists():
            (home / private).chmod(0o600)
    if (home / "redis").is_dir():  # the embedded Redis's data
        (home / "redis").chmod(0o700)
    for shared in ("blobs", "modelstores"):  # the agent's blob cache (flat files named by
        (home / shared).mkdir(exist_ok=True)  # digest), the platform's store if it shares
        (home / shared).chmod(0o711)  # the home (`lowtide up`): reached by name only
    for sub in (home / "blobs").iterdir():  # the store's lists and partial files: not theirs
        if sub.is_dir() and (len(sub.name) == 2 or sub.name == "tmp"):
            sub.chmod(0o700)


def make_readable(root: Path) -> None:
    """Let replicas read a tree the agent made (a built Bento: BentoML writes it 0700)."""
    for dirpath, _dirs, files in os.walk(root):
        os.chmod(dirpath, os.stat(dirpath).st_mode | 0o555)
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, os.stat(path).st_mode | 0o444)


def probe(user: ReplicaUser, home: Path, python: str) -> str:
    """'' when `user` can run `python` with lowtide importable and reach `home`."""
    check = ("import os, sys, lowtide.workers.service; "
             "os.stat(sys.argv[1])")  # traverse the home
    try:
        done = subprocess.run(
            [python, "-c", check, str(home)], cwd="/", capture_output=True, text=True,
            timeout=PROBE_TIMEOUT_S, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                           "HOME": "/", "PYTHONNOUSERSITE": "1"},
            **user.popen_args())  # type: ignore[call-overload]
    except (OSError, subprocess.SubprocessError) as exc:
        return f"it cannot run {python} ({type(exc).__name__}: {exc})"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return f"it cannot run lowtide with {python} ({last})"
    return ""
