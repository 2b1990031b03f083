"""Content-addressed blob store: ``<state_dir>/blobs/sha256/<hex>``.

A blob only ever appears under its final name complete and verified: writers stream into a
temporary file in the same directory while hashing, fsync it, compare digest and size, and rename
it into place (atomic on one filesystem). A mismatch removes the temporary file and raises
:class:`DigestMismatch`. Stale temporaries from a crash are removed when the store opens.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, BinaryIO

from frakpy.errors import InvalidArgument, NotFound, Unavailable

_DIGEST_RE = re.compile(r"^sha256:([0-9a-f]{64})$")
_TMP_PREFIX = ".ingest-"


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

    def gc(self, keep: Iterable[str]) -> tuple[int, int]:
        """Delete every blob whose digest is not in ``keep``; returns (count, bytes) freed."""
        keep = set(keep)
        count = freed = 0
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
