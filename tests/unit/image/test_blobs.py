from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from frakpy.errors import InvalidArgument
from frakpy.image.blobs import BlobStore, DigestMismatch


async def _chunks(*parts: bytes):
    for p in parts:
        yield p


def _d(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def test_ingest_verifies_and_stores(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    seen: list[int] = []
    digest, size = await store.ingest(_chunks(b"hello ", b"world"), _d(b"hello world"), 11, progress=seen.append)
    assert digest == _d(b"hello world") and size == 11 and seen == [6, 5]
    assert store.has(digest) and store.read(digest) == b"hello world"
    assert store.path(digest).stat().st_mode & 0o777 == 0o444


@pytest.mark.parametrize(
    ("parts", "size", "match"),
    [
        ((b"hello ", b"wurld"), 11, "failed verification"),
        ((b"hello",), 11, "got 5 bytes"),
        ((b"hello world!!",), 11, "longer than"),
    ],
)
async def test_mismatch_leaves_nothing(tmp_path: Path, parts, size, match) -> None:
    store = BlobStore(tmp_path)
    with pytest.raises(DigestMismatch, match=match):
        await store.ingest(_chunks(*parts), _d(b"hello world"), size, source="test")
    assert list(store.dir.iterdir()) == []


async def test_failing_stream_removes_temp(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)

    async def broken():
        yield b"abc"
        raise ConnectionError("cut")

    with pytest.raises(ConnectionError):
        await store.ingest(broken(), _d(b"abcdef"), 6)
    assert list(store.dir.iterdir()) == []


def test_bad_digests_and_gc(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    for bad in ("sha256:../../etc", "md5:abc", "sha256:" + "A" * 64, ""):
        with pytest.raises(InvalidArgument):
            store.path(bad)
    a = store.put_bytes(b"a")
    b = store.put_bytes(b"b")
    (store.dir / ".ingest-stale").write_bytes(b"x")
    assert store.gc({a}) == (1, 1)
    assert store.has(a) and not store.has(b)
    BlobStore(tmp_path)  # reopening removes stale temporaries
    assert sorted(p.name for p in store.dir.iterdir()) == [a.split(":")[1]]
    with pytest.raises(DigestMismatch):
        store.put_bytes(b"c", _d(b"d"))
