"""The host's blob cache: least recently used evicted first, never a blob in use, fetched
once, refused when its digest is not the name; models laid out as a BentoML model store."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from lowtide._manifest import Manifest
from lowtide.workers.blobcache import (
    BlobCache,
    BlobFetchError,
    CacheFull,
    Entry,
    choose_evictions,
    lay_out_models,
    use_model_store,
)


def e(name: str, size: int, last_used: float) -> Entry:
    return Entry(name, size, last_used)


@pytest.mark.parametrize(("incoming", "in_use", "evicted"), [
    (10, set(), []),                      # fits: 60 + 10 <= 100
    (50, set(), ["old"]),                 # 110 > 100: the least recently used goes
    (50, {"old"}, ["mid"]),               # ... unless in use: the next one
    (75, set(), ["old", "mid"]),          # as many as needed, oldest first
    (75, {"mid"}, ["old", "new"]),
])
def test_least_recently_used_first_never_one_in_use(incoming: int, in_use: set[str],
                                                     evicted: list[str]) -> None:
    entries = [e("new", 20, 300.0), e("old", 20, 100.0), e("mid", 20, 200.0)]
    assert choose_evictions(entries, incoming, 100, in_use) == evicted


def test_a_blob_that_cannot_fit_beside_those_in_use_names_the_budget() -> None:
    entries = [e("a", 60, 1.0), e("b", 30, 2.0)]
    with pytest.raises(CacheFull, match="budget is 100 bytes and 60 are held"):
        choose_evictions(entries, 50, 100, {"a"})
    with pytest.raises(CacheFull):
        choose_evictions([], 101, 100, set())


class FakePlatform:
    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.fetches: list[str] = []
        self.corrupt = False

    def add(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return digest

    def __call__(self, sha256: str, dest: BinaryIO) -> None:
        self.fetches.append(sha256)
        dest.write(self.blobs[sha256] + (b"!" if self.corrupt else b""))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_fetched_once_then_evicted_least_recently_used_but_not_in_use(tmp_path: Path) -> None:
    platform, clock = FakePlatform(), Clock()
    a, b, c = (platform.add(bytes([i]) * 40) for i in range(3))
    cache = BlobCache(tmp_path, 100, platform, clock)
    cache.acquire("replica-1", [a])
    assert cache.get(a, 40).read_bytes() == bytes([0]) * 40
    clock.now += 1
    cache.get(b, 40)
    clock.now += 1
    cache.get(a, 40)  # from the cache
    assert platform.fetches == [a, b]
    cache.get(c, 40)  # 120 > 100: b goes (a is older but in use)
    assert not cache.path(b).exists() and cache.path(a).exists()
    cache.release("replica-1")
    clock.now += 1
    cache.get(b, 40)  # now a, the least recently used, goes
    assert not cache.path(a).exists()
    assert cache.cached_bytes() == 80
    # a restarted agent finds its cache as it was
    assert BlobCache(tmp_path, 100, platform, clock).cached_bytes() == 80


def test_a_blob_whose_digest_is_not_its_name_is_refused(tmp_path: Path) -> None:
    platform = FakePlatform()
    digest = platform.add(b"weights")
    platform.corrupt = True
    cache = BlobCache(tmp_path, 100, platform)
    with pytest.raises(BlobFetchError, match="refused blob"):
        cache.get(digest, 7)
    assert not cache.path(digest).exists() and cache.cached_bytes() == 0
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.fixture
def bentoml_store(tmp_path: Path) -> Iterator[Path]:
    """BentoML's model store pointed at a temporary folder (the user's local store)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    previous = BentoMLContainer.model_store.get()
    use_model_store(tmp_path / "user-store")
    yield tmp_path / "user-store"
    BentoMLContainer.model_store.set(previous)


