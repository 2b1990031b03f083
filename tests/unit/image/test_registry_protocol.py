"""Protocol edge cases of the registry client against httpx.MockTransport."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from frakpy.errors import FailedPrecondition, NotFound, Unauthenticated, Unavailable
from frakpy.image.blobs import BlobStore, DigestMismatch
from frakpy.image.reference import parse
from frakpy.image.registry import (
    MT_DOCKER_LIST,
    MT_DOCKER_MANIFEST,
    MT_DOCKER_SCHEMA1_SIGNED,
    MT_OCI_INDEX,
    MT_OCI_MANIFEST,
    Credentials,
    Platform,
    PullConfig,
    RegistryClient,
    RegistryConfig,
    endpoints_for,
    parse_www_authenticate,
    select_manifest,
)


def _d(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


CONFIG = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"diff_ids": []}}).encode()
LAYER = b"layer-bytes" * 100
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": MT_DOCKER_MANIFEST,
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": _d(CONFIG),
            "size": len(CONFIG),
        },
        "layers": [
            {
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "digest": _d(LAYER),
                "size": len(LAYER),
            }
        ],
    }
).encode()


def _index(media_type: str = MT_OCI_INDEX) -> bytes:
    def entry(arch: str, variant: str = "") -> dict:
        platform = {"os": "linux", "architecture": arch, **({"variant": variant} if variant else {})}
        return {
            "mediaType": MT_DOCKER_MANIFEST,
            "digest": _d(MANIFEST + arch.encode() + variant.encode()),
            "size": 1,
            "platform": platform,
        }

    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": [
                entry("arm", "v7"),
                entry("arm64", "v8"),
                {
                    "mediaType": MT_OCI_MANIFEST,
                    "digest": _d(b"att"),
                    "size": 1,
                    "platform": {"os": "unknown", "architecture": "unknown"},
                    "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
                },
                {**entry("amd64"), "digest": _d(MANIFEST)},
            ],
        }
    ).encode()


def _client(handler: Callable[[httpx.Request], httpx.Response], config: PullConfig | None = None) -> RegistryClient:
    async def no_sleep(_s: float) -> None:
        return None

    config = config or PullConfig(registries=[RegistryConfig(name="reg.test")])
    return RegistryClient(config, transport=httpx.MockTransport(handler), sleep=no_sleep)


def test_parse_www_authenticate() -> None:
    [c] = parse_www_authenticate(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:samalba/my-app:pull,push"'
    )
    assert c.scheme == "bearer"
    assert c.params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:samalba/my-app:pull,push",
    }
    both = parse_www_authenticate(
        'Basic realm="x y", charset="UTF-8", Bearer realm=https://t/token,error=invalid_token'
    )
    assert [c.scheme for c in both] == ["basic", "bearer"]
    assert both[0].params == {"realm": "x y", "charset": "UTF-8"}
    assert both[1].params == {"realm": "https://t/token", "error": "invalid_token"}
    assert parse_www_authenticate('Bearer realm="a\\"b"')[0].params["realm"] == 'a"b'
    assert parse_www_authenticate("") == []


def test_platform_selection() -> None:
    index = json.loads(_index())
    assert select_manifest(index, Platform.parse("linux/amd64"), "x")["digest"] == _d(MANIFEST)
    assert select_manifest(index, Platform.parse("linux/arm64"), "x")["platform"]["architecture"] == "arm64"
    assert select_manifest(index, Platform.parse("linux/aarch64/v8"), "x")["platform"]["variant"] == "v8"
    assert select_manifest(index, Platform.parse("linux/arm"), "x")["platform"]["variant"] == "v7"
    with pytest.raises(NotFound, match="available: linux/arm/v7, linux/arm64/v8, linux/amd64"):
        select_manifest(index, Platform.parse("linux/s390x"), "x")


def test_endpoints() -> None:
    cfg = PullConfig(
        registries=[
            RegistryConfig(name="docker.io", endpoints=["http://mirror.local:5000/v2/", "https://m2"]),
            RegistryConfig(name="registry.k8s.io", endpoints=["http://10.0.0.1:5000"], fallback_to_origin=False),
            RegistryConfig(name="plain:5000", insecure=True),
        ]
    )
    assert [e.url for e in endpoints_for(cfg, "docker.io")] == [
        "http://mirror.local:5000",
        "https://m2",
        "https://registry-1.docker.io",
    ]
    assert [e.url for e in endpoints_for(cfg, "registry.k8s.io")] == ["http://10.0.0.1:5000"]
    assert [e.url for e in endpoints_for(cfg, "plain:5000")] == ["http://plain:5000"]
    assert [e.url for e in endpoints_for(cfg, "other.io")] == ["https://other.io"]


async def test_negotiation_index_then_manifest() -> None:
    index = _index(MT_DOCKER_LIST)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v2/library/app/manifests/1":
            return httpx.Response(200, content=index, headers={"Content-Type": MT_DOCKER_LIST})
        if request.url.path == f"/v2/library/app/manifests/{_d(MANIFEST)}":
            return httpx.Response(200, content=MANIFEST, headers={"Content-Type": MT_DOCKER_MANIFEST})
        return httpx.Response(404)

    client = _client(handler, PullConfig(registries=[RegistryConfig(name="reg.test")]))
    resolved = await client.resolve(parse("reg.test/library/app:1"))
    assert resolved.manifest.digest == _d(MANIFEST) and resolved.index is not None
    assert resolved.repo_digest == _d(index)
    accept = seen[0].headers["accept"]
    for mt in (MT_OCI_INDEX, MT_OCI_MANIFEST, MT_DOCKER_LIST, MT_DOCKER_MANIFEST):
        assert mt in accept
    assert "distribution.manifest.v1" not in accept
    await client.aclose()


async def test_schema1_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.dumps({"schemaVersion": 1, "name": "x", "fsLayers": []}).encode()
        return httpx.Response(200, content=body, headers={"Content-Type": MT_DOCKER_SCHEMA1_SIGNED})

    client = _client(handler)
    with pytest.raises(FailedPrecondition, match="schema 1.*re-push"):
        await client.resolve(parse("reg.test/old:1"))


async def test_artifact_refused_and_manifest_digest_checked() -> None:
    artifact = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.cncf.helm.config.v1+json",
                "digest": _d(b"x"),
                "size": 1,
            },
            "layers": [],
        }
    ).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        if "chart" in request.url.path:
            return httpx.Response(200, content=artifact, headers={"Content-Type": MT_OCI_MANIFEST})
        return httpx.Response(200, content=MANIFEST, headers={"Docker-Content-Digest": _d(b"other")})

    client = _client(handler)
    with pytest.raises(FailedPrecondition, match="artifact"):
        await client.resolve(parse("reg.test/chart:1"))
    with pytest.raises(DigestMismatch):
        await client.resolve(parse("reg.test/app:1"))
    with pytest.raises(DigestMismatch):
        await client.resolve(parse(f"reg.test/app@{_d(b'not-this')}"))


async def test_bearer_flow_token_reuse_and_redirect_drops_auth(tmp_path: Path) -> None:
    token_calls: list[httpx.Request] = []
    blob_auth: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            token_calls.append(request)
            assert request.headers["authorization"] == "Basic " + base64.b64encode(b"u:p").decode()
            return httpx.Response(200, json={"token": "T1", "expires_in": 300})
        if request.url.host == "storage.test":
            blob_auth.append(request.headers.get("authorization"))
            return httpx.Response(200, content=LAYER)
        if request.headers.get("authorization") != "Bearer T1":
            return httpx.Response(
                401, headers={"WWW-Authenticate": 'Bearer realm="https://auth.test/token",service="reg"'}
            )
        if "/manifests/" in request.url.path:
            return httpx.Response(200, content=MANIFEST, headers={"Content-Type": MT_DOCKER_MANIFEST})
        if request.url.path.endswith(_d(CONFIG)):
            return httpx.Response(200, content=CONFIG)
        return httpx.Response(307, headers={"Location": "https://storage.test/signed?x=1"})

    client = _client(handler)
    creds = Credentials(username="u", password="p")
    resolved = await client.resolve(parse("reg.test/app:1"), creds)
    store = BlobStore(tmp_path)
    await client.fetch_blob(resolved, creds, resolved.config_descriptor, store)
    await client.fetch_blob(resolved, creds, resolved.layers[0], store)
    assert store.read(_d(LAYER)) == LAYER
    assert len(token_calls) == 1
    assert token_calls[0].url.params["scope"] == "repository:app:pull"
    assert token_calls[0].url.params["service"] == "reg"
    assert blob_auth == [None]


async def test_identity_token_and_registry_token() -> None:
    forms: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            forms.append(request.content)
            return httpx.Response(200, json={"access_token": "AT"})
        if request.headers.get("authorization") not in ("Bearer AT", "Bearer RT"):
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="https://auth.test/t",service="s"'})
        return httpx.Response(200, content=MANIFEST, headers={"Content-Type": MT_DOCKER_MANIFEST})

    client = _client(handler)
    await client.resolve(parse("reg.test/app:1"), Credentials(identity_token="REFRESH"))
    assert b"grant_type=refresh_token" in forms[0] and b"refresh_token=REFRESH" in forms[0]
    await client.resolve(parse("reg.test/app:1"), Credentials(registry_token="RT"))
    assert len(forms) == 1


async def test_basic_auth_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") == "Basic " + base64.b64encode(b"u:p").decode():
            return httpx.Response(200, content=MANIFEST, headers={"Content-Type": MT_DOCKER_MANIFEST})
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})

    client = _client(handler)
    with pytest.raises(Unauthenticated, match="requires credentials"):
        await client.resolve(parse("reg.test/app:1"))
    with pytest.raises(Unauthenticated, match="rejected"):
        await client.resolve(parse("reg.test/app:1"), Credentials(username="u", password="x"))
    await client.resolve(parse("reg.test/app:1"), Credentials(auth=base64.b64encode(b"u:p").decode()))


async def test_retries_then_gives_up() -> None:
    calls = 0

    def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls < 3:
            return httpx.Response(503) if calls == 1 else httpx.Response(429, headers={"Retry-After": "1"})
        return httpx.Response(200, content=MANIFEST, headers={"Content-Type": MT_DOCKER_MANIFEST})

    client = _client(flaky)
    await client.resolve(parse("reg.test/app:1"))
    assert calls == 3

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    client = _client(down, PullConfig(registries=[RegistryConfig(name="reg.test")], retries=2))
    with pytest.raises(Unavailable, match="after 3 attempts"):
        await client.resolve(parse("reg.test/app:1"))


async def test_mirror_then_origin_fallback() -> None:
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(f"{request.url.scheme}://{request.url.host}")
        if request.url.host == "mirror.test":
            assert request.url.params["ns"] == "reg.test"
            return httpx.Response(404)
        return httpx.Response(200, content=MANIFEST, headers={"Content-Type": MT_DOCKER_MANIFEST})

    cfg = PullConfig(registries=[RegistryConfig(name="reg.test", endpoints=["http://mirror.test"])])
    resolved = await _client(handler, cfg).resolve(parse("reg.test/app:1"))
    assert hosts == ["http://mirror.test", "https://reg.test"] and not resolved.endpoint.mirror
    cfg.registries[0].fallback_to_origin = False
    hosts.clear()
    with pytest.raises(NotFound):
        await _client(handler, cfg).resolve(parse("reg.test/app:1"))
    assert hosts == ["http://mirror.test"]
