"""The image store: pull, import, list, status and remove images; the CRI ImageService sits on it.

Layout under ``state_dir``: ``blobs/sha256/<hex>`` (manifests, configs, compressed layers),
``fsimages/<hex>.erofs`` (one read-only filesystem per image id, hot-plugged into pod VMs) and
``tmp/`` (trees being unpacked). The database holds one ``images`` row per image id (the config
digest, as containerd reports it) and one ``image_refs`` row per repo tag
(``docker.io/library/busybox:latest``) and repo digest (``docker.io/library/busybox@sha256:…``).

Semantics follow containerd's CRI plugin:

* A tag that moves to another image leaves the old image in place, untagged, until removed.
* ``remove`` by tag, digest or id removes the image with all its references, as containerd's
  RemoveImage does; an image used by a container (the ``in_use`` callback) is refused with
  FailedPrecondition. Blobs and fs images nothing references any more are deleted.
* ``status`` of an unknown image is None, and removing an unknown image succeeds.
* Concurrent pulls share work: one download per layer digest, one fs image build per image id.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import os
import re
import shutil
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from frakpy.errors import FailedPrecondition, InvalidArgument, NotFound
from frakpy.image import reference as refs
from frakpy.image.blobs import BlobStore, check_digest, sha256_digest
from frakpy.image.fsimage import build_image_fs
from frakpy.image.progress import ProgressHub
from frakpy.image.reference import Reference
from frakpy.image.registry import (
    INDEX_TYPES,
    Credentials,
    Platform,
    PullConfig,
    RegistryClient,
    Resolved,
    classify_manifest,
    select_manifest,
)
from frakpy.image.unpack import LayerSource

log = logging.getLogger(__name__)

_HEX_PREFIX_RE = re.compile(r"^(?:sha256:)?([0-9a-f]{3,64})$")


@dataclass
class ImageRecord:
    """One image as CRI's ImageStatus reports it, plus what the runtime needs to run it."""

    id: str
    repo_tags: list[str] = field(default_factory=list)
    repo_digests: list[str] = field(default_factory=list)
    size: int = 0
    """Bytes of the compressed layers plus config (what containerd reports)."""
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    working_dir: str = ""
    user: str = ""
    uid: int | None = None
    """Numeric user from the config's User (``1234`` or ``1234:5``); None if absent or a name."""
    username: str = ""
    """User name from the config's User when it is not numeric (``frak`` or ``frak:grp``)."""
    volumes: list[str] = field(default_factory=list)
    exposed_ports: list[str] = field(default_factory=list)
    stop_signal: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    created: str = ""
    platform: str = ""
    pinned: bool = False
    fsimage_path: str = ""
    fsimage_size: int = 0
    manifest_digest: str | None = None
    index_digest: str | None = None
    layers: list[dict[str, Any]] = field(default_factory=list)
    diff_ids: list[str] = field(default_factory=list)

    def blob_digests(self) -> set[str]:
        out = {self.id, *(layer["digest"] for layer in self.layers)}
        out.update(d for d in (self.manifest_digest, self.index_digest) if d)
        return out


@dataclass
class PullProgress:
    """One progress event of a pull, for a CLI progress bar per layer.

    ``phase`` is one of: ``resolved`` (digest = manifest, total = number of layers), ``config``
    (digest = image id), ``waiting`` / ``exists`` / ``downloading`` / ``downloaded`` (digest = layer,
    current/total in bytes), ``resumed`` (digest = layer, current = bytes kept from an interrupted
    download), ``unpacking`` (digest = image id), ``layer-unpacking`` / ``layer-unpacked`` (digest =
    layer) and ``ready`` (digest = image id, total = fs image size). Every pull also feeds
    :attr:`ImageStore.progress` (what ``frakpy.v1.Progress/WatchPull`` streams).

    With rich::

        with Progress() as bars:
            tasks = {}
            def on_progress(ev):
                if ev.phase in ("waiting", "exists", "downloading", "downloaded"):
                    if ev.digest not in tasks:
                        tasks[ev.digest] = bars.add_task(ev.digest[7:19], total=ev.total)
                    bars.update(tasks[ev.digest], completed=ev.current)
            await store.pull(ref, auth, progress=on_progress)
    """

    ref: str
    phase: str
    digest: str
    current: int = 0
    total: int = 0


