"""Async client for the OCI distribution / Docker Registry HTTP API v2, on httpx.

Library verdict (checked before writing this): ``oras`` (oras-py) is synchronous (requests),
aims at pushing and pulling OCI *artifacts* to files, has no platform selection from an index,
no Docker manifest list / schema2 handling beyond passing bytes, no mirror endpoints and no
per-registry CA or insecure policy of our own; ``python-dxf`` is synchronous (requests), its
auth covers basic and bearer but not CRI's identity_token (OAuth2 refresh-token grant) or a
ready registry_token, and it neither verifies a blob while streaming it into our store nor
knows mirrors. Both would need wrapping in threads plus most of the logic below on top, so we
write the small Distribution v2 client here on httpx (async, maintained), following the specs:
OCI distribution-spec (pull), image-spec (index, manifest, media types) and the Docker
Registry v2 token authentication spec.

What it does:

* Manifest negotiation via ``Accept`` (OCI index and manifest, Docker manifest list and schema2);
  schema1 is refused with a message saying how to fix the image.
* Platform selection from an index (``linux/amd64`` by default, :class:`PullConfig.platform`).
* Auth from CRI ``AuthConfig`` fields (:class:`Credentials`): anonymous, Basic, Bearer tokens
  fetched from the challenge's realm with service and scope (``identity_token`` uses the
  OAuth2 refresh-token grant, ``registry_token`` is sent as the bearer token itself); tokens are
  cached per realm, scope and credentials and fetched again on a 401.
* TLS with the system CAs plus a per-registry CA file; plain HTTP only for a registry declared
  ``insecure`` or a mirror endpoint written ``http://``.
* Mirrors: ordered endpoints per registry, then the origin unless ``fallback_to_origin`` is off.
* Retries with exponential backoff on connect/read errors, 429 and 5xx (``Retry-After`` honoured).
* Redirects followed by hand; ``Authorization`` is dropped when a redirect leaves the host
  (blob storage such as S3 signs its own URLs).
* Blobs are streamed into the :class:`~frakpy.image.blobs.BlobStore`, verified while streaming.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlencode, urljoin, urlsplit

import httpx

from frakpy import __version__
from frakpy.errors import (
    FailedPrecondition,
    FrakpyError,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from frakpy.image.blobs import BlobStore, DigestMismatch, check_digest, sha256_digest
from frakpy.image.reference import DEFAULT_REGISTRY, Reference

log = logging.getLogger(__name__)

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
MT_DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MT_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

INDEX_TYPES = frozenset({MT_OCI_INDEX, MT_DOCKER_LIST})
MANIFEST_TYPES = frozenset({MT_OCI_MANIFEST, MT_DOCKER_MANIFEST})
SCHEMA1_TYPES = frozenset({MT_DOCKER_SCHEMA1, MT_DOCKER_SCHEMA1_SIGNED})
CONFIG_TYPES = frozenset({MT_OCI_CONFIG, MT_DOCKER_CONFIG})
ACCEPT = ", ".join([MT_OCI_INDEX, MT_DOCKER_LIST, MT_OCI_MANIFEST, MT_DOCKER_MANIFEST])
MAX_MANIFEST_BYTES = 4 << 20
DOCKER_HUB_ENDPOINT = "https://registry-1.docker.io"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


# --------------------------------------------------------------------------- configuration


@dataclass
class RegistryConfig:
    """How to reach one registry (the host part of image references, e.g. ``docker.io``)."""

    name: str
    """Registry host as written in image references: ``docker.io``, ``registry.k8s.io``, ``10.0.0.5:5000``."""
    endpoints: list[str] = field(default_factory=list)
    """Mirror endpoints tried in order before the origin, as ``https://host[:port][/prefix]``;
    ``http://`` is allowed here because writing it declares that mirror plain HTTP."""
    insecure: bool = False
    """Reach the origin over plain HTTP (``http://name``). Never guessed: off means HTTPS only."""
    ca_file: str = ""
    """PEM file with extra CA certificates trusted for this registry and its mirrors (added to the
    system CAs)."""
    skip_verify: bool = False
    """Do not verify TLS certificates of this registry and its mirrors (testing only)."""
    fallback_to_origin: bool = True
    """After the mirrors fail, try the origin. Turn off on air-gapped nodes that map e.g.
    registry.k8s.io to a local registry, so nothing is attempted beyond the mirrors."""