def test_an_exported_model_is_found_by_bentoml_in_the_laid_out_store(
        tmp_path: Path, bentoml_store: Path) -> None:
    import bentoml

    from lowtide.sdk._blobs import prepare

    with bentoml.models.create("tiny_clf") as model:
        Path(model.path_of("weights.bin")).write_bytes(b"\x01" * 1000)
        Path(model.path_of("sub")).mkdir()
        Path(model.path_of("sub/vocab.txt")).write_text("a b c")
    manifest, blobs = prepare(b"artifact", ["tiny_clf:latest"])
    assert [m.tag for m in manifest.models] == [str(model.tag)]  # latest resolved
    assert Manifest.from_json(manifest.to_json()) == manifest

    platform = FakePlatform()
    for blob in blobs:
        platform.add(blob.data if blob.data is not None else blob.path.read_bytes())
    cache = BlobCache(tmp_path / "cache", 10**6, platform)
    for digest, size in manifest.blobs().items():
        cache.get(digest, size)
    store = lay_out_models(tmp_path / "replica-store", manifest.models, cache)
    assert lay_out_models(store, manifest.models, cache) == store  # laid out once

    use_model_store(store)
    found = bentoml.models.get("tiny_clf:latest")
    assert found.tag == model.tag
    assert Path(found.path_of("weights.bin")).read_bytes() == b"\x01" * 1000
    assert Path(found.path_of("sub/vocab.txt")).read_text() == "a b c"
    assert [str(m.tag) for m in bentoml.models.list()] == [str(model.tag)]


def test_model_file_digests_are_remembered_across_deploys_until_the_file_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lowtide.sdk import _blobs

    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\x02" * 5000)
    digests = tmp_path / "home" / _blobs.DIGESTS_FILE
    first = _blobs.DigestCache(digests)
    blob = _blobs.file_blob(weights, "w", first)
    first.save()
    assert blob.ref.sha256 == hashlib.sha256(b"\x02" * 5000).hexdigest()

    def no_hashing(f: BinaryIO) -> tuple[str, int]:
        raise AssertionError("hashed again")

    monkeypatch.setattr(_blobs, "sha256_of", no_hashing)
    assert _blobs.file_blob(weights, "w", _blobs.DigestCache(digests)).ref == blob.ref
    monkeypatch.undo()
    weights.write_bytes(b"\x03" * 5000)  # same size, new contents
    assert _blobs.file_blob(weights, "w", _blobs.DigestCache(digests)).ref.sha256 == (
        hashlib.sha256(b"\x03" * 5000).hexdigest())


def test_a_versions_model_store_lives_while_an_owner_holds_it(
        tmp_path: Path, redis_url: str) -> None:
    from redis import Redis

    from lowtide import _keys
    from lowtide._manifest import BlobRef, ModelFile, ModelRef
    from lowtide.workers.blobcache import DeploymentBlobs

    platform = FakePlatform()
    files = {"model.yaml": b"name: m\n", "w.bin": b"\x05" * 100}
    model = ModelRef("m:v1", tuple(ModelFile(p, BlobRef(platform.add(d), len(d)))
                                   for p, d in files.items()))
    manifest = Manifest(BlobRef(platform.add(b"fn"), 2), (model,))
    redis = Redis.from_url(redis_url)
    redis.set(_keys.artifact("layout-test", 1), manifest.to_json())
    try:
        blobs = DeploymentBlobs(redis, tmp_path, 10**6, platform)
        a = blobs.prepare("layout-test", 1, "replica-a")
        b = blobs.prepare("layout-test", 1, "replica-b")
        assert a.model_store == b.model_store and a.model_store is not None
        assert (a.model_store / "m" / "v1" / "w.bin").read_bytes() == files["w.bin"]
        assert (a.model_store / "m" / "latest").read_text() == "v1"
        blobs.release("replica-a")
        assert a.model_store.exists()  # b still uses it
        blobs.release("replica-b")
        assert not a.model_store.exists()
        assert blobs.cache.in_use() == set()
        c = blobs.prepare("layout-test", 1, "replica-c")  # laid out again, nothing fetched
        assert c.model_store is not None and (c.model_store / "m" / "v1" / "w.bin").exists()
        assert len(platform.fetches) == 3
    finally:
        redis.delete(_keys.artifact("layout-test", 1))
        redis.close()
