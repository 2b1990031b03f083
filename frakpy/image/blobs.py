"""Content-addressed blob store: ``<state_dir>/blobs/sha256/<hex>``.

A blob only ever appears under its final name complete and verified: writers stream into a
temporary file in the same directory while hashing, fsync it, compare digest and size, and rename
it into place (atomic on one filesystem). A mismatch removes the temporary file and raises
:class:`DigestMismatch`. Stale temporaries from a crash are removed when the store opens.

Registry downloads write to a *partial* file named by the digest (``.partial-<hex>``) instead,
which survives an interrupted transfer (and a daemon restart), so the next attempt asks for the
rest with an HTTP Range request (:meth:`BlobStore.open_partial`). Resuming re-reads the partial
file to rebuild the hash state; the full digest is still checked before the rename. Partials
older than :data:`PARTIAL_MAX_AGE_S` are removed when the store opens, and :meth:`BlobStore.gc`
removes those of digests nothing keeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, BinaryIO

from frakpy.errors import InvalidArgument, NotFound, Unavailable

_DIGEST_RE = re.compile(r"^sha256:([0-9a-f]{64})$")
_TMP_PREFIX = ".ingest-"
_PARTIAL_PREFIX = ".partial-"
PARTIAL_MAX_AGE_S = 24 * 3600
"""Partial downloads not touched for this long are removed when the store opens."""


class DigestMismatch(Unavailable):
    """Content did not hash to the digest (or size) it was announced with; nothing was stored."""


def check_digest(digest: str) -> str:
    """Return the hex part of a ``sha256:<hex>`` digest; anything else is InvalidArgument."""
    match = _DIGEST_RE.match(digest or "")
    if not match:
        if digest and ":" in digest and not digest.startswith("sha256:"):
            raise InvalidArgument(f"digest {digest!r}: only sha256 digests are supported")
        raise InvalidArgument(f"digest {digest!r} is not of the form sha256:<64 lowercase hex>")
    return match.group(1)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class BlobStore:
    """Blobs by digest under ``root/sha256``; safe for concurrent writers of the same digest."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.dir = self.root / "sha256"
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob(_TMP_PREFIX + "*"):
            stale.unlink(missing_ok=True)
        self.clean_partials(max_age_s=PARTIAL_MAX_AGE_S)

    def path(self, digest: str) -> Path:
        return self.dir / check_digest(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is not in the blob store", kind="blob", ident=digest) from None

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is not in the blob store", kind="blob", ident=digest) from None

    def read(self, digest: str) -> bytes:
        with self.open(digest) as f:
            return f.read()

    def digests(self) -> Iterator[str]:
        for entry in self.dir.iterdir():
            if _DIGEST_RE.match("sha256:" + entry.name):
                yield "sha256:" + entry.name

    def delete(self, digest: str) -> bool:
        try:
            self.path(digest).unlink()
            return True
        except FileNotFoundError:
            return False

    def partial_path(self, digest: str) -> Path:
        return self.dir / (_PARTIAL_PREFIX + check_digest(digest))

    def partials(self) -> Iterator[tuple[str, Path]]:
        """(digest, path) of every partial download."""
        for entry in self.dir.glob(_PARTIAL_PREFIX + "*"):
            digest = "sha256:" + entry.name[len(_PARTIAL_PREFIX) :]
            if _DIGEST_RE.match(digest):
                yield digest, entry

    def clean_partials(self, keep: Iterable[str] = (), max_age_s: float | None = None) -> tuple[int, int]:
        """Remove partial downloads not in ``keep`` (only those older than ``max_age_s`` if given)."""
        keep = set(keep)
        count = freed = 0
        now = time.time()
        for digest, path in list(self.partials()):
            if digest in keep:
                continue
            try:
                st = path.stat()
                if max_age_s is not None and now - st.st_mtime < max_age_s:
                    continue
                path.unlink()
            except FileNotFoundError:
                continue
            count += 1
            freed += st.st_size
        return count, freed

    async def open_partial(self, digest: str) -> Partial | None:
        """The partial download of ``digest``, created empty if absent, hash state rebuilt from its
        bytes; None when another writer holds it (the caller then downloads to a plain temp file)."""
        path = self.partial_path(digest)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            hasher, size = await asyncio.to_thread(_rehash, fd)
        except BaseException:
            os.close(fd)
            raise
        return Partial(self, digest, path, fd, hasher, size)

    def gc(self, keep: Iterable[str]) -> tuple[int, int]:
        """Delete every blob (and partial download) whose digest is not in ``keep``; returns (count, bytes) freed."""
        keep = set(keep)
        count, freed = self.clean_partials(keep)
        for digest in list(self.digests()):
            if digest in keep:
                continue
            try:
                size = self.path(digest).stat().st_size
                self.path(digest).unlink()
            except FileNotFoundError:
                continue
            count += 1
            freed += size
        return count, freed

    def _tempfile(self) -> tuple[int, Path]:
        fd, name = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=self.dir)
        return fd, Path(name)

    def _commit(
        self,
        tmp: Path,
        fd: int,
        hasher: hashlib._Hash,
        size: int,
        expected_digest: str | None,
        expected_size: int | None,
        source: str,
    ) -> str:
        digest = "sha256:" + hasher.hexdigest()
        try:
            if expected_size is not None and size != expected_size:
                raise DigestMismatch(
                    f"blob {expected_digest or digest} from {source}: got {size} bytes, expected "
                    f"{expected_size}; the source sent truncated or corrupt data, nothing was stored"
                )
            if expected_digest is not None and digest != expected_digest:
                raise DigestMismatch(
                    f"blob {expected_digest} from {source} failed verification: content hashes to "
                    f"{digest}; the source or something in between corrupts data, nothing was stored"
                )
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.chmod(tmp, 0o444)
        os.rename(tmp, self.path(digest))
        return digest

    async def ingest(
        self,
        chunks: AsyncIterator[bytes],
        expected_digest: str | None,
        expected_size: int | None = None,
        *,
        source: str = "stream",
        progress: Callable[[int], None] | None = None,
    ) -> tuple[str, int]:
        """Stream ``chunks`` into the store, verifying as they come; returns (digest, size).

        ``progress`` gets the byte count of each chunk written. With ``expected_size`` the
        stream is cut (and refused) as soon as it grows past it.
        """
        if expected_digest is not None:
            check_digest(expected_digest)
        fd, tmp = self._tempfile()
        hasher = hashlib.sha256()
        size = 0
        try:
            async for chunk in chunks:
                size += len(chunk)
                if expected_size is not None and size > expected_size:
                    raise DigestMismatch(
                        f"blob {expected_digest} from {source} is longer than the announced "
                        f"{expected_size} bytes; nothing was stored"
                    )
                hasher.update(chunk)
                view = memoryview(chunk)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                if progress is not None:
                    progress(len(chunk))
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        digest = await asyncio.to_thread(self._commit, tmp, fd, hasher, size, expected_digest, expected_size, source)
        return digest, size

    def ingest_file(
        self,
        src: IO[bytes],
        expected_digest: str | None = None,
        expected_size: int | None = None,
        *,
        source: str = "file",
    ) -> tuple[str, int]:
        """Synchronous variant reading from a file object (archive import)."""
        fd, tmp = self._tempfile()
        hasher = hashlib.sha256()
        size = 0
        try:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                size += len(chunk)
                hasher.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        digest = self._commit(tmp, fd, hasher, size, expected_digest, expected_size, source)
        return digest, size

    def put_bytes(self, data: bytes, expected_digest: str | None = None, *, source: str = "memory") -> str:
        """Store a small blob (manifest, config) held in memory; returns its digest."""
        digest = sha256_digest(data)
        if expected_digest is not None and digest != expected_digest:
            raise DigestMismatch(
                f"blob {expected_digest} from {source} failed verification: content hashes to {digest}; "
                "nothing was stored"
            )
        if self.has(digest):
            return digest
        fd, tmp = self._tempfile()
        os.write(fd, data)
        return self._commit(tmp, fd, hashlib.sha256(data), len(data), digest, len(data), source)