@dataclass
class PullConfig:
    """Image pull settings: the per-registry table plus node-wide knobs."""

    registries: list[RegistryConfig] = field(default_factory=list)
    """Per-registry settings; a registry not listed is reached at ``https://<name>`` (Docker Hub at
    registry-1.docker.io) with the system CAs and no mirrors."""
    platform: str = "linux/amd64"
    """Platform picked from multi-platform indexes, ``os/arch[/variant]``."""
    max_concurrent_downloads: int = 3
    """Layer downloads running at once across all pulls."""
    retries: int = 4
    """Retries of one request after a connect/read error, 429 or 5xx (0 disables)."""
    backoff_s: float = 0.5
    """First retry delay; doubled on each further retry (capped at 30 s)."""
    connect_timeout_s: float = 15.0
    """Seconds to establish a connection to a registry, mirror or token server."""
    read_timeout_s: float = 60.0
    """Seconds without any byte from the server before a request counts as failed."""

    def registry(self, name: str) -> RegistryConfig:
        for reg in self.registries:
            if reg.name == name:
                return reg
        return RegistryConfig(name=name)


@dataclass(frozen=True)
class Credentials:
    """Credentials for one pull: the fields of CRI's ``AuthConfig``."""

    username: str = ""
    password: str = ""
    auth: str = ""
    """base64 of ``username:password`` (docker config.json style); used when username is empty."""
    identity_token: str = ""
    """OAuth2 refresh token: exchanged at the token realm with grant_type=refresh_token."""
    registry_token: str = ""
    """A bearer token sent to the registry as is."""
    server_address: str = ""
    """Registry these credentials are for (``registry.example.com:5000``, ``https://index.docker.io/v1/``);
    empty means every registry. Elsewhere the pull is anonymous, as in containerd."""

    @classmethod
    def from_cri(cls, auth: Any) -> Credentials:
        """From a CRI ``AuthConfig`` message (or anything with those attributes, or None)."""
        if auth is None:
            return cls()
        return cls(
            username=getattr(auth, "username", "") or "",
            password=getattr(auth, "password", "") or "",
            auth=getattr(auth, "auth", "") or "",
            identity_token=getattr(auth, "identity_token", "") or "",
            registry_token=getattr(auth, "registry_token", "") or "",
            server_address=getattr(auth, "server_address", "") or "",
        )

    def applies_to(self, host: str) -> bool:
        """Whether these credentials may be sent to registry ``host`` (a reference's registry or
        an endpoint's host:port)."""
        if not self.server_address:
            return True
        return normalize_registry_host(self.server_address) == normalize_registry_host(host)

    def for_endpoint(self, endpoint: Endpoint) -> Credentials:
        """These credentials where they apply to ``endpoint``, else anonymous.

        containerd compares the server address with the host it is about to contact, so
        credentials for a registry are not sent to its mirrors (and the reverse); Docker Hub's
        names (docker.io, index.docker.io, registry-1.docker.io, https://index.docker.io/v1/) are
        one registry.
        """
        if self.empty or self.applies_to(endpoint.host):
            return self
        if not endpoint.mirror and self.applies_to(endpoint.registry.name):
            return self
        return ANONYMOUS

    def basic(self) -> tuple[str, str] | None:
        if self.username:
            return self.username, self.password
        if self.auth:
            try:
                decoded = base64.b64decode(self.auth, validate=False).decode()
            except (ValueError, UnicodeDecodeError) as exc:
                raise InvalidArgument("AuthConfig.auth is not base64 of user:password") from exc
            user, sep, password = decoded.partition(":")
            if not sep:
                raise InvalidArgument("AuthConfig.auth decodes to no user:password pair")
            return user, password
        return None

    @property
    def empty(self) -> bool:
        return not (self.username or self.auth or self.identity_token or self.registry_token)

    def key(self) -> str:
        """A fingerprint so tokens obtained with one identity are never used for another."""
        raw = "\0".join([self.username, self.password, self.auth, self.identity_token, self.registry_token])
        return hashlib.sha256(raw.encode()).hexdigest()[:16]


ANONYMOUS = Credentials()
_DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})


def normalize_registry_host(address: str) -> str:
    """``https://index.docker.io/v1/`` -> ``docker.io``; ``http://Reg.local:5000/x`` -> ``reg.local:5000``.

    Scheme, path and user info are dropped, the host is lowercased, and every Docker Hub name
    becomes ``docker.io`` (docker's config.json keys Hub as ``https://index.docker.io/v1/``).
    """
    text = (address or "").strip()
    host = urlsplit(text).netloc if "://" in text else text.split("/", 1)[0]
    host = host.rpartition("@")[2].lower()
    if host.endswith(":443") and host[:-4] in _DOCKER_HUB_HOSTS:
        host = host[:-4]
    return DEFAULT_REGISTRY if host in _DOCKER_HUB_HOSTS else host


