"""Write container output in the CRI log format kubelet reads.

Each line is ``<RFC3339Nano time> <stdout|stderr> <P|F> <text>\\n``. Output is split at
newlines; a full line is tagged F (one over :data:`MAX_PARTIAL` bytes is split into P pieces
ending in F). A line still without newline is held per stream and
written as P once it exceeds :data:`MAX_PARTIAL` bytes, or as F when the stream ends.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MAX_PARTIAL = 16 * 1024
STREAMS = ("stdout", "stderr")


def rfc3339nano(time_ns: int) -> str:
    """UTC with nanoseconds, e.g. ``2024-05-01T12:00:00.000000001Z``."""
    secs, nanos = divmod(time_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{nanos:09d}Z"


@dataclass
class _Pending:
    offset: int  # combined-output offset of data[0]
    time_ns: int
    data: bytes


class CriLogWriter:
    """One container's log file. Not thread-safe; one writer per container."""

    def __init__(self, path: str | os.PathLike[str], max_partial: int = MAX_PARTIAL) -> None:
        self.path = Path(path)
        self.max_partial = max_partial
        self._pending: dict[str, _Pending] = {}
        self._file: BinaryIO | None = None
        self.reopen()

    def reopen(self) -> None:
        """Close and reopen the file (after kubelet rotated it away)."""
        if self._file is not None:
            self._file.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")  # noqa: SIM115 - lives as long as the writer

    def _line(self, time_ns: int, stream: str, tag: str, text: bytes) -> bytes:
        return f"{rfc3339nano(time_ns)} {stream} {tag} ".encode() + text + b"\n"

    def write(self, stream: str, data: bytes, *, time_ns: int | None = None, offset: int = 0) -> None:
        """Append ``data`` of ``stream`` that starts at combined-output ``offset``."""
        assert self._file is not None
        if stream not in STREAMS:
            raise ValueError(f"unknown stream {stream!r}")
        if not data:
            return
        now = time_ns or time.time_ns()
        pending = self._pending.pop(stream, None)
        if pending is not None:
            buf, start, ts = pending.data + data, pending.offset, pending.time_ns
        else:
            buf, start, ts = data, offset, now
        out = []
        pos = 0
        while True:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                break
            line_ts = ts if pos == 0 else now
            while nl - pos > self.max_partial:  # an over-long full line is split like containerd's
                out.append(self._line(line_ts, stream, "P", buf[pos:pos + self.max_partial]))
                pos += self.max_partial
            out.append(self._line(line_ts, stream, "F", buf[pos:nl]))
            pos = nl + 1
        rest = buf[pos:]
        rest_offset = start if pos == 0 else offset + len(data) - len(rest)
        while len(rest) > self.max_partial:
            out.append(self._line(now, stream, "P", rest[: self.max_partial]))
            rest = rest[self.max_partial:]
            rest_offset += self.max_partial
        if rest:
            self._pending[stream] = _Pending(rest_offset, ts if pos == 0 else now, rest)
        if out:
            self._file.write(b"".join(out))
            self._file.flush()

    def size(self) -> int:
        """Bytes in the file so far (what the resume point of its container covers)."""
        assert self._file is not None
        return self._file.tell()

    def pending_offset(self) -> int | None:
        """Lowest combined-output offset not yet in the file (held partial lines), if any."""
        return min((p.offset for p in self._pending.values()), default=None)

    def flush_partial(self) -> None:
        """End of output: write held partial lines as full ones."""
        assert self._file is not None
        for stream in STREAMS:
            p = self._pending.pop(stream, None)
            if p is not None:
                self._file.write(self._line(p.time_ns, stream, "F", p.data))
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self.flush_partial()
            self._file.close()
            self._file = None