def _rehash(fd: int) -> tuple[hashlib._Hash, int]:
    hasher = hashlib.sha256()
    size = 0
    os.lseek(fd, 0, os.SEEK_SET)
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        hasher.update(chunk)
        size += len(chunk)
    return hasher, size


class Partial:
    """An open, locked partial download: append bytes, then :meth:`commit` (verify and rename).

    Closing without committing keeps the bytes for the next attempt; :meth:`discard` removes them.
    """

    def __init__(self, store: BlobStore, digest: str, path: Path, fd: int, hasher: hashlib._Hash, size: int) -> None:
        self.store = store
        self.digest = digest
        self.path = path
        self.fd = fd
        self.hasher = hasher
        self.size = size
        self.resumed_from = size

    def reset(self) -> None:
        """Start over (the server ignored the Range request)."""
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.hasher = hashlib.sha256()
        self.size = 0

    async def append(
        self,
        chunks: AsyncIterator[bytes],
        expected_size: int | None,
        *,
        source: str,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        os.lseek(self.fd, 0, os.SEEK_END)
        async for chunk in chunks:
            if expected_size is not None and self.size + len(chunk) > expected_size:
                self.discard()
                raise DigestMismatch(
                    f"blob {self.digest} from {source} is longer than the announced {expected_size} bytes; "
                    "nothing was stored"
                )
            self.hasher.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(self.fd, view) :]
            self.size += len(chunk)
            if progress is not None:
                progress(len(chunk))

    async def commit(self, expected_size: int | None, *, source: str) -> str:
        """Verify digest and size and move the blob into place (the partial is gone either way)."""
        fd, self.fd = self.fd, -1
        return await asyncio.to_thread(
            self.store._commit, self.path, fd, self.hasher, self.size, self.digest, expected_size, source
        )

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