@dataclass(frozen=True)
class Endpoint:
    """One base URL serving ``/v2/`` for a registry (the origin or a mirror)."""

    url: str
    mirror: bool
    registry: RegistryConfig

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc

    def v2(self, path: str) -> str:
        return f"{self.url}/v2/{path}"


def endpoints_for(config: PullConfig, registry: str) -> list[Endpoint]:
    """The endpoints tried for ``registry``, mirrors first, in order."""
    reg = config.registry(registry)
    out: list[Endpoint] = []
    for raw in reg.endpoints:
        url = raw.rstrip("/")
        if url.endswith("/v2"):
            url = url[:-3]
        scheme = urlsplit(url).scheme
        if scheme not in ("http", "https") or not urlsplit(url).netloc:
            raise InvalidArgument(f"mirror endpoint {raw!r} of registry {registry} must be an http:// or https:// URL")
        out.append(Endpoint(url=url, mirror=True, registry=reg))
    if not out or reg.fallback_to_origin:
        if registry == DEFAULT_REGISTRY:
            origin = DOCKER_HUB_ENDPOINT
        else:
            origin = f"{'http' if reg.insecure else 'https'}://{registry}"
        out.append(Endpoint(url=origin, mirror=False, registry=reg))
    return out


# --------------------------------------------------------------------------- WWW-Authenticate


@dataclass(frozen=True)
class Challenge:
    scheme: str
    params: dict[str, str]


