"""Push an OCI image layout to a registry (the tests' and benchmark's push helper).

Blobs first (``HEAD`` skips those the registry has; uploads are monolithic ``POST`` + ``PUT
?digest=`` or chunked ``PATCH`` with ``Content-Range`` then ``PUT``), then manifests by digest,
then the tagged manifest or index by tag. Uses :class:`RegistryClient` for TLS, retries and
auth (scope ``pull,push``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx

from frakpy.errors import FrakpyError, InvalidArgument, Unavailable
from frakpy.image import reference as refs
from frakpy.image.registry import (
    ANONYMOUS,
    INDEX_TYPES,
    Credentials,
    Endpoint,
    PullConfig,
    RegistryClient,
)

REF_NAME = "org.opencontainers.image.ref.name"


def origin_endpoint(config: PullConfig, registry: str) -> Endpoint:
    reg = config.registry(registry)
    return Endpoint(url=f"{'http' if reg.insecure else 'https'}://{registry}", mirror=False, registry=reg)


class _Pusher:
    def __init__(
        self,
        client: RegistryClient,
        endpoint: Endpoint,
        repository: str,
        creds: Credentials,
        chunk_size: int | None,
    ) -> None:
        self.client, self.endpoint, self.repo, self.creds = client, endpoint, repository, creds
        self.chunk_size = chunk_size
        self.uploaded: list[str] = []
        self.skipped: list[str] = []

    async def _req(
        self,
        method: str,
        path: str = "",
        *,
        url: str | None = None,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        return await self.client.request(
            self.endpoint,
            self.creds,
            self.repo,
            method,
            path,
            url=url,
            headers=headers,
            content=content,
            actions="pull,push",
        )

    def _check(self, response: httpx.Response, ok: tuple[int, ...], what: str) -> None:
        if response.status_code not in ok:
            raise Unavailable(
                f"push {what} to {self.endpoint.url}/{self.repo}: HTTP {response.status_code} {response.text[:300]}"
            )

    async def blob(self, digest: str, data: bytes) -> None:
        head = await self._req("HEAD", f"{self.repo}/blobs/{digest}")
        if head.status_code == 200:
            self.skipped.append(digest)
            return
        start = await self._req("POST", f"{self.repo}/blobs/uploads/")
        self._check(start, (202,), f"blob {digest} (start upload)")
        location = urljoin(self.endpoint.v2(""), start.headers["location"])
        if self.chunk_size:
            offset = 0
            while offset < len(data):
                chunk = data[offset : offset + self.chunk_size]
                response = await self._req(
                    "PATCH",
                    url=location,
                    content=chunk,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                    },
                )
                self._check(response, (202,), f"blob {digest} (chunk at {offset})")
                location = urljoin(location, response.headers["location"])
                offset += len(chunk)
            body = b""
        else:
            body = data
        final = str(httpx.URL(location).copy_merge_params({"digest": digest}))
        response = await self._req("PUT", url=final, content=body, headers={"Content-Type": "application/octet-stream"})
        self._check(response, (201,), f"blob {digest}")
        self.uploaded.append(digest)

    async def manifest(self, reference: str, media_type: str, raw: bytes) -> None:
        response = await self._req(
            "PUT", f"{self.repo}/manifests/{reference}", content=raw, headers={"Content-Type": media_type}
        )
        self._check(response, (201,), f"manifest {reference}")


async def push_layout(
    layout: Path | str,
    target: str,
    *,
    tag_name: str | None = None,
    client: RegistryClient | None = None,
    config: PullConfig | None = None,
    creds: Credentials = ANONYMOUS,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """Push the image tagged ``tag_name`` (default: the only/first one) in ``layout`` as ``target``.

    Returns ``{"digest": <pushed top-level digest>, "uploaded": [...], "skipped": [...]}``.
    """
    layout = Path(layout)
    ref = refs.parse(target)
    if ref.tag is None:
        raise InvalidArgument(f"push target {target} needs a tag")
    index = json.loads((layout / "index.json").read_text())
    entries = index.get("manifests") or []
    chosen = next(
        (m for m in entries if tag_name is None or (m.get("annotations") or {}).get(REF_NAME) == tag_name),
        None,
    )
    if chosen is None:
        raise InvalidArgument(f"{layout} has no image tagged {tag_name}")

    def read(digest: str) -> bytes:
        return (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()

    own = client is None
    client = client or RegistryClient(config or PullConfig())
    pusher = _Pusher(client, origin_endpoint(client.config, ref.registry), ref.repository, creds, chunk_size)
    try:

        async def push_manifest(desc: dict[str, Any], reference: str) -> None:
            raw = read(desc["digest"])
            doc = json.loads(raw)
            media_type = desc.get("mediaType") or doc.get("mediaType")
            if media_type in INDEX_TYPES:
                for child in doc["manifests"]:
                    await push_manifest(child, child["digest"])
            else:
                for blob in [doc["config"], *doc["layers"]]:
                    await pusher.blob(blob["digest"], read(blob["digest"]))
            await pusher.manifest(reference, media_type, raw)

        await push_manifest(chosen, ref.tag)
    except FrakpyError:
        raise
    finally:
        if own:
            await client.aclose()
    return {"digest": chosen["digest"], "uploaded": pusher.uploaded, "skipped": pusher.skipped}
