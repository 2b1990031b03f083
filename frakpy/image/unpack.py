"""Apply image layers (tar streams) in order into a directory tree, as overlayfs would see them.

Handles OCI whiteouts (``.wh.<name>`` hides a lower entry, ``.wh..wh..opq`` hides everything a lower
layer put in that directory), ownership, modes (setuid/setgid/sticky too), mtimes, extended
attributes (PAX ``SCHILY.xattr.*``), hard links and symlinks. Device nodes and FIFOs are skipped
with a logged note (pod VMs get their /dev from the guest). Paths are resolved inside the tree
only: ``..`` in an entry name refuses the layer, and symlinks met on the way are resolved as if the
tree were ``/`` so a link to ``/etc`` or ``../../..`` never lets a write leave the tree; the final
component of an entry is never followed. Each layer's uncompressed stream is checked against the
image config's ``diff_id`` when one is given.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import logging
import os
import shutil
import stat
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from frakpy.errors import FailedPrecondition, InvalidArgument
from frakpy.image.blobs import DigestMismatch

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass
class LayerStats:
    entries: int = 0
    whiteouts: int = 0
    skipped_devices: list[str] = field(default_factory=list)
    uncompressed_bytes: int = 0


class _HashingReader(io.RawIOBase):
    def __init__(self, inner: IO[bytes]) -> None:
        self.inner = inner
        self.hasher = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.inner.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.hasher.update(data)
        self.count += n
        return n


def decompressed(raw: IO[bytes], what: str) -> IO[bytes]:
    """Wrap ``raw`` in a decompressor chosen by sniffing: gzip, zstd or plain tar."""
    buffered: Any = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(raw, _CHUNK)
    magic = buffered.peek(4)[:4]
    if magic.startswith(_GZIP_MAGIC):
        return cast(IO[bytes], gzip.GzipFile(fileobj=buffered, mode="rb"))
    if magic == _ZSTD_MAGIC:
        try:
            import zstandard
        except ImportError as exc:
            raise FailedPrecondition(
                f"{what} is zstd-compressed and the zstandard Python package is not installed; pip install zstandard"
            ) from exc
        return cast(IO[bytes], zstandard.ZstdDecompressor().stream_reader(buffered, read_across_frames=True))
    return cast(IO[bytes], buffered)


def _parts(name: str, what: str) -> list[str]:
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArgument(f"{what}: entry {name!r} contains '..' and would escape the root; refusing the layer")
    return parts


class _Tree:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.privileged = os.geteuid() == 0

    def resolve(self, parts: list[str], *, create: bool, what: str) -> list[str] | None:
        """Resolve directory components inside the tree, following symlinks scoped to the root."""
        pending = list(parts)
        resolved: list[str] = []
        hops = 0
        while pending:
            comp = pending.pop(0)
            if comp in ("", "."):
                continue
            if comp == "..":
                if resolved:
                    resolved.pop()
                continue
            path = os.path.join(self.root, *resolved, comp)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                if not create:
                    return None
                os.mkdir(path, 0o755)
                resolved.append(comp)
                continue
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > 40:
                    raise InvalidArgument(f"{what}: too many symlink levels resolving {'/'.join(parts)!r}")
                target = os.readlink(path)
                if target.startswith("/"):
                    resolved = []
                pending = [p for p in target.split("/") if p] + pending
            elif stat.S_ISDIR(st.st_mode):
                resolved.append(comp)
            elif create:
                os.unlink(path)
                os.mkdir(path, 0o755)
                resolved.append(comp)
            else:
                return None
        return resolved

    def abspath(self, rel: list[str]) -> str:
        return os.path.join(self.root, *rel) if rel else str(self.root)


def _remove(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def apply_layer(root: Path, stream: IO[bytes], *, what: str = "layer") -> LayerStats:
    """Apply one uncompressed tar stream onto ``root``."""
    Path(root).mkdir(parents=True, exist_ok=True)
    tree = _Tree(root)
    stats = LayerStats()
    created: set[str] = set()
    dir_times: list[tuple[str, float]] = []
    try:
        tar = tarfile.open(fileobj=stream, mode="r|", errorlevel=2)
    except tarfile.TarError as exc:
        raise InvalidArgument(f"{what} is not a tar archive: {exc}") from exc
    try:
        for member in tar:
            stats.entries += 1
            parts = _parts(member.name, what)
            if not parts:
                _apply_meta(tree, str(tree.root), member, dir_times)
                continue
            base = parts[-1]
            if base.startswith(WHITEOUT_PREFIX):
                stats.whiteouts += 1
                parent = tree.resolve(parts[:-1], create=False, what=what)
                if parent is None:
                    continue
                if base == OPAQUE_MARKER:
                    directory = tree.abspath(parent)
                    for child in os.listdir(directory):
                        if "/".join([*parent, child]) not in created:
                            _remove(os.path.join(directory, child))
                elif base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
                    continue  # other aufs metadata (.wh..wh.plnk and friends)
                else:
                    victim = base[len(WHITEOUT_PREFIX) :]
                    if "/".join([*parent, victim]) not in created:
                        _remove(os.path.join(tree.abspath(parent), victim))
                continue
            parent = tree.resolve(parts[:-1], create=True, what=what)
            assert parent is not None
            rel = [*parent, base]
            path = tree.abspath(rel)
            created.add("/".join(rel))
            if member.isdir():
                try:
                    st = os.lstat(path)
                    if not stat.S_ISDIR(st.st_mode):
                        os.unlink(path)
                        os.mkdir(path, 0o755)
                except FileNotFoundError:
                    os.mkdir(path, 0o755)
            elif member.isreg():
                _remove(path)
                src = tar.extractfile(member)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                try:
                    while src is not None:
                        chunk = src.read(_CHUNK)
                        if not chunk:
                            break
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(fd, view) :]
                finally:
                    os.close(fd)
            elif member.issym():
                _remove(path)
                os.symlink(member.linkname, path)
            elif member.islnk():
                link_parts = _parts(member.linkname, what)
                if not link_parts:
                    raise InvalidArgument(f"{what}: hard link {member.name!r} points at the root")
                link_parent = tree.resolve(link_parts[:-1], create=False, what=what)
                source = tree.abspath([*link_parent, link_parts[-1]]) if link_parent is not None else None
                if source is None or not os.path.lexists(source):
                    raise InvalidArgument(
                        f"{what}: hard link {member.name!r} points at {member.linkname!r}, which is not in the image"
                    )
                if source == path:
                    continue
                _remove(path)
                os.link(source, path, follow_symlinks=False)
                continue  # a hard link shares the target's inode and metadata
            elif member.ischr() or member.isblk() or member.isfifo():
                stats.skipped_devices.append(member.name)
                log.info("%s: skipping device node or FIFO %s (pod VMs provide their own /dev)", what, member.name)
                continue
            else:
                log.info("%s: skipping unsupported tar entry %s (type %r)", what, member.name, member.type)
                continue
            _apply_meta(tree, path, member, dir_times)
    except tarfile.TarError as exc:
        raise InvalidArgument(f"{what} is a damaged tar archive: {exc}") from exc
    finally:
        tar.close()
    for path, mtime in reversed(dir_times):
        os.utime(path, (mtime, mtime), follow_symlinks=False)
    return stats


def _apply_meta(tree: _Tree, path: str, member: tarfile.TarInfo, dir_times: list[tuple[str, float]]) -> None:
    if tree.privileged:
        os.chown(path, member.uid, member.gid, follow_symlinks=False)
    if not member.issym():
        os.chmod(path, member.mode & 0o7777)
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            name = key[len("SCHILY.xattr.") :]
            try:
                os.setxattr(path, name, value.encode("utf-8", "surrogateescape"), follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EPERM, errno.EOPNOTSUPP):
                    raise
                log.info("cannot set xattr %s on %s: %s", name, path, exc)
    if member.isdir():
        dir_times.append((path, member.mtime))
    else:
        os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)


@dataclass
class LayerSource:
    """One layer to apply: the blob file, its digest (for messages) and the expected diff_id."""

    path: Path
    digest: str
    diff_id: str | None = None


def apply_layer_file(root: Path, layer: LayerSource) -> LayerStats:
    what = f"layer {layer.digest}"
    with open(layer.path, "rb") as raw:
        try:
            plain = decompressed(raw, what)
            hashing = _HashingReader(plain)
            stats = apply_layer(root, io.BufferedReader(hashing, _CHUNK), what=what)
            while hashing.read(_CHUNK):
                pass
        except (OSError, EOFError, ValueError) as exc:
            if isinstance(exc, (InvalidArgument, FailedPrecondition)):
                raise
            raise InvalidArgument(f"{what} cannot be decompressed or read: {exc}") from exc
    stats.uncompressed_bytes = hashing.count
    if layer.diff_id and layer.diff_id.startswith("sha256:"):
        got = "sha256:" + hashing.hasher.hexdigest()
        if got != layer.diff_id:
            raise DigestMismatch(
                f"{what}: uncompressed content hashes to {got}, but the image config's diff_id is {layer.diff_id}"
            )
    return stats


def unpack_layers(
    root: Path, layers: Iterable[LayerSource], on_layer: Callable[[str, bool], None] | None = None
) -> list[LayerStats]:
    """Apply every layer in order onto ``root`` (created if missing).

    ``on_layer(digest, done)`` is called before (False) and after (True) each layer.
    """
    Path(root).mkdir(parents=True, exist_ok=True)
    stats = []
    for layer in layers:
        if on_layer is not None:
            on_layer(layer.digest, False)
        stats.append(apply_layer_file(root, layer))
        if on_layer is not None:
            on_layer(layer.digest, True)
    return stats