_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_CHALLENGE_PART = re.compile(
    rf'\s*(?:(?P<key>{_TOKEN})\s*=\s*(?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<bare>[^\s,]*))'
    rf"|(?P<scheme>{_TOKEN})(?=\s|,|$)(?P<token68>\s+[A-Za-z0-9\-._~+/]+=*(?=\s*(?:,|$)))?)\s*,?"
)


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Parse a WWW-Authenticate header (RFC 7235) into challenges, params keys lowercased."""
    challenges: list[Challenge] = []
    pos = 0
    header = header or ""
    while pos < len(header):
        match = _CHALLENGE_PART.match(header, pos)
        if not match or match.end() == pos:
            break
        pos = match.end()
        if match.group("scheme"):
            challenges.append(Challenge(scheme=match.group("scheme").lower(), params={}))
            if match.group("token68"):
                challenges[-1].params["token68"] = match.group("token68").strip()
        elif challenges:
            value = match.group("quoted")
            value = re.sub(r"\\(.)", r"\1", value) if value is not None else match.group("bare")
            challenges[-1].params[match.group("key").lower()] = value
    return challenges


# --------------------------------------------------------------------------- platforms


_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm", "armel": "arm"}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.strip().lower().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise InvalidArgument(f"platform {text!r} must be os/arch or os/arch/variant, e.g. linux/amd64")
        arch = _ARCH_ALIASES.get(parts[1], parts[1])
        return cls(parts[0], arch, parts[2] if len(parts) == 3 else "")

    @classmethod
    def from_descriptor(cls, platform: dict[str, Any]) -> Platform:
        arch = str(platform.get("architecture", "")).lower()
        return cls(
            str(platform.get("os", "")).lower(),
            _ARCH_ALIASES.get(arch, arch),
            str(platform.get("variant", "") or "").lower(),
        )

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def _norm_variant(self) -> str:
        if self.architecture == "arm64" and self.variant in ("", "v8"):
            return "v8"
        if self.architecture == "amd64" and self.variant in ("", "v1"):
            return "v1"
        return self.variant

    def matches(self, other: Platform, *, strict_variant: bool) -> bool:
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        if strict_variant or self.variant:
            return self._norm_variant() == other._norm_variant()
        return True


def select_manifest(index: dict[str, Any], platform: Platform, where: str) -> dict[str, Any]:
    """Pick the manifest descriptor for ``platform`` from an image index / manifest list."""
    manifests = [m for m in index.get("manifests") or [] if isinstance(m, dict)]
    candidates = [
        m
        for m in manifests
        if m.get("mediaType", MT_OCI_MANIFEST) in MANIFEST_TYPES | INDEX_TYPES
        and (m.get("annotations") or {}).get("vnd.docker.reference.type") != "attestation-manifest"
    ]
    with_platform = [m for m in candidates if isinstance(m.get("platform"), dict)]
    for strict in (True, False):
        for m in with_platform:
            if platform.matches(Platform.from_descriptor(m["platform"]), strict_variant=strict):
                return m
    if not with_platform and len(candidates) == 1:
        return candidates[0]
    available = ", ".join(str(Platform.from_descriptor(m["platform"])) for m in with_platform) or "none"
    raise NotFound(
        f"{where} has no image for platform {platform} (available: {available}); "
        "set the pull platform or use an image built for this platform",
        kind="image",
        ident=where,
    )


# --------------------------------------------------------------------------- manifests


@dataclass
class Manifest:
    """A fetched manifest or index, verified against its digest."""

    digest: str
    media_type: str
    raw: bytes
    doc: dict[str, Any]

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


def classify_manifest(raw: bytes, content_type: str, where: str) -> tuple[str, dict[str, Any]]:
    """Return (media type, parsed JSON); refuses schema1 and anything that is not an image."""
    content_type = (content_type or "").split(";")[0].strip().lower()
    if content_type in SCHEMA1_TYPES:
        raise _schema1(where)
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise FailedPrecondition(f"manifest of {where} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise FailedPrecondition(f"manifest of {where} is not a JSON object")
    if doc.get("schemaVersion") == 1:
        raise _schema1(where)
    media_type = doc.get("mediaType") or content_type
    if media_type in INDEX_TYPES or (media_type not in MANIFEST_TYPES and "manifests" in doc):
        return (media_type if media_type in INDEX_TYPES else MT_OCI_INDEX), doc
    if media_type in MANIFEST_TYPES or ("config" in doc and "layers" in doc):
        if not isinstance(doc.get("config"), dict) or not isinstance(doc.get("layers"), list):
            raise FailedPrecondition(f"manifest of {where} lacks config or layers")
        config_type = doc["config"].get("mediaType", MT_OCI_CONFIG)
        if config_type not in CONFIG_TYPES:
            raise FailedPrecondition(
                f"{where} is an OCI artifact with config type {config_type}, not a container image"
            )
        return (media_type if media_type in MANIFEST_TYPES else MT_OCI_MANIFEST), doc
    raise FailedPrecondition(f"{where} has unsupported manifest media type {media_type or 'unknown'!r}")


def _schema1(where: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"{where} is stored as Docker image manifest schema 1, which is deprecated and not supported; "
        "re-push the image with a current docker/buildah/skopeo so it uses schema 2 or OCI"
    )


# --------------------------------------------------------------------------- the client


@dataclass
class _Token:
    value: str
    expires: float


class ProgressFn(Protocol):
    """Bytes of a blob present so far; ``resumed`` marks the count kept from an earlier attempt."""

    def __call__(self, done: int, resumed: bool = False, /) -> None: ...


class RegistryClient:
    """Talks to registries for the whole daemon; share one instance (it caches tokens)."""

    def __init__(
        self,
        config: PullConfig | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.config = config or PullConfig()
        self.platform = Platform.parse(self.config.platform)
        self._transport = transport
        self._sleep = sleep
        self._clients: dict[tuple[str, bool], httpx.AsyncClient] = {}
        self._tokens: dict[tuple[str, str, str], _Token] = {}
        self._basic_hosts: set[str] = set()
        self._semaphore: asyncio.Semaphore | None = None

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def download_slots(self) -> asyncio.Semaphore:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(max(1, self.config.max_concurrent_downloads))
        return self._semaphore

    def _client(self, reg: RegistryConfig) -> httpx.AsyncClient:
        key = (reg.ca_file, reg.skip_verify)
        client = self._clients.get(key)
        if client is None:
            verify: ssl.SSLContext | bool
            if reg.skip_verify:
                verify = False
            else:
                verify = ssl.create_default_context()
                if reg.ca_file:
                    try:
                        verify.load_verify_locations(cafile=reg.ca_file)
                    except (OSError, ssl.SSLError) as exc:
                        raise FailedPrecondition(
                            f"CA file {reg.ca_file} of registry {reg.name} cannot be loaded: {exc}"
                        ) from exc
            timeout = httpx.Timeout(self.config.read_timeout_s, connect=self.config.connect_timeout_s)
            client = httpx.AsyncClient(
                verify=verify,
                timeout=timeout,
                follow_redirects=False,
                transport=self._transport,
                headers={"User-Agent": f"frakpy/{__version__}", "Accept-Encoding": "identity"},
            )
            self._clients[key] = client
        return client

    # ---- low level: one request with retries, redirects and auth

    async def _send(
        self,
        endpoint: Endpoint,
        method: str,
        url: str,
        headers: dict[str, str],
        *,
        content: bytes | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """Send with retries on transient failures; follows redirects, dropping auth off-host."""
        client = self._client(endpoint.registry)
        attempt = 0
        while True:
            try:
                response = await self._send_following(client, method, url, headers, content, stream)
            except httpx.TransportError as exc:
                if _is_tls_error(exc):
                    raise Unavailable(
                        f"TLS connection to {urlsplit(url).netloc} failed ({exc}); trust its CA with ca_file "
                        f"in the [[registries]] entry for {endpoint.registry.name}, or if it serves plain "
                        "HTTP declare it insecure = true",
                        kind="registry",
                        ident=endpoint.registry.name,
                    ) from exc
                if attempt >= self.config.retries:
                    raise Unavailable(
                        f"cannot reach {urlsplit(url).netloc} ({type(exc).__name__}: {exc}) after "
                        f"{attempt + 1} attempts; check the registry is up and reachable",
                        kind="registry",
                        ident=endpoint.registry.name,
                    ) from exc
                delay = self._delay(attempt, None)
            else:
                if response.status_code not in RETRY_STATUSES or attempt >= self.config.retries:
                    return response
                delay = self._delay(attempt, response.headers.get("retry-after"))
                await response.aclose()
            log.debug("retrying %s %s in %.1fs (attempt %d)", method, url, delay, attempt + 1)
            await self._sleep(delay)
            attempt += 1

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay: float = min(30.0, float(self.config.backoff_s) * (2**attempt))
        if retry_after and retry_after.isdigit():
            delay = min(30.0, max(delay, float(retry_after)))
        return delay

    async def _send_following(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: str,
        headers: dict[str, str],
        content: bytes | None,
        stream: bool,
    ) -> httpx.Response:
        origin = urlsplit(url).netloc
        for _ in range(10):
            request = client.build_request(method, url, headers=headers, content=content)
            response = await client.send(request, stream=True)
            if response.status_code in (301, 302, 303, 307, 308) and "location" in response.headers:
                await response.aclose()
                url = urljoin(url, response.headers["location"])
                if urlsplit(url).netloc != origin:
                    headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                if response.status_code == 303:
                    method, content = "GET", None
                continue
            if not stream:
                try:
                    await response.aread()
                finally:
                    await response.aclose()
            return response
        raise Unavailable(f"too many redirects fetching {url}")

    async def request(
        self,
        endpoint: Endpoint,
        creds: Credentials,
        repository: str,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        stream: bool = False,
        actions: str = "pull",
        url: str | None = None,
    ) -> httpx.Response:
        """An authenticated request to ``endpoint``; answers a 401 challenge once with fresh credentials."""
        given = creds
        creds = creds.for_endpoint(endpoint)
        scope = f"repository:{repository}:{actions}"
        if url is None:
            url = endpoint.v2(path)
            if endpoint.mirror and endpoint.registry.name:
                url += ("&" if "?" in url else "?") + urlencode({"ns": endpoint.registry.name})
        fresh = False
        fresh_auth: str | None = None
        while True:
            hdrs = dict(headers or {})
            auth = await self._auth_header(endpoint, creds, scope, refresh=False) if not fresh else fresh_auth
            if auth:
                hdrs["Authorization"] = auth
            response = await self._send(endpoint, method, url, hdrs, content=content, stream=stream)
            if response.status_code != 401:
                return response
            await response.aclose()
            challenge_header = response.headers.get("www-authenticate", "")
            if fresh:
                if creds.empty and not given.empty:
                    raise Unauthenticated(
                        f"registry {endpoint.host} requires credentials for {repository}; the pull's credentials "
                        f"are for server_address {given.server_address!r}, so none were sent here",
                        kind="registry",
                        ident=endpoint.host,
                    )
                if creds.empty:
                    raise Unauthenticated(
                        f"registry {endpoint.host} requires credentials for {repository}; "
                        "provide them with the pull (image pull secret)",
                        kind="registry",
                        ident=endpoint.host,
                    )
                raise Unauthenticated(
                    f"registry {endpoint.host} rejected the credentials for {repository} ({method} {path}); "
                    "check the user name, password or token",
                    kind="registry",
                    ident=endpoint.host,
                )
            fresh = True
            try:
                fresh_auth = await self._answer_challenge(endpoint, creds, scope, repository, challenge_header)
            except Unauthenticated as exc:
                if creds.empty and not given.empty:
                    raise Unauthenticated(
                        f"{exc} (the pull's credentials are for server_address {given.server_address!r}, "
                        f"so none were sent to {endpoint.host})",
                        kind="registry",
                        ident=endpoint.host,
                    ) from exc
                raise

    async def _auth_header(self, endpoint: Endpoint, creds: Credentials, scope: str, *, refresh: bool) -> str | None:
        if creds.registry_token:
            return f"Bearer {creds.registry_token}"
        if endpoint.host in self._basic_hosts:
            basic = creds.basic()
            if basic:
                return _basic_header(*basic)
            return None
        for (realm_key, tok_scope, key), token in list(self._tokens.items()):
            if realm_key.endswith(f"|{endpoint.host}") and tok_scope == scope and key == creds.key():
                if token.expires > time.monotonic():
                    return f"Bearer {token.value}"
        return None

    async def _answer_challenge(
        self, endpoint: Endpoint, creds: Credentials, scope: str, repository: str, header: str
    ) -> str | None:
        challenges = parse_www_authenticate(header)
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        basic_ch = next((c for c in challenges if c.scheme == "basic"), None)
        if creds.registry_token:
            return f"Bearer {creds.registry_token}"
        if bearer is not None and bearer.params.get("realm"):
            token = await self._fetch_token(endpoint, creds, bearer, scope, repository)
            return f"Bearer {token}"
        if basic_ch is not None:
            basic = creds.basic()
            if basic is None:
                raise Unauthenticated(
                    f"registry {endpoint.host} requires credentials (Basic) for {repository}; "
                    "provide them with the pull (image pull secret)",
                    kind="registry",
                    ident=endpoint.host,
                )
            self._basic_hosts.add(endpoint.host)
            return _basic_header(*basic)
        raise Unauthenticated(
            f"registry {endpoint.host} answered 401 for {repository} without a usable challenge "
            f"(WWW-Authenticate: {header or 'missing'})",
            kind="registry",
            ident=endpoint.host,
        )

    async def _fetch_token(
        self, endpoint: Endpoint, creds: Credentials, challenge: Challenge, scope: str, repository: str
    ) -> str:
        realm = challenge.params["realm"]
        service = challenge.params.get("service", "")
        wanted = challenge.params.get("scope") or scope
        params = {k: v for k, v in (("service", service), ("scope", wanted)) if v}
        headers: dict[str, str] = {}
        if urlsplit(realm).scheme not in ("http", "https"):
            raise Unauthenticated(f"registry {endpoint.host} sent token realm {realm!r}, not an http(s) URL")
        if creds.identity_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": creds.identity_token,
                "client_id": "frakpy",
                **params,
            }
            body = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            response = await self._send(endpoint, "POST", realm, headers, content=body)
        else:
            basic = creds.basic()
            if basic:
                headers["Authorization"] = _basic_header(*basic)
            url = realm + ("&" if "?" in realm else "?") + urlencode(params)
            response = await self._send(endpoint, "GET", url, headers)
        if response.status_code in (401, 403):
            raise Unauthenticated(
                f"token server {urlsplit(realm).netloc} refused "
                f"{'the credentials' if not creds.empty else 'anonymous access'} for {repository} "
                f"(HTTP {response.status_code}); check the user name, password or token",
                kind="registry",
                ident=endpoint.host,
            )
        if response.status_code != 200:
            raise Unavailable(f"token server {realm} answered HTTP {response.status_code} for {repository}")
        try:
            doc = response.json()
            token = doc.get("token") or doc.get("access_token")
        except ValueError:
            token = None
        if not token:
            raise Unavailable(f"token server {realm} returned no token for {repository}")
        expires_in = doc.get("expires_in") or 60
        try:
            expires = time.monotonic() + max(10.0, float(expires_in) - 5)
        except (TypeError, ValueError):
            expires = time.monotonic() + 55
        self._tokens[(f"{realm}|{service}|{endpoint.host}", scope, creds.key())] = _Token(str(token), expires)
        return str(token)

    # ---- manifests

    async def get_manifest(self, endpoint: Endpoint, creds: Credentials, ref: Reference, reference: str) -> Manifest:
        where = f"{ref.name}@{reference}" if reference.startswith("sha256:") else f"{ref.name}:{reference}"
        response = await self.request(
            endpoint,
            creds,
            ref.repository,
            "GET",
            f"{ref.repository}/manifests/{reference}",
            headers={"Accept": ACCEPT},
        )
        if response.status_code == 404:
            raise NotFound(f"image {where} not found at {endpoint.url} (manifest unknown)", kind="image", ident=where)
        if response.status_code == 403:
            raise Unauthenticated(f"registry {endpoint.host} denied access to {where}", kind="image", ident=where)
        if response.status_code != 200:
            raise Unavailable(
                f"fetching manifest {where} from {endpoint.url}: HTTP {response.status_code} {response.text[:200]}"
            )
        raw = response.content
        if len(raw) > MAX_MANIFEST_BYTES:
            raise FailedPrecondition(f"manifest of {where} is larger than {MAX_MANIFEST_BYTES} bytes")
        digest = sha256_digest(raw)
        if reference.startswith("sha256:") and digest != reference:
            raise DigestMismatch(f"manifest {where} from {endpoint.url} hashes to {digest}; nothing was stored")
        header_digest = response.headers.get("docker-content-digest", "")
        if header_digest.startswith("sha256:") and header_digest != digest:
            raise DigestMismatch(
                f"manifest {where} from {endpoint.url} hashes to {digest} but the registry says "
                f"{header_digest}; nothing was stored"
            )
        media_type, doc = classify_manifest(raw, response.headers.get("content-type", ""), where)
        return Manifest(digest=digest, media_type=media_type, raw=raw, doc=doc)

    async def resolve(
        self, ref: Reference, creds: Credentials = ANONYMOUS, platform: Platform | None = None
    ) -> Resolved:
        """Fetch the manifest for ``ref`` (choosing the platform from an index); tries every endpoint."""
        platform = platform or self.platform
        errors: list[FrakpyError] = []
        for endpoint in endpoints_for(self.config, ref.registry):
            try:
                top = await self.get_manifest(endpoint, creds, ref, ref.reference)
                index = None
                manifest = top
                depth = 0
                while manifest.is_index:
                    depth += 1
                    if depth > 2:
                        raise FailedPrecondition(f"{ref} nests image indexes too deeply")
                    index = index or manifest
                    chosen = select_manifest(manifest.doc, platform, str(ref))
                    check_digest(chosen.get("digest", ""))
                    manifest = await self.get_manifest(endpoint, creds, ref, chosen["digest"])
                return Resolved(ref=ref, endpoint=endpoint, manifest=manifest, index=index, platform=platform)
            except FrakpyError as exc:
                if isinstance(exc, InvalidArgument):
                    raise
                log.info("resolving %s at %s failed: %s", ref, endpoint.url, exc)
                errors.append(exc)
        raise _pick_error(errors, ref)

    # ---- blobs

    async def fetch_blob(
        self,
        resolved: Resolved,
        creds: Credentials,
        descriptor: dict[str, Any],
        store: BlobStore,
        progress: ProgressFn | None = None,
    ) -> str:
        """Download one blob into ``store`` (verified); returns its digest. Present blobs are skipped."""
        digest = str(descriptor["digest"])
        check_digest(digest)
        size = descriptor.get("size")
        size = int(size) if isinstance(size, int) and size >= 0 else None
        if store.has(digest):
            return digest
        errors: list[FrakpyError] = []
        for endpoint in resolved.endpoints(self.config):
            try:
                return await self._fetch_blob_from(endpoint, resolved.ref, creds, digest, size, store, progress)
            except FrakpyError as exc:
                log.info("blob %s from %s failed: %s", digest, endpoint.url, exc)
                errors.append(exc)
        raise _pick_error(errors, resolved.ref)

    async def _fetch_blob_from(
        self,
        endpoint: Endpoint,
        ref: Reference,
        creds: Credentials,
        digest: str,
        size: int | None,
        store: BlobStore,
        progress: ProgressFn | None,
    ) -> str:
        """Download into the digest's partial file, resuming it with ``Range`` when it has bytes.

        A 206 answer appends; a 200 (the server ignores ranges) starts over. Transport errors keep
        the bytes received for the next attempt (here, or a later pull); a digest or size mismatch
        removes them.
        """
        partial = await store.open_partial(digest)
        if partial is None:  # another download of this digest holds the partial file
            return await self._fetch_blob_plain(endpoint, ref, creds, digest, size, store, progress)
        source = f"{endpoint.url} ({ref.repository})"
        attempt = 0
        try:
            while True:
                if size is not None and partial.size > size:
                    partial.reset()
                if partial.size and progress is not None:
                    progress(partial.size, True)
                if size is not None and partial.size == size:
                    # complete already (interrupted before the rename): verify it
                    return await partial.commit(size, source=source)
                offset = partial.size
                headers = {"Range": f"bytes={offset}-"} if offset else None
                response = await self.request(
                    endpoint,
                    creds,
                    ref.repository,
                    "GET",
                    f"{ref.repository}/blobs/{digest}",
                    stream=True,
                    headers=headers,
                )
                try:
                    if response.status_code == 404:
                        raise NotFound(f"blob {digest} of {ref} not found at {endpoint.url}", kind="blob", ident=digest)
                    if response.status_code == 416 and offset:
                        log.info("blob %s: %s refused range %d-, starting over", digest, endpoint.url, offset)
                        partial.reset()
                        continue
                    if response.status_code == 206 and offset and _range_start(response) == offset:
                        log.info("blob %s: resuming at byte %d from %s", digest, offset, endpoint.url)
                    elif response.status_code == 200:
                        if offset:
                            log.info("blob %s: %s ignored the range request, starting over", digest, endpoint.url)
                            partial.reset()
                    else:
                        raise Unavailable(
                            f"fetching blob {digest} of {ref} from {endpoint.url}: HTTP {response.status_code}"
                        )
                    done = partial.size

                    def counted(n: int) -> None:
                        nonlocal done
                        done += n
                        if progress is not None:
                            progress(done)

                    await partial.append(_chunks(response), size, source=source, progress=counted)
                    return await partial.commit(size, source=source)
                except httpx.TransportError as exc:
                    if attempt >= self.config.retries:
                        raise Unavailable(
                            f"downloading blob {digest} of {ref} from {endpoint.url} failed after {attempt + 1} "
                            f"attempts ({partial.size} bytes kept to resume): {type(exc).__name__}: {exc}",
                            kind="blob",
                            ident=digest,
                        ) from exc
                    await self._sleep(self._delay(attempt, None))
                    attempt += 1
                finally:
                    await response.aclose()
        finally:
            partial.close()

    async def _fetch_blob_plain(
        self,
        endpoint: Endpoint,
        ref: Reference,
        creds: Credentials,
        digest: str,
        size: int | None,
        store: BlobStore,
        progress: ProgressFn | None,
    ) -> str:
        attempt = 0
        while True:
            done = 0

            def counted(n: int) -> None:
                nonlocal done
                done += n
                if progress is not None:
                    progress(done)

            response = await self.request(
                endpoint, creds, ref.repository, "GET", f"{ref.repository}/blobs/{digest}", stream=True
            )
            try:
                if response.status_code == 404:
                    raise NotFound(f"blob {digest} of {ref} not found at {endpoint.url}", kind="blob", ident=digest)
                if response.status_code != 200:
                    raise Unavailable(
                        f"fetching blob {digest} of {ref} from {endpoint.url}: HTTP {response.status_code}"
                    )
                source = f"{endpoint.url} ({ref.repository})"
                got, _ = await store.ingest(_chunks(response), digest, size, source=source, progress=counted)
                return got
            except httpx.TransportError as exc:
                if attempt >= self.config.retries:
                    raise Unavailable(
                        f"downloading blob {digest} of {ref} from {endpoint.url} failed after {attempt + 1} "
                        f"attempts: {type(exc).__name__}: {exc}",
                        kind="blob",
                        ident=digest,
                    ) from exc
                if progress is not None:
                    progress(0)
                await self._sleep(self._delay(attempt, None))
                attempt += 1
            finally:
                await response.aclose()


def _range_start(response: httpx.Response) -> int | None:
    """First byte of a 206 answer's ``Content-Range: bytes N-M/T``."""
    match = re.match(r"\s*bytes\s+(\d+)-", response.headers.get("content-range", ""))
    return int(match.group(1)) if match else None


