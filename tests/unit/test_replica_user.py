"""Who replicas run as (`workers.replica_user`): the agent's home made traversable but not
listable with its own files kept private, Bentos made readable, a missing or unusable user
refused when chosen and reported when it is the default."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lowtide.workers import replica_user
from lowtide.workers.replica_user import (
    Identities,
    ReplicaUser,
    make_readable,
    own_copy,
    prepare_home,
)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_the_home_is_reached_by_name_and_the_clusters_files_stay_private(tmp_path: Path
                                                                       ) -> None:
    home = tmp_path / "home"
    (home / "redis").mkdir(parents=True)
    (home / "blobs" / "ab").mkdir(parents=True)  # the platform's store, sharing the home
    (home / "blobs" / "tmp").mkdir()
    (home / "config.json").write_text("{}")
    (home / "config.json").chmod(0o644)
    prepare_home(home)
    assert _mode(home) == 0o711
    assert _mode(home / "config.json") == 0o600
    assert _mode(home / "redis") == 0o700
    assert _mode(home / "blobs") == 0o711  # the blob cache: files by digest
    assert _mode(home / "modelstores") == 0o700  # replicas get copies of theirs
    assert _mode(home / "bentoml" / "bentos") == 0o700
    assert _mode(home / "blobs" / "ab") == 0o700 and _mode(home / "blobs" / "tmp") == 0o700


def test_make_readable_opens_a_bento_tree(tmp_path: Path) -> None:
    bento = tmp_path / "v1"
    (bento / "src").mkdir(parents=True)
    (bento / "src" / "fn.pkl").write_bytes(b"x")
    (bento / "src" / "run.sh").write_text("#!/bin/sh\n")
    (bento / "src" / "run.sh").chmod(0o700)
    bento.chmod(0o700)
    make_readable(bento)
    assert _mode(bento) == 0o755 and _mode(bento / "src") & 0o555 == 0o555
    assert _mode(bento / "src" / "fn.pkl") & 0o444 == 0o444
    assert _mode(bento / "src" / "run.sh") == 0o744  # its execute bit kept, none added


def test_a_replica_user_gets_a_scratch_home_of_its_own(tmp_path: Path) -> None:
    me = ReplicaUser("someone", os.getuid(), os.getgid())
    scratch = me.make_scratch(tmp_path, "abc")
    assert _mode(scratch) == 0o700 and scratch.stat().st_uid == os.getuid()
    assert me.env(scratch)["HOME"] == me.env(scratch)["TMPDIR"] == str(scratch)
    assert me.popen_args() == {"user": os.getuid(), "group": os.getgid(), "extra_groups": []}
    assert ReplicaUser("agent").popen_args() == {} and ReplicaUser("agent").env(scratch) == {}


@pytest.mark.skipif(os.geteuid() != 0, reason="only an agent running as root changes users")
def test_a_chosen_user_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="there is no user 'lowtide-no-such-user'"):
        replica_user.resolve("lowtide-no-such-user", tmp_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="only an agent running as root changes users")
def test_unusable_default_uids_are_reported_and_replicas_run_as_root(tmp_path: Path) -> None:
    user = replica_user.resolve("", tmp_path, python="/nonexistent/python")
    assert (user.name, user.drops) == ("root", False)
    assert "cannot run /nonexistent/python" in user.problem


def test_each_replica_process_of_the_default_user_has_a_uid_of_its_own() -> None:
    base = ReplicaUser("lowtide-replica", replica_user.UID_BASE, 65534, per_process=True)
    first, second = base.for_slot(0), base.for_slot(1)
    assert (first.uid, second.uid) == (replica_user.UID_BASE, replica_user.UID_BASE + 1)
    assert second.popen_args() == {"user": replica_user.UID_BASE + 1, "group": 65534,
                                   "extra_groups": []}
    assert base.for_slot(replica_user.UID_COUNT).uid == replica_user.UID_BASE  # wraps
    named = ReplicaUser("svc", 1234, 1234)
    assert named.for_slot(7) is named  # a chosen user is shared


@pytest.mark.skipif(os.geteuid() != 0, reason="only an agent running as root changes users")
def test_the_probe_says_why_a_user_cannot_run_replicas(tmp_path: Path) -> None:
    nobody = ReplicaUser("nobody", 65534, 65534)
    problem = replica_user.probe(nobody, tmp_path, "/nonexistent/python")
    assert "cannot run /nonexistent/python" in problem


@pytest.mark.skipif(os.geteuid() != 0, reason="chowning to other uids needs root")
def test_identities_give_each_process_a_uid_and_scratch_and_reuse_uids_last(
        tmp_path: Path) -> None:
    base = ReplicaUser("lowtide-replica", replica_user.UID_BASE, 65534, per_process=True)
    identities = Identities(base, tmp_path / "scratch")
    first, second = identities.take(), identities.take()
    assert (first.user.uid, second.user.uid) == (replica_user.UID_BASE,
                                                 replica_user.UID_BASE + 1)
    assert first.scratch.stat().st_uid == replica_user.UID_BASE
    assert first.env()["HOME"] == str(first.scratch) == first.popen_args()["cwd"]
    identities.release(first)
    assert not first.scratch.exists()
    third = identities.take()
    identities.release(first)  # a second release of the same process frees nothing of others
    assert identities._slots == {1, 2} and third.scratch.exists()
    identities.release(third)
    assert third.user.uid == replica_user.UID_BASE + 2  # the freed uid is reused last


def test_a_replica_gets_its_own_copy_of_its_bento_and_model_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "model" / "v1").mkdir(parents=True)
    (tmp_path / "blob").write_text("weights")
    (store / "model" / "v1" / "w.bin").symlink_to(tmp_path / "blob")
    (store / "model" / "latest").write_text("v1")
    store.chmod(0o700)
    me = ReplicaUser("someone", os.getuid(), os.getgid())
    identity = Identities(me, tmp_path / "scratch").take()
    copy = own_copy(store, identity, "models")
    assert copy == identity.scratch / "models" and _mode(identity.scratch) == 0o700
    assert (copy / "model" / "v1" / "w.bin").is_symlink()  # links, not the weights
    assert (copy / "model" / "v1" / "w.bin").read_text() == "weights"
    assert _mode(copy) == 0o755
    assert own_copy(None, identity, "models") == ""
