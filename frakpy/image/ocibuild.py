"""Build OCI image layouts deterministically: same inputs, same digests.

Layers are PAX tars with entries sorted by path (hard links after the files they point at),
fixed mtimes, empty user/group names, optional xattrs, compressed with gzip (header mtime 0),
zstd or not at all. Whiteouts (``.wh.<name>``) and opaque markers (``.wh..wh..opq``) are plain
entries. An :class:`OCILayout` collects blobs, manifests and an index (``index.json``) and can be
written out as an oci-archive tar or, for one image, a docker-archive (``docker save`` format).
Used by tests, the demo and the pull benchmark.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from frakpy.image.registry import (
    MT_OCI_CONFIG,
    MT_OCI_INDEX,
    MT_OCI_LAYER,
    MT_OCI_LAYER_GZIP,
    MT_OCI_LAYER_ZSTD,
    MT_OCI_MANIFEST,
)

FIXED_MTIME = 1_700_000_000  # 2023-11-14, any fixed value works; not 0 so tools show a real date
REF_NAME = "org.opencontainers.image.ref.name"


@dataclass
class Entry:
    """One tar entry of a layer."""

    path: str
    kind: str = "file"  # file | dir | symlink | hardlink
    data: bytes = b""
    source: Path | None = None
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    target: str = ""
    mtime: int = FIXED_MTIME
    xattrs: dict[str, bytes] = field(default_factory=dict)


def file(
    path: str,
    data: bytes | str = b"",
    *,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    source: Path | None = None,
    xattrs: dict[str, bytes] | None = None,
    mtime: int = FIXED_MTIME,
) -> Entry:
    raw = data.encode() if isinstance(data, str) else data
    return Entry(path, "file", raw, source, mode, uid, gid, xattrs=dict(xattrs or {}), mtime=mtime)


def directory(path: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0, mtime: int = FIXED_MTIME) -> Entry:
    return Entry(path, "dir", mode=mode, uid=uid, gid=gid, mtime=mtime)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, "symlink", mode=0o777, target=target)


def hardlink(path: str, target: str) -> Entry:
    return Entry(path, "hardlink", target=target)


def whiteout(path: str) -> Entry:
    """Hide ``path`` of a lower layer."""
    parent, _, name = path.strip("/").rpartition("/")
    return file(f"{parent}/.wh.{name}" if parent else f".wh.{name}", mode=0o600)


def opaque(directory_path: str) -> Entry:
    """Hide everything lower layers put in ``directory_path``."""
    return file(f"{directory_path.strip('/')}/.wh..wh..opq", mode=0o600)


def from_tree(src: Path, prefix: str = "") -> list[Entry]:
    """Entries for everything under ``src`` (modes, owners, symlinks and hard links kept; mtimes fixed)."""
    entries: list[Entry] = []
    seen: dict[tuple[int, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        for name in sorted(dirnames) + sorted(filenames):
            full = Path(dirpath) / name
            rel = "/".join(p for p in (prefix.strip("/"), str(full.relative_to(src))) if p)
            st = full.lstat()
            if stat.S_ISDIR(st.st_mode):
                entries.append(directory(rel, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid))
            elif stat.S_ISLNK(st.st_mode):
                entries.append(symlink(rel, os.readlink(full)))
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in seen:
                    entries.append(hardlink(rel, seen[key]))
                    continue
                seen[key] = rel
                entries.append(file(rel, source=full, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid))
    return entries


class _HashingWriter(io.RawIOBase):
    def __init__(self, inner: IO[bytes]) -> None:
        self.inner = inner
        self.hasher = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = bytes(data)
        self.hasher.update(view)
        self.size += len(view)
        self.inner.write(view)
        return len(view)


def _with_parents(entries: Iterable[Entry]) -> list[Entry]:
    out = {e.path.strip("/"): e for e in entries}
    for path in list(out):
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            out.setdefault(parent, directory(parent))
    regular = sorted((e for e in out.values() if e.kind != "hardlink"), key=lambda e: e.path.strip("/"))
    links = sorted((e for e in out.values() if e.kind == "hardlink"), key=lambda e: e.path.strip("/"))
    return regular + links


def write_tar(entries: Iterable[Entry], out: IO[bytes]) -> None:
    ordered = _with_parents(entries)
    by_path = {e.path.strip("/"): e for e in ordered}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for entry in ordered:
            info = tarfile.TarInfo(entry.path.strip("/"))
            info.mode, info.uid, info.gid, info.mtime = entry.mode, entry.uid, entry.gid, entry.mtime
            info.uname = info.gname = ""
            if entry.xattrs:
                info.pax_headers = {
                    f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in sorted(entry.xattrs.items())
                }
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, entry.target
                tar.addfile(info)
            elif entry.kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, entry.target.strip("/")
                target = by_path.get(info.linkname)
                if target is not None:
                    # a hard link shares its target's inode: runtimes that apply the link
                    # header's mode (containerd does) must not see a different one
                    info.mode, info.uid, info.gid = target.mode, target.uid, target.gid
                tar.addfile(info)
            elif entry.source is not None:
                info.size = entry.source.stat().st_size
                with open(entry.source, "rb") as f:
                    tar.addfile(info, f)
            else:
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))


@dataclass
class ImageSpec:
    """An image to build: layers (lists of entries), config fields and platform."""

    layers: list[list[Entry]]
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: list[str] = field(
        default_factory=lambda: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    )
    working_dir: str = ""
    user: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    volumes: list[str] = field(default_factory=list)
    exposed_ports: list[str] = field(default_factory=list)
    stop_signal: str = ""
    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""
    created: str = "2023-11-14T22:13:20Z"
    compression: str = "gzip"  # gzip | zstd | none
    compresslevel: int = 6

    @property
    def platform(self) -> dict[str, str]:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out


def _json(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


class OCILayout:
    """An OCI image layout directory being written."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.blob_dir = self.path / "blobs" / "sha256"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        (self.path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self.manifests: list[dict[str, Any]] = []

    def blob_path(self, digest: str) -> Path:
        return self.blob_dir / digest.split(":", 1)[1]

    def read_blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    def add_blob(self, data: bytes, media_type: str) -> dict[str, Any]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not path.exists():
            path.write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def add_layer(
        self, entries: Iterable[Entry], compression: str = "gzip", compresslevel: int = 6
    ) -> tuple[dict[str, Any], str]:
        """Write one layer blob; returns (descriptor, diff_id)."""
        tmp = self.blob_dir / f".layer-{os.getpid()}-{id(entries)}"
        with open(tmp, "wb") as raw:
            compressed = _HashingWriter(raw)
            if compression == "gzip":
                media_type = MT_OCI_LAYER_GZIP
                inner: Any = gzip.GzipFile(
                    fileobj=cast(IO[bytes], compressed),
                    mode="wb",
                    mtime=0,
                    compresslevel=compresslevel,
                    filename="",
                )
            elif compression == "zstd":
                import zstandard

                media_type = MT_OCI_LAYER_ZSTD
                inner = zstandard.ZstdCompressor(level=3).stream_writer(cast(IO[bytes], compressed), closefd=False)
            else:
                media_type, inner = MT_OCI_LAYER, compressed
            plain = _HashingWriter(inner)
            write_tar(entries, cast(IO[bytes], plain))
            if inner is not compressed:
                inner.close()
        digest = "sha256:" + compressed.hasher.hexdigest()
        os.rename(tmp, self.blob_path(digest))
        return {"mediaType": media_type, "digest": digest, "size": compressed.size}, (
            "sha256:" + plain.hasher.hexdigest()
        )

    def add_image(
        self,
        spec: ImageSpec,
        *,
        layer_cache: dict[int, tuple[dict[str, Any], str]] | None = None,
    ) -> dict[str, Any]:
        """Write layers, config and manifest; returns the manifest descriptor (with platform)."""
        layers: list[dict[str, Any]] = []
        diff_ids: list[str] = []
        for entries in spec.layers:
            key = id(entries)
            if layer_cache is not None and key in layer_cache:
                desc, diff_id = layer_cache[key]
            else:
                desc, diff_id = self.add_layer(entries, spec.compression, spec.compresslevel)
                if layer_cache is not None:
                    layer_cache[key] = (desc, diff_id)
            layers.append(desc)
            diff_ids.append(diff_id)
        cfg: dict[str, Any] = {"Env": spec.env}
        for key_name, value in (
            ("Entrypoint", spec.entrypoint),
            ("Cmd", spec.cmd),
            ("WorkingDir", spec.working_dir),
            ("User", spec.user),
            ("Labels", spec.labels),
            ("StopSignal", spec.stop_signal),
        ):
            if value:
                cfg[key_name] = value
        if spec.volumes:
            cfg["Volumes"] = {v: {} for v in spec.volumes}
        if spec.exposed_ports:
            cfg["ExposedPorts"] = {p: {} for p in spec.exposed_ports}
        config = {
            **spec.platform,
            "created": spec.created,
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": spec.created, "created_by": "frakpy ocibuild"} for _ in layers],
        }
        config_desc = self.add_blob(_json(config), MT_OCI_CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST, "config": config_desc, "layers": layers}
        desc = self.add_blob(_json(manifest), MT_OCI_MANIFEST)
        desc["platform"] = spec.platform
        return desc

    def add_index(self, manifests: list[dict[str, Any]]) -> dict[str, Any]:
        index = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": manifests}
        return self.add_blob(_json(index), MT_OCI_INDEX)

    def tag(self, descriptor: dict[str, Any], name: str) -> None:
        """Record ``descriptor`` in index.json under ``name`` (a tag or a full reference)."""
        entry = {k: v for k, v in descriptor.items() if k != "platform"}
        entry["annotations"] = {REF_NAME: name}
        self.manifests = [m for m in self.manifests if (m.get("annotations") or {}).get(REF_NAME) != name]
        self.manifests.append(entry)
        index = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": self.manifests}
        (self.path / "index.json").write_bytes(_json(index))

    def to_archive(self, out: Path) -> Path:
        """Write the layout as an oci-archive tar (deterministic)."""
        with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(p for p in self.path.rglob("*") if not p.name.startswith(".layer-")):
                info = tar.gettarinfo(str(path), arcname=str(path.relative_to(self.path)))
                info.mtime, info.uid, info.gid, info.uname, info.gname = FIXED_MTIME, 0, 0, "", ""
                if info.isfile():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
        return out

    def to_docker_archive(self, manifest_digest: str, out: Path, repo_tags: list[str]) -> Path:
        """Write one image as a ``docker save`` tar: manifest.json, <config>.json, <n>/layer.tar (plain)."""
        manifest = json.loads(self.read_blob(manifest_digest))
        config_hex = manifest["config"]["digest"].split(":", 1)[1]
        layer_names = []
        with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:

            def add(name: str, data: bytes) -> None:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), FIXED_MTIME, 0o644
                tar.addfile(info, io.BytesIO(data))

            add(f"{config_hex}.json", self.read_blob(manifest["config"]["digest"]))
            for i, layer in enumerate(manifest["layers"]):
                data = self.read_blob(layer["digest"])
                if layer["mediaType"].endswith("+gzip"):
                    data = gzip.decompress(data)
                elif layer["mediaType"].endswith("+zstd"):
                    import zstandard

                    data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
                name = f"{i:03d}/layer.tar"
                add(name, data)
                layer_names.append(name)
            add(
                "manifest.json",
                _json([{"Config": f"{config_hex}.json", "RepoTags": repo_tags, "Layers": layer_names}]),
            )
        return out