async def _chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    async for chunk in response.aiter_bytes():  # as received: an interruption loses nothing buffered
        yield chunk


@dataclass
class Resolved:
    """A resolved image: the platform manifest, the index it came from, and where."""

    ref: Reference
    endpoint: Endpoint
    manifest: Manifest
    index: Manifest | None
    platform: Platform

    @property
    def repo_digest(self) -> str:
        """The digest kubelet sees in RepoDigests: the index's when there is one (what the tag points at)."""
        return (self.index or self.manifest).digest

    @property
    def config_descriptor(self) -> dict[str, Any]:
        return dict(self.manifest.doc["config"])

    @property
    def layers(self) -> list[dict[str, Any]]:
        return [dict(layer) for layer in self.manifest.doc["layers"]]

    def endpoints(self, config: PullConfig) -> list[Endpoint]:
        others = [e for e in endpoints_for(config, self.ref.registry) if e.url != self.endpoint.url]
        return [self.endpoint, *others]


def _pick_error(errors: list[FrakpyError], ref: Reference) -> FrakpyError:
    if not errors:
        return Unavailable(f"no endpoint configured for registry {ref.registry}")
    # Prefer the most telling error: auth, then verification, then not-found, then the last one.
    for kind in (Unauthenticated, DigestMismatch, FailedPrecondition, NotFound):
        for exc in errors:
            if isinstance(exc, kind):
                return exc
    return errors[-1]


def _basic_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _is_tls_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        text = str(seen)
        if "SSL" in text or "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False
