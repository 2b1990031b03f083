"""Resumed blob downloads (HTTP Range) and AuthConfig.server_address scoping, on httpx.MockTransport."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from frakpy.errors import Unauthenticated, Unavailable
from frakpy.image.blobs import PARTIAL_MAX_AGE_S, BlobStore, DigestMismatch
from frakpy.image.reference import parse
from frakpy.image.registry import (
    MT_DOCKER_MANIFEST,
    Credentials,
    Endpoint,
    PullConfig,
    RegistryClient,
    RegistryConfig,
    normalize_registry_host,
)


def _d(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


LAYER = os.urandom(256 * 1024)
CONFIG = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"diff_ids": [_d(b"x")]}}).encode()
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": MT_DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": _d(CONFIG), "size": 1},
        "layers": [
            {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": _d(LAYER), "size": len(LAYER)}
        ],
    }
).encode()


class _Cut(httpx.AsyncByteStream):
    """A body that sends ``data`` in 16 KiB pieces and fails after ``cut_at`` bytes."""

    def __init__(self, data: bytes, cut_at: int | None, sent: list[int]) -> None:
        self.data, self.cut_at, self.sent = data, cut_at, sent

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self.data), 16384):
            piece = self.data[i : i + 16384]
            if self.cut_at is not None and i + len(piece) > self.cut_at:
                raise httpx.ReadError("connection reset by peer")
            self.sent.append(len(piece))
            yield piece


class FakeRegistry:
    """Serves MANIFEST, CONFIG and LAYER; honours Range unless ``ranges`` is off; can cut the layer."""

    def __init__(self, *, ranges: bool = True) -> None:
        self.ranges = ranges
        self.cut_at: int | None = None
        self.sent: list[int] = []
        self.range_headers: list[str | None] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if "/manifests/" in request.url.path:
            return httpx.Response(200, content=MANIFEST, headers={"Content-Type": MT_DOCKER_MANIFEST})
        if request.url.path.endswith(_d(CONFIG)):
            return httpx.Response(200, content=CONFIG)
        assert request.url.path.endswith(_d(LAYER))
        rng = request.headers.get("range")
        self.range_headers.append(rng)
        cut, self.cut_at = self.cut_at, None
        if rng and self.ranges:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            if start >= len(LAYER):
                return httpx.Response(416)
            body = LAYER[start:]
            headers = {
                "Content-Range": f"bytes {start}-{len(LAYER) - 1}/{len(LAYER)}",
                "Content-Length": str(len(body)),
            }
            return httpx.Response(206, stream=_Cut(body, cut, self.sent), headers=headers)
        return httpx.Response(200, stream=_Cut(LAYER, cut, self.sent), headers={"Content-Length": str(len(LAYER))})


def _client(handler, config: PullConfig | None = None) -> RegistryClient:
    async def no_sleep(_s: float) -> None:
        return None

    config = config or PullConfig(registries=[RegistryConfig(name="reg.test")], retries=0)
    return RegistryClient(config, transport=httpx.MockTransport(handler), sleep=no_sleep)


async def test_interrupted_download_resumes_with_range(tmp_path: Path) -> None:
    reg = FakeRegistry()
    client = _client(reg)
    store = BlobStore(tmp_path)
    resolved = await client.resolve(parse("reg.test/app:1"))
    layer = resolved.layers[0]
    reg.cut_at = 100 * 1024
    with pytest.raises(Unavailable, match="kept to resume"):
        await client.fetch_blob(resolved, Credentials(), layer, store)
    kept = store.partial_path(_d(LAYER)).stat().st_size
    assert 0 < kept <= 100 * 1024 and not store.has(_d(LAYER))

    # a new store object (as after a daemon restart) keeps fresh partials
    store = BlobStore(tmp_path)
    reg.sent.clear()
    seen: list[tuple[int, bool]] = []
    await client.fetch_blob(resolved, Credentials(), layer, store, progress=lambda n, r=False: seen.append((n, r)))
    assert store.read(_d(LAYER)) == LAYER
    assert reg.range_headers[-1] == f"bytes={kept}-"
    assert sum(reg.sent) == len(LAYER) - kept
    assert seen[0] == (kept, True) and seen[-1] == (len(LAYER), False)
    assert list(store.partials()) == []


async def test_retry_within_one_fetch_resumes(tmp_path: Path) -> None:
    reg = FakeRegistry()
    client = _client(reg, PullConfig(registries=[RegistryConfig(name="reg.test")], retries=2))
    store = BlobStore(tmp_path)
    resolved = await client.resolve(parse("reg.test/app:1"))
    reg.cut_at = 64 * 1024
    await client.fetch_blob(resolved, Credentials(), resolved.layers[0], store)
    assert store.read(_d(LAYER)) == LAYER
    assert reg.range_headers == [None, f"bytes={64 * 1024}-"]
    assert sum(reg.sent) == len(LAYER)


async def test_server_ignoring_range_starts_over(tmp_path: Path) -> None:
    reg = FakeRegistry(ranges=False)
    client = _client(reg)
    store = BlobStore(tmp_path)
    resolved = await client.resolve(parse("reg.test/app:1"))
    reg.cut_at = 100 * 1024
    with pytest.raises(Unavailable):
        await client.fetch_blob(resolved, Credentials(), resolved.layers[0], store)
    reg.sent.clear()
    await client.fetch_blob(resolved, Credentials(), resolved.layers[0], store)
    assert store.read(_d(LAYER)) == LAYER
    assert reg.range_headers[-1] is not None and sum(reg.sent) == len(LAYER)


async def test_corrupt_partial_is_dropped_and_complete_partial_is_used(tmp_path: Path) -> None:
    reg = FakeRegistry()
    client = _client(reg)
    store = BlobStore(tmp_path)
    resolved = await client.resolve(parse("reg.test/app:1"))
    store.partial_path(_d(LAYER)).write_bytes(b"garbage" + LAYER[7:1000])
    with pytest.raises(DigestMismatch):
        await client.fetch_blob(resolved, Credentials(), resolved.layers[0], store)
    assert list(store.partials()) == [] and not store.has(_d(LAYER))
    # a partial that is already complete (crash before the rename) needs no request at all
    store.partial_path(_d(LAYER)).write_bytes(LAYER)
    reg.range_headers.clear()
    await client.fetch_blob(resolved, Credentials(), resolved.layers[0], store)
    assert store.read(_d(LAYER)) == LAYER and reg.range_headers == []


def test_stale_partials_are_cleaned(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    old, fresh, kept = _d(b"old"), _d(b"fresh"), _d(b"kept")
    for digest in (old, fresh, kept):
        store.partial_path(digest).write_bytes(b"123")
    long_ago = time.time() - PARTIAL_MAX_AGE_S - 60
    os.utime(store.partial_path(old), (long_ago, long_ago))
    store = BlobStore(tmp_path)  # opening removes partials older than a day
    assert {d for d, _ in store.partials()} == {fresh, kept}
    assert store.gc({kept}) == (1, 3)  # GC removes partials nothing keeps
    assert {d for d, _ in store.partials()} == {kept}


# ---------------------------------------------------------------------- server_address


def test_normalize_registry_host() -> None:
    for hub in ("docker.io", "index.docker.io", "https://index.docker.io/v1/", "registry-1.docker.io", "DOCKER.IO"):
        assert normalize_registry_host(hub) == "docker.io"
    assert normalize_registry_host("http://Reg.Local:5000/v2/") == "reg.local:5000"
    assert normalize_registry_host("reg.local:5000/some/path") == "reg.local:5000"
    assert normalize_registry_host("https://user@quay.io") == "quay.io"


def test_credentials_scope() -> None:
    reg = RegistryConfig(name="docker.io")
    origin = Endpoint(url="https://registry-1.docker.io", mirror=False, registry=reg)
    mirror = Endpoint(url="https://mirror.test", mirror=True, registry=reg)
    hub = Credentials(username="u", password="p", server_address="https://index.docker.io/v1/")
    assert hub.for_endpoint(origin) is hub
    assert hub.for_endpoint(mirror).empty  # credentials for Hub are not sent to a mirror
    assert Credentials(username="u", server_address="mirror.test").for_endpoint(mirror).username == "u"
    unscoped = Credentials(username="u")
    assert unscoped.for_endpoint(mirror) is unscoped and unscoped.for_endpoint(origin) is unscoped
    from types import SimpleNamespace

    cri = SimpleNamespace(
        username="u", password="p", auth="", identity_token="", registry_token="", server_address="reg.test"
    )
    assert Credentials.from_cri(cri).server_address == "reg.test"


async def test_server_address_mismatch_pulls_anonymously() -> None:
    seen_auth: list[str | None] = []
    good = "Basic " + base64.b64encode(b"u:p").decode()

    def handler(request: httpx.Request) -> httpx.Response:
        seen_auth.append(request.headers.get("authorization"))
        if request.url.path.startswith("/v2/public/") or request.headers.get("authorization") == good:
            return httpx.Response(200, content=MANIFEST, headers={"Content-Type": MT_DOCKER_MANIFEST})
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})

    client = _client(handler)
    other = Credentials(username="u", password="p", server_address="other.test")
    # public image: the pull proceeds anonymously, the credentials never leave for reg.test
    await client.resolve(parse("reg.test/public/app:1"), other)
    assert seen_auth == [None]
    # private image: anonymous is refused, and the error says why no credentials were sent
    with pytest.raises(Unauthenticated, match="server_address 'other.test'"):
        await client.resolve(parse("reg.test/private/app:1"), other)
    assert good not in seen_auth
    # matching server_address (any spelling of the host) sends them
    for address in ("reg.test", "https://reg.test/", "REG.TEST"):
        await client.resolve(
            parse("reg.test/private/app:1"), Credentials(username="u", password="p", server_address=address)
        )
    assert seen_auth[-1] == good
