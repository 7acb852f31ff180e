"""The OS users replicas run as: unprivileged where the agent runs as root.

User code must not read what the agent can (the cluster's config file with its token and
Redis password, other endpoints' files and processes), so an agent running as root starts
every replica process, pool workers included, as an unprivileged uid: by default one of its
own (UID_BASE + a slot, no passwd entry, nobody's group), so replicas cannot signal, trace
or read one another either; or, with `--replica-user USER` (LOWTIDE_REPLICA_USER), that one
user for all. No supplementary groups; HOME, TMPDIR and the working directory are a scratch
directory of its own (mode 0700, removed when it exits). The agent's home becomes
traversable but not listable (0711) so that the replica reaches what it needs there by name
(its artifact and models in the blob cache, its Bento); what the cluster keeps there for
itself stays the agent's alone (config.json 0600, the embedded Redis's directory 0700, the
platform's blob store lists 0700).

Before it serves, the agent checks that the uid can run its Python with lowtide importable
and reach its home. A chosen user that cannot is refused (the agent exits); when the
default cannot, the agent logs why at ERROR and runs replicas as itself (the host's
`replica_user` says so). An agent that is not root runs replicas as itself.
"""

from __future__ import annotations

import getpass
import logging
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path

log = logging.getLogger(__name__)

# By default each replica process (pool workers included) gets a uid of its own, with no
# passwd entry, as systemd's DynamicUser does: replicas then cannot signal, trace or read
# one another (processes, scratch directories) whatever they run. Group: nobody's.
DYNAMIC_NAME = "lowtide-replica"
UID_BASE = 1_900_000_000  # under 2**31 (some tools read uids as signed), far from real users
UID_COUNT = 65_536
PROBE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ReplicaUser:
    name: str
    uid: int | None = None  # None: the agent's own user (nothing to change)
    gid: int | None = None
    problem: str = ""  # why the default user is not used
    per_process: bool = False  # uid is the first of UID_COUNT, one per process (`for_slot`)

    @property
    def drops(self) -> bool:
        return self.uid is not None

    def for_slot(self, slot: int) -> ReplicaUser:
        """The user of one replica process (the same user unless per_process)."""
        if not self.per_process or self.uid is None:
            return self
        return replace(self, uid=self.uid + slot % UID_COUNT, per_process=False)

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


@dataclass(frozen=True)
class Identity:
    """Who one replica process runs as, and where: its scratch directory (HOME, TMPDIR and
    working directory) and its uid's slot (of a per-process user)."""

    user: ReplicaUser
    scratch: Path
    slot: int | None = None

    def popen_args(self) -> dict[str, object]:
        return {"cwd": str(self.scratch), **self.user.popen_args()}

    def env(self) -> dict[str, str]:
        return self.user.env(self.scratch)


class Identities:
    """The identities of one host's replica processes. Slots go round robin, so a freed uid
    is the last to be used again (a straggler of an old replica's group never shares it)."""

    def __init__(self, user: ReplicaUser, scratch_root: Path) -> None:
        self.user = user  # the agent sets it (`resolve`) before the first start
        self.scratch_root = scratch_root
        self._lock = threading.Lock()
        self._slots: set[int] = set()
        self._next = 0
        self._live: set[Path] = set()  # scratch directories not yet released

    def take(self) -> Identity:
        slot = self._take_slot() if self.user.per_process else None
        user = self.user.for_slot(slot) if slot is not None else self.user
        try:
            self.scratch_root.mkdir(mode=0o711, parents=True, exist_ok=True)
            scratch = user.make_scratch(self.scratch_root, secrets.token_hex(8))
        except BaseException:
            self._free(slot)
            raise
        with self._lock:
            self._live.add(scratch)
        return Identity(user, scratch, slot)

    def release(self, identity: Identity | None) -> None:
        """When its process is gone (or never started); once (a second call does nothing)."""
        if identity is None:
            return
        with self._lock:
            if identity.scratch not in self._live:
                return
            self._live.discard(identity.scratch)
        shutil.rmtree(identity.scratch, ignore_errors=True)
        self._free(identity.slot)

    def _take_slot(self) -> int:
        with self._lock:
            if len(self._slots) >= UID_COUNT:
                raise RuntimeError(f"all {UID_COUNT} replica uids of this host are in use")
            while self._next in self._slots:
                self._next = (self._next + 1) % UID_COUNT
            slot = self._next
            self._slots.add(slot)
            self._next = (slot + 1) % UID_COUNT
        return slot

    def _free(self, slot: int | None) -> None:
        if slot is not None:
            with self._lock:
                self._slots.discard(slot)


def resolve(requested: str, home: Path, python: str = sys.executable) -> ReplicaUser:
    """The user replicas run as (see the module docstring); ValueError (a setting to fix) for
    a chosen user that cannot run them."""
    if os.geteuid() != 0:
        return ReplicaUser(getpass.getuser())
    if requested == "root":
        log.warning("--replica-user root: user code runs as root, with access to everything "
                    "the agent can read")
        return ReplicaUser("root")
    if requested:
        try:
            entry = pwd.getpwnam(requested)
        except KeyError:
            raise ValueError(f"replicas cannot run as --replica-user {requested}: there is no "
                             f"user {requested!r} on this host") from None
        if entry.pw_uid == 0:
            return ReplicaUser(requested)
        user = ReplicaUser(requested, entry.pw_uid, entry.pw_gid)
    else:
        user = ReplicaUser(DYNAMIC_NAME, UID_BASE, _nobody_gid(), per_process=True)
    prepare_home(home)
    problem = probe(user, home, python)
    if not problem:
        log.info("replicas run as %s (uid %d%s)", user.name, user.uid,
                 f" + one per process, up to {UID_COUNT}" if user.per_process else "")
        return user
    if requested:
        raise ValueError(f"replicas cannot run as --replica-user {requested}: {problem}")
    log.error("replicas run as root, not as unprivileged uids: %s. User code can then read "
              "the cluster's config and every endpoint's files; install Python and lowtide "
              "where any user can read them (not under a 0700 home such as /root) and keep "
              "the agent's --home reachable, or pass --replica-user", problem)
    return ReplicaUser("root", problem=problem)


def _nobody_gid() -> int:
    try:
        return pwd.getpwnam("nobody").pw_gid
    except KeyError:
        return 65534


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
    (home / "blobs").mkdir(exist_ok=True)  # the agent's blob cache (flat files named by
    (home / "blobs").chmod(0o711)  # digest), the platform's store if it shares the home
    for private in ("modelstores", "bentoml/bentos"):  # replicas get copies (`own_copy`)
        (home / private).mkdir(parents=True, exist_ok=True)
        (home / private).chmod(0o700)
    for sub in (home / "blobs").iterdir():  # the store's lists and partial files: not theirs
        if sub.is_dir() and (len(sub.name) == 2 or sub.name == "tmp"):
            sub.chmod(0o700)


def own_copy(source: Path | None, identity: Identity | None, name: str) -> Path | str:
    """A copy of `source` in the process's scratch directory, where no other replica can
    reach it: its Bento (BentoML keeps the store's 0700), its model store (links into the
    blob cache, whose files are named by digest). "" for no source."""
    if source is None:
        return ""
    if identity is None:  # not started by the supervisor (nothing to hide it from)
        return source
    dest = identity.scratch / name
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(source, dest, symlinks=True)
    make_readable(dest)  # the agent's copy: readable by the uid that alone reaches it
    return dest


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
