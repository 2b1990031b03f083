"""Bounded output buffers of container and exec processes, and the pumps that fill them.

Every process has one ``OutputBuffer``: its stdout and stderr (or its tty) are appended as
chunks ``(offset, stream, realtime ns, bytes)``, where ``offset`` counts bytes of the combined
output since the process started. The host reads from an offset and later acknowledges what it
persisted; acknowledged chunks are dropped. Memory is bounded: when ``capacity`` bytes are
unacknowledged the pumps stop reading the pipes (the writer in the container then blocks in
write(2), as with a slow log reader), nothing is ever dropped unread.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

STDOUT = 1
STDERR = 2
READ_SIZE = 1 << 16
DEFAULT_CAPACITY = 1 << 20


class Chunk:
    __slots__ = ("offset", "stream", "time_ns", "data")

    def __init__(self, offset: int, stream: int, time_ns: int, data: bytes) -> None:
        self.offset = offset
        self.stream = stream
        self.time_ns = time_ns
        self.data = data

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


class OutputBuffer:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = max(int(capacity), 4096)
        self.chunks: deque[Chunk] = deque()
        self.end = 0  # offset of the next byte
        self.acked = 0
        self.closed = False  # no more data will come
        self._changed: asyncio.Event | None = None
        self._space_callbacks: list[Callable[[], None]] = []

    @property
    def retained(self) -> int:
        """Bytes held in memory."""
        return self.end - self.chunks[0].offset if self.chunks else 0

    def space(self) -> int:
        return max(0, self.capacity - (self.end - self.acked))

    def on_space(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once (the next time) room is made by an acknowledgement."""
        self._space_callbacks.append(callback)

    def append(self, stream: int, data: bytes) -> None:
        if not data:
            return
        self.chunks.append(Chunk(self.end, stream, time.time_ns(), data))
        self.end += len(data)
        self._wake()

    def ack(self, offset: int) -> None:
        offset = min(int(offset), self.end)
        if offset <= self.acked:
            return
        self.acked = offset
        while self.chunks and self.chunks[0].end <= offset:
            self.chunks.popleft()
        if self.space() > 0 and self._space_callbacks:
            callbacks, self._space_callbacks = self._space_callbacks, []
            for cb in callbacks:
                cb()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._wake()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _wait_change(self) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        await self._changed.wait()

    def chunks_from(self, offset: int) -> list[Chunk]:
        out = []
        for c in self.chunks:
            if c.end <= offset:
                continue
            if c.offset < offset:
                c = Chunk(offset, c.stream, c.time_ns, c.data[offset - c.offset:])
            out.append(c)
        return out

    async def read(self, offset: int, *, auto_ack: bool = False, coalesce: int = 0) -> AsyncIterator[Chunk]:
        """Chunks from ``offset`` (acknowledging below it) until closed and fully delivered.

        With ``coalesce``, consecutive chunks of one stream that are already buffered are handed
        out as one of up to that many bytes (stamped with the first one's time): under TCG every
        message costs the agent milliseconds, so fewer, larger ones carry a bulk transfer faster.
        """
        self.ack(offset)
        offset = max(offset, self.chunks[0].offset if self.chunks else self.end)
        while True:
            pending = self.chunks_from(offset)
            if coalesce:
                pending = _coalesced(pending, coalesce)
            for c in pending:
                yield c
                offset = c.end
                if auto_ack:
                    self.ack(offset)
            if self.closed and offset >= self.end:
                return
            await self._wait_change()


def _coalesced(chunks: list[Chunk], limit: int) -> list[Chunk]:
    out: list[Chunk] = []
    parts: list[bytes] = []
    size = 0
    for c in chunks:
        if out and parts and c.stream == out[-1].stream and size + len(c.data) <= limit:
            parts.append(c.data)
            size += len(c.data)
            continue
        if len(parts) > 1:
            out[-1] = Chunk(out[-1].offset, out[-1].stream, out[-1].time_ns, b"".join(parts))
        out.append(c)
        parts, size = [c.data], len(c.data)
    if len(parts) > 1:
        out[-1] = Chunk(out[-1].offset, out[-1].stream, out[-1].time_ns, b"".join(parts))
    return out


class Pump:
    """Moves bytes from a non-blocking fd (pipe or pty master) into an OutputBuffer.

    Reads only as much as the buffer has room for; with no room it stops watching the fd until
    an acknowledgement makes room. EOF (or EIO of a pty master whose slave is gone) ends it.
    """

    def __init__(self, fd: int, stream: int, buffer: OutputBuffer, on_done: Callable[[], None],
                 read_size: int = READ_SIZE) -> None:
        self.fd = fd
        self.read_size = read_size
        self.stream = stream
        self.buffer = buffer
        self.on_done = on_done
        self.done = False
        self.paused = False
        self._watching = False
        self._loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)
        self._watch()

    def _watch(self) -> None:
        if not self._watching and not self.done:
            self._loop.add_reader(self.fd, self._ready)
            self._watching = True

    def _unwatch(self) -> None:
        if self._watching:
            self._loop.remove_reader(self.fd)
            self._watching = False

    def _ready(self) -> None:
        room = self.buffer.space()
        if room <= 0:
            self._unwatch()
            self.paused = True
            self.buffer.on_space(self._resume)
            return
        try:
            data = os.read(self.fd, min(self.read_size, room))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                pass  # any read error ends the stream like EOF
            data = b""
        if not data:
            self.finish()
            return
        self.buffer.append(self.stream, data)

    def _resume(self) -> None:
        self.paused = False
        self._watch()

    def finish(self) -> None:
        """Stop for good and close the fd (unread bytes in the pipe are lost)."""
        if self.done:
            return
        self._unwatch()
        self.done = True
        try:
            os.close(self.fd)
        except OSError:
            pass
        self.on_done()