ProgressCallback = Callable[[PullProgress], None]


@dataclass
class FsUsage:
    """ImageFsInfo: bytes and inodes used by image data and where it lives."""

    mountpoint: str
    used_bytes: int
    inodes_used: int
    timestamp_ns: int


def user_fields(user: str) -> tuple[int | None, str]:
    """(uid, username) from an image config's User, as CRI reports them."""
    name = (user or "").split(":", 1)[0]
    if not name:
        return None, ""
    if name.isdigit():
        return int(name), ""
    return None, name


def _parse_config(raw: bytes, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise FailedPrecondition(f"image config of {where} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise FailedPrecondition(f"image config of {where} is not a JSON object")
    return doc


class ImageStore:
    """Façade over blobs, registries, fs images and the database.

    ``in_use(image_id) -> bool`` (from the lead's container store) blocks removing an image a
    container uses; ``compression`` is the mkfs.erofs compressor (``lz4``, ``lz4hc`` or ``""``).
    """

    def __init__(
        self,
        db: Any,
        state_dir: Path | str,
        registry_config: PullConfig | None = None,
        *,
        in_use: Callable[[str], bool] | None = None,
        client: RegistryClient | None = None,
        compression: str = "lz4",
    ) -> None:
        self.db = db
        self.root = Path(state_dir)
        self.config = registry_config or PullConfig()
        self.client = client or RegistryClient(self.config)
        self.blobs = BlobStore(self.root / "blobs")
        self.fsimage_dir = self.root / "fsimages"
        self.fsimage_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir = self.root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.tmp_dir.glob("unpack-*"):
            shutil.rmtree(stale, ignore_errors=True)
        for stale in self.fsimage_dir.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        self.in_use = in_use or (lambda _image_id: False)
        self.compression = compression
        self._downloads: dict[str, asyncio.Future[str]] = {}
        self._listeners: dict[str, builtins.list[Callable[[int, bool], None]]] = {}
        self._builds: dict[str, asyncio.Future[int]] = {}
        self._leases: Counter[str] = Counter()
        self.progress = ProgressHub()
        """Live state of running pulls by normalised reference (for WatchPull)."""

    async def aclose(self) -> None:
        await self.client.aclose()

    # ------------------------------------------------------------------ queries

    def fsimage_path(self, image_id: str) -> Path:
        """Where the EROFS image of ``image_id`` lives (whether or not it exists yet)."""
        return self.fsimage_dir / f"{check_digest(refs.normalize_id(image_id)).lower()}.erofs"

    def _load(self, image_id: str) -> ImageRecord | None:
        rows = self.db.query("SELECT doc FROM images WHERE id = ?", (image_id,))
        if not rows:
            return None
        doc = json.loads(rows[0]["doc"])
        known = {f for f in ImageRecord.__dataclass_fields__}
        record = ImageRecord(**{k: v for k, v in doc.items() if k in known})
        ref_rows = self.db.query("SELECT ref FROM image_refs WHERE image_id = ? ORDER BY ref", (image_id,))
        record.repo_tags = [r["ref"] for r in ref_rows if "@" not in r["ref"]]
        record.repo_digests = [r["ref"] for r in ref_rows if "@" in r["ref"]]
        record.fsimage_path = str(self.fsimage_path(image_id))
        return record

    def resolve_id(self, ref_or_id: str) -> str | None:
        """The image id that a tag, digest reference, full id or unique id prefix names, else None."""
        text = (ref_or_id or "").strip()
        if not text:
            raise InvalidArgument("image reference is empty")
        if refs.is_image_id(text):
            image_id = refs.normalize_id(text)
            if self.db.query("SELECT 1 FROM images WHERE id = ?", (image_id,)):
                return image_id
        try:
            ref = refs.parse(text)
        except InvalidArgument:
            ref = None
        if ref is not None:
            key = ref.with_digest(ref.digest) if ref.digest else str(ref)
            rows = self.db.query("SELECT image_id FROM image_refs WHERE ref = ?", (key,))
            if rows:
                return str(rows[0]["image_id"])
        match = _HEX_PREFIX_RE.match(text)
        if match:
            rows = self.db.query("SELECT id FROM images WHERE id LIKE ?", (f"sha256:{match.group(1)}%",))
            if len(rows) == 1:
                return str(rows[0]["id"])
        return None

    def status(self, ref_or_id: str) -> ImageRecord | None:
        """The image named by ``ref_or_id`` (tag, digest ref or id), or None when absent."""
        image_id = self.resolve_id(ref_or_id)
        return self._load(image_id) if image_id else None

    def list(self, filter: str | None = None) -> builtins.list[ImageRecord]:  # noqa: A002 - CRI's name
        """All images, or the one ``filter`` (CRI ImageFilter.image.image) names."""
        if filter:
            record = self.status(filter)
            return [record] if record else []
        rows = self.db.query("SELECT id FROM images ORDER BY id")
        return [r for r in (self._load(str(row["id"])) for row in rows) if r is not None]

    def fs_info(self) -> FsUsage:
        """Bytes (allocated blocks) and inodes used by blobs and fs images."""
        used = inodes = 0
        for top in (self.blobs.root, self.fsimage_dir, self.tmp_dir):
            for dirpath, dirnames, filenames in os.walk(top):
                for name in [*dirnames, *filenames]:
                    try:
                        st = os.lstat(os.path.join(dirpath, name))
                    except FileNotFoundError:
                        continue
                    used += st.st_blocks * 512
                    inodes += 1
        return FsUsage(mountpoint=str(self.root), used_bytes=used, inodes_used=inodes, timestamp_ns=time.time_ns())

    def set_pinned(self, ref_or_id: str, pinned: bool = True) -> None:
        """Pin an image (e.g. the sandbox image) so kubelet's image GC leaves it alone."""
        image_id = self.resolve_id(ref_or_id)
        if image_id is None:
            raise NotFound(f"image {ref_or_id} is not present; pull it first", kind="image", ident=ref_or_id)
        with self.db.tx() as cur:
            doc = json.loads(cur.execute("SELECT doc FROM images WHERE id = ?", (image_id,)).fetchone()[0])
            doc["pinned"] = pinned
            cur.execute("UPDATE images SET doc = ? WHERE id = ?", (json.dumps(doc), image_id))

    # ------------------------------------------------------------------ removal and GC

    def remove(self, ref_or_id: str) -> None:
        """Remove the image with all its tags and digests; unknown images are not an error."""
        image_id = self.resolve_id(ref_or_id)
        if image_id is None:
            return
        if self.in_use(image_id):
            raise FailedPrecondition(
                f"image {ref_or_id} ({image_id}) is used by a container; remove the container first",
                kind="image",
                ident=image_id,
            )
        with self.db.tx() as cur:
            cur.execute("DELETE FROM image_refs WHERE image_id = ?", (image_id,))
            cur.execute("DELETE FROM images WHERE id = ?", (image_id,))
        self.gc()

    def gc(self) -> tuple[int, int]:
        """Delete blobs and fs images that no image and no running pull references."""
        keep: set[str] = set(self._leases)
        ids: set[str] = set(self._leases)
        for row in self.db.query("SELECT id, doc FROM images"):
            record = ImageRecord(
                **{k: v for k, v in json.loads(row["doc"]).items() if k in ImageRecord.__dataclass_fields__}
            )
            keep |= record.blob_digests()
            ids.add(str(row["id"]))
        count, freed = self.blobs.gc(keep)
        for path in self.fsimage_dir.glob("*.erofs"):
            if f"sha256:{path.stem}" not in ids:
                freed += path.stat().st_size
                path.unlink(missing_ok=True)
                count += 1
        return count, freed

    @contextmanager
    def _lease(self, digests: set[str]) -> Iterator[None]:
        self._leases.update(digests)
        try:
            yield
        finally:
            self._leases.subtract(digests)
            self._leases += Counter()  # drop zero counts

    # ------------------------------------------------------------------ pull

    async def pull(self, ref: str, auth: Any = None, progress: ProgressCallback | None = None) -> ImageRecord:
        """Pull ``ref`` and return once its fs image is ready.

        ``auth`` is a :class:`Credentials`, a CRI ``AuthConfig`` or None (anonymous).
        """
        parsed = refs.parse(ref)
        creds = auth if isinstance(auth, Credentials) else Credentials.from_cri(auth)
        state = self.progress.begin(str(parsed))

        def notify(event: PullProgress) -> None:
            state.apply(event)
            if progress is not None:
                progress(event)

        try:
            record = await self._pull(parsed, creds, notify)
        except BaseException as exc:
            self.progress.end(state, exc)
            raise
        self.progress.end(state)
        return record

    async def _pull(self, parsed: Reference, creds: Credentials, notify: ProgressCallback) -> ImageRecord:
        resolved = await self.client.resolve(parsed, creds)
        config_desc = resolved.config_descriptor
        image_id = config_desc["digest"]
        check_digest(image_id)
        layers = resolved.layers
        notify(PullProgress(str(parsed), "resolved", resolved.manifest.digest, 0, len(layers)))
        notify(PullProgress(str(parsed), "config", image_id))
        lease = {image_id, resolved.manifest.digest, *(layer["digest"] for layer in layers)}
        if resolved.index:
            lease.add(resolved.index.digest)
        with self._lease(lease):
            await self.client.fetch_blob(resolved, creds, config_desc, self.blobs)
            config = _parse_config(self.blobs.read(image_id), str(parsed))
            self._check_platform(config, resolved.platform, str(parsed))
            diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
            if len(diff_ids) != len(layers):
                raise FailedPrecondition(
                    f"image {parsed}: manifest has {len(layers)} layers but the config lists {len(diff_ids)} diff_ids"
                )
            for layer in layers:
                size = int(layer.get("size") or 0)
                phase = "exists" if self.blobs.has(layer["digest"]) else "waiting"
                notify(PullProgress(str(parsed), phase, layer["digest"], size if phase == "exists" else 0, size))
            # Let every layer download settle before reporting a failure: finished layers stay
            # in the blob store for the retry, and no download of this pull outlives it.
            results = await asyncio.gather(
                *(self._download(resolved, creds, layer, str(parsed), notify) for layer in layers),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            self.blobs.put_bytes(resolved.manifest.raw, resolved.manifest.digest)
            if resolved.index:
                self.blobs.put_bytes(resolved.index.raw, resolved.index.digest)
            notify(PullProgress(str(parsed), "unpacking", image_id))
            fs_size = await self._ensure_fsimage(image_id, layers, diff_ids, notify=notify, ref=str(parsed))
            names = [t for t in [parsed.with_tag()] if t and not parsed.digest]
            record = self._commit(
                image_id=image_id,
                config=config,
                config_size=int(config_desc.get("size") or 0),
                layers=layers,
                diff_ids=diff_ids,
                manifest_digest=resolved.manifest.digest,
                index_digest=resolved.index.digest if resolved.index else None,
                tags=names,
                repo_digests=[parsed.with_digest(resolved.repo_digest)],
                platform=str(resolved.platform),
                fs_size=fs_size,
            )
        notify(PullProgress(str(parsed), "ready", image_id, fs_size, fs_size))
        return record

    @staticmethod
    def _check_platform(config: dict[str, Any], platform: Platform, where: str) -> None:
        os_name, arch = config.get("os"), config.get("architecture")
        if os_name and arch:
            got = Platform.from_descriptor({"os": os_name, "architecture": arch, "variant": config.get("variant")})
            if not platform.matches(got, strict_variant=False):
                raise FailedPrecondition(
                    f"image {where} is built for {got}, this node pulls {platform}; use a multi-platform "
                    "image or one built for this platform"
                )

    async def _download(
        self,
        resolved: Resolved,
        creds: Credentials,
        layer: dict[str, Any],
        ref: str,
        notify: ProgressCallback,
    ) -> None:
        digest = layer["digest"]
        size = int(layer.get("size") or 0)
        if self.blobs.has(digest):
            return
        listeners = self._listeners.setdefault(digest, [])

        def listener(done: int, resumed: bool = False) -> None:
            notify(PullProgress(ref, "resumed" if resumed else "downloading", digest, done, size))

        listeners.append(listener)
        try:
            future = self._downloads.get(digest)
            if future is None:
                future = asyncio.ensure_future(self._download_task(resolved, creds, layer))
                self._downloads[digest] = future
                future.add_done_callback(lambda _f: self._downloads.pop(digest, None))
                future.add_done_callback(_consume)
            await asyncio.shield(future)
        finally:
            listeners.remove(listener)
        notify(PullProgress(ref, "downloaded", digest, size, size))

    async def _download_task(self, resolved: Resolved, creds: Credentials, layer: dict[str, Any]) -> str:
        digest = layer["digest"]

        def fan_out(done: int, resumed: bool = False) -> None:
            for cb in list(self._listeners.get(digest, [])):
                cb(done, resumed)

        async with self.client.download_slots:
            if self.blobs.has(digest):
                return str(digest)
            return await self.client.fetch_blob(resolved, creds, layer, self.blobs, progress=fan_out)

    async def _ensure_fsimage(
        self,
        image_id: str,
        layers: builtins.list[dict[str, Any]],
        diff_ids: builtins.list[str],
        *,
        notify: ProgressCallback | None = None,
        ref: str = "",
    ) -> int:
        out = self.fsimage_path(image_id)
        if out.exists():
            return out.stat().st_size
        future = self._builds.get(image_id)
        if future is None:
            sources = [
                LayerSource(self.blobs.path(layer["digest"]), layer["digest"], diff_id)
                for layer, diff_id in zip(layers, diff_ids, strict=True)
            ]
            on_layer = None
            if notify is not None:
                loop = asyncio.get_running_loop()

                def on_layer(digest: str, done: bool) -> None:  # called from the build thread
                    event = PullProgress(ref, "layer-unpacked" if done else "layer-unpacking", digest)
                    loop.call_soon_threadsafe(notify, event)

            future = asyncio.ensure_future(
                asyncio.to_thread(
                    build_image_fs,
                    sources,
                    out,
                    image_id=image_id,
                    work_dir=self.tmp_dir,
                    compression=self.compression,
                    on_layer=on_layer,
                )
            )
            self._builds[image_id] = future
            future.add_done_callback(lambda _f: self._builds.pop(image_id, None))
            future.add_done_callback(_consume)
        return await asyncio.shield(future)

    def _commit(
        self,
        *,
        image_id: str,
        config: dict[str, Any],
        config_size: int,
        layers: builtins.list[dict[str, Any]],
        diff_ids: builtins.list[str],
        manifest_digest: str | None,
        index_digest: str | None,
        tags: builtins.list[str],
        repo_digests: builtins.list[str],
        platform: str,
        fs_size: int,
        annotations: dict[str, str] | None = None,
    ) -> ImageRecord:
        cfg = config.get("config") or {}
        uid, username = user_fields(cfg.get("User") or "")
        record = ImageRecord(
            id=image_id,
            size=config_size + sum(int(layer.get("size") or 0) for layer in layers),
            entrypoint=list(cfg.get("Entrypoint") or []),
            cmd=list(cfg.get("Cmd") or []),
            env=list(cfg.get("Env") or []),
            working_dir=cfg.get("WorkingDir") or "",
            user=cfg.get("User") or "",
            uid=uid,
            username=username,
            volumes=sorted((cfg.get("Volumes") or {}).keys()),
            exposed_ports=sorted((cfg.get("ExposedPorts") or {}).keys()),
            stop_signal=cfg.get("StopSignal") or "",
            labels=dict(cfg.get("Labels") or {}),
            annotations=dict(annotations or {}),
            created=str(config.get("created") or ""),
            platform=platform,
            fsimage_size=fs_size,
            manifest_digest=manifest_digest,
            index_digest=index_digest,
            layers=[
                {"digest": x["digest"], "size": int(x.get("size") or 0), "mediaType": x.get("mediaType", "")}
                for x in layers
            ],
            diff_ids=diff_ids,
        )
        with self.db.tx() as cur:
            row = cur.execute("SELECT doc FROM images WHERE id = ?", (image_id,)).fetchone()
            if row is not None:
                record.pinned = bool(json.loads(row[0]).get("pinned", False))
            doc = asdict(record)
            for transient in ("repo_tags", "repo_digests", "fsimage_path"):
                doc.pop(transient)
            cur.execute(
                "INSERT INTO images (id, doc) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET doc = excluded.doc",
                (image_id, json.dumps(doc, sort_keys=True)),
            )
            for name in [*tags, *repo_digests]:
                cur.execute(
                    "INSERT INTO image_refs (ref, image_id) VALUES (?, ?) "
                    "ON CONFLICT(ref) DO UPDATE SET image_id = excluded.image_id",
                    (name, image_id),
                )
        loaded = self._load(image_id)
        assert loaded is not None
        return loaded

    # ------------------------------------------------------------------ import

    async def import_archive(self, path: Path | str, *, name: str | None = None) -> builtins.list[ImageRecord]:
        """Import an OCI layout directory, an oci-archive tar or a docker-archive tar (``docker save``).

        Names come from the archive (``org.opencontainers.image.ref.name`` /
        ``io.containerd.image.name`` annotations, ``RepoTags``); ``name`` (``registry/repo``) turns a
        bare tag annotation such as ``latest`` into a full reference. Returns the imported images.
        """
        path = Path(path)
        if not path.exists():
            raise NotFound(f"archive {path} does not exist", kind="archive", ident=str(path))
        base = refs.parse(name) if name else None
        with _ArchiveReader.open(path) as reader:
            if reader.exists("index.json"):
                return await self._import_oci(reader, base, str(path))
            if reader.exists("manifest.json"):
                return await self._import_docker(reader, str(path))
        raise InvalidArgument(
            f"{path} is neither an OCI layout (index.json), an oci-archive nor a docker-archive (manifest.json)"
        )

    def _ingest_from(
        self, reader: _ArchiveReader, member: str, digest: str | None, size: int | None, where: str
    ) -> str:
        if digest and self.blobs.has(digest):
            return digest
        with reader.open_member(member) as f:
            got, _ = self.blobs.ingest_file(f, digest, size, source=where)
        return got

    async def _import_oci(
        self, reader: _ArchiveReader, base: Reference | None, where: str
    ) -> builtins.list[ImageRecord]:
        index = json.loads(reader.read("index.json"))
        out: builtins.list[ImageRecord] = []
        for desc in index.get("manifests") or []:
            annotations = desc.get("annotations") or {}
            ref_name = annotations.get("io.containerd.image.name") or annotations.get(
                "org.opencontainers.image.ref.name", ""
            )
            target = self._oci_name(ref_name, base)
            top_digest = desc["digest"]
            raw = reader.read(_blob_member(top_digest))
            if sha256_digest(raw) != top_digest:
                raise InvalidArgument(f"{where}: blob {top_digest} does not match its digest")
            media_type, doc = classify_manifest(raw, desc.get("mediaType", ""), f"{where} {top_digest}")
            index_digest, index_raw = None, None
            manifest_digest, manifest_raw = top_digest, raw
            if media_type in INDEX_TYPES:
                chosen = select_manifest(doc, self.client.platform, f"{where} {top_digest}")
                index_digest, index_raw = top_digest, raw
                manifest_digest = chosen["digest"]
                manifest_raw = reader.read(_blob_member(manifest_digest))
                if sha256_digest(manifest_raw) != manifest_digest:
                    raise InvalidArgument(f"{where}: blob {manifest_digest} does not match its digest")
                _mt, doc = classify_manifest(manifest_raw, chosen.get("mediaType", ""), where)
            config_desc, layers = doc["config"], doc["layers"]
            image_id = config_desc["digest"]
            lease = {image_id, manifest_digest, *(x["digest"] for x in layers)}
            with self._lease(lease | ({index_digest} if index_digest else set())):
                for blob in [config_desc, *layers]:
                    self._ingest_from(reader, _blob_member(blob["digest"]), blob["digest"], blob.get("size"), where)
                config = _parse_config(self.blobs.read(image_id), where)
                self._check_platform(config, self.client.platform, where)
                diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
                self.blobs.put_bytes(manifest_raw, manifest_digest)
                if index_raw is not None and index_digest:
                    self.blobs.put_bytes(index_raw, index_digest)
                fs_size = await self._ensure_fsimage(image_id, layers, diff_ids)
                out.append(
                    self._commit(
                        image_id=image_id,
                        config=config,
                        config_size=int(config_desc.get("size") or 0),
                        layers=layers,
                        diff_ids=diff_ids,
                        manifest_digest=manifest_digest,
                        index_digest=index_digest,
                        tags=[target.with_tag()] if target and target.with_tag() else [],  # type: ignore[list-item]
                        repo_digests=[target.with_digest(top_digest)] if target else [],
                        platform=str(self.client.platform),
                        fs_size=fs_size,
                    )
                )
        return out

    @staticmethod
    def _oci_name(ref_name: str, base: Reference | None) -> Reference | None:
        if not ref_name:
            return base
        if "/" in ref_name or ":" in ref_name or "@" in ref_name:
            return refs.parse(ref_name)
        if base is not None:
            return refs.parse(f"{base.name}:{ref_name}")
        return None

    async def _import_docker(self, reader: _ArchiveReader, where: str) -> builtins.list[ImageRecord]:
        entries = json.loads(reader.read("manifest.json"))
        out: builtins.list[ImageRecord] = []
        for entry in entries:
            config_digest = self._ingest_from(reader, entry["Config"], None, None, where)
            config = _parse_config(self.blobs.read(config_digest), where)
            self._check_platform(config, self.client.platform, where)
            diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
            layers: builtins.list[dict[str, Any]] = []
            with self._lease({config_digest}):
                for member in entry.get("Layers") or []:
                    digest = self._ingest_from(reader, member, None, None, where)
                    layers.append(
                        {
                            "digest": digest,
                            "size": self.blobs.size(digest),
                            "mediaType": "application/vnd.docker.image.rootfs.diff.tar",
                        }
                    )
                with self._lease({x["digest"] for x in layers}):
                    if len(diff_ids) != len(layers):
                        raise InvalidArgument(f"{where}: {len(layers)} layers but {len(diff_ids)} diff_ids in config")
                    fs_size = await self._ensure_fsimage(config_digest, layers, diff_ids)
                    tags = [str(refs.parse(t)) for t in entry.get("RepoTags") or []]
                    out.append(
                        self._commit(
                            image_id=config_digest,
                            config=config,
                            config_size=self.blobs.size(config_digest),
                            layers=layers,
                            diff_ids=diff_ids,
                            manifest_digest=None,
                            index_digest=None,
                            tags=tags,
                            repo_digests=[],
                            platform=str(self.client.platform),
                            fs_size=fs_size,
                        )
                    )
        return out


def _consume(future: asyncio.Future[Any]) -> None:
    """Mark a shared task's error as seen: its waiters (if any are left) got it already."""
    if not future.cancelled():
        future.exception()


def _blob_member(digest: str) -> str:
    return f"blobs/sha256/{check_digest(digest)}"


class _ArchiveReader:
    """Read members of an OCI layout directory or a (possibly compressed) tar archive."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tar: tarfile.TarFile | None = None
        self.members: dict[str, tarfile.TarInfo] = {}
        if path.is_file():
            try:
                self.tar = tarfile.open(path, "r:*")
            except tarfile.TarError as exc:
                raise InvalidArgument(f"{path} is not a tar archive: {exc}") from exc
            for member in self.tar.getmembers():
                self.members[_member_name(member.name)] = member

    @classmethod
    @contextmanager
    def open(cls, path: Path) -> Iterator[_ArchiveReader]:
        reader = cls(path)
        try:
            yield reader
        finally:
            if reader.tar is not None:
                reader.tar.close()

    def _dir_path(self, name: str) -> Path:
        if ".." in Path(name).parts:
            raise InvalidArgument(f"{self.path}: member {name!r} escapes the archive")
        return self.path / name

    def exists(self, name: str) -> bool:
        if self.tar is None:
            return self._dir_path(name).is_file()
        return name in self.members

    def open_member(self, name: str) -> IO[bytes]:
        if self.tar is None:
            try:
                return open(self._dir_path(name), "rb")
            except FileNotFoundError:
                raise InvalidArgument(f"{self.path}: {name} is missing") from None
        member = self.members.get(name)
        if member is not None and member.islnk():
            member = self.members.get(_member_name(member.linkname))
        f = self.tar.extractfile(member) if member is not None else None
        if f is None:
            raise InvalidArgument(f"{self.path}: {name} is missing or not a regular file")
        return f

    def read(self, name: str) -> bytes:
        with self.open_member(name) as f:
            return f.read()


def _member_name(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")
