"""SPDY/3.1 framing and stream multiplexing on an asyncio byte stream (both ends).

Why hand-written: Kubernetes' exec/attach/port-forward still speak SPDY/3.1 between kubelet and
the runtime (github.com/moby/spdystream on the Go side), and there is no maintained SPDY library
for Python. Only what those peers use is implemented: SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS,
PING, GOAWAY, HEADERS and WINDOW_UPDATE control frames, DATA frames, and name/value header blocks
compressed with zlib seeded by the SPDY/3 dictionary (one compression context per direction for the
life of the connection). No server push, no priorities, no credential frames.

Flow control (SPDY/3.1: a window per stream and one per session, 64 KiB initial):
* Receiving: every stream buffers at most ``recv_window`` bytes (advertised to the peer with
  SETTINGS_INITIAL_WINDOW_SIZE); WINDOW_UPDATE is sent as the consumer reads, so a peer that
  honours windows never sends more than a stream can hold. A peer that ignores windows (spdystream
  neither sends nor honours WINDOW_UPDATE; TCP is its only flow control) is throttled by no longer
  reading the socket while a stream's buffer is full, which is what spdystream itself does. The
  session window is credited on receipt: per-stream windows already bound memory, and a session
  window held by one slow stream would stall every other stream of the connection.
* Sending: the peer's stream and session windows are enforced once the peer has shown it does
  flow control at all, i.e. has sent SETTINGS or WINDOW_UPDATE (our own client and server send
  SETTINGS first thing). Against spdystream, which never does, a strict sender would stall forever
  after 64 KiB; there the only limit is TCP backpressure (``drain()``), as between Go peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import zlib
from collections import deque
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

VERSION = 3

SYN_STREAM = 1
SYN_REPLY = 2
RST_STREAM = 3
SETTINGS = 4
PING = 6
GOAWAY = 7
HEADERS = 8
WINDOW_UPDATE = 9

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02

SETTINGS_INITIAL_WINDOW_SIZE = 7

RST_PROTOCOL_ERROR = 1
RST_INVALID_STREAM = 2
RST_REFUSED_STREAM = 3
RST_CANCEL = 5
RST_INTERNAL_ERROR = 6
RST_FLOW_CONTROL_ERROR = 7

GOAWAY_OK = 0
GOAWAY_PROTOCOL_ERROR = 1

DEFAULT_WINDOW = 64 * 1024
RECV_WINDOW = 256 * 1024  # what we advertise per stream
MAX_DATA_CHUNK = 32 * 1024  # DATA frames we send (and the piece size we deliver received data in)
MAX_CONTROL_FRAME = 1 << 20  # header blocks larger than this are a protocol error here
MAX_HEADER_BLOCK = 1 << 20  # after decompression
REPLY_TIMEOUT_S = 30.0


def _build_dictionary() -> bytes:
    # The SPDY/3 header-compression dictionary (draft-mbelshe-httpbis-spdy-00, 2.6.10.1): a run of
    # length-prefixed header names and values, then a tail of common value fragments. Must be
    # byte-exact; test_spdy checks its length and landmarks.
    words = (
        "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset", "accept-encoding",
        "accept-language", "accept-ranges", "age", "allow", "authorization", "cache-control", "connection",
        "content-base", "content-encoding", "content-language", "content-length", "content-location",
        "content-md5", "content-range", "content-type", "date", "etag", "expect", "expires", "from", "host",
        "if-match", "if-modified-since", "if-none-match", "if-range", "if-unmodified-since", "last-modified",
        "location", "max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range", "referer",
        "retry-after", "server", "te", "trailer", "transfer-encoding", "upgrade", "user-agent", "vary", "via",
        "warning", "www-authenticate", "method", "get", "status", "200 OK", "version", "HTTP/1.1", "url",
        "public", "set-cookie", "keep-alive", "origin",
    )
    tail = (
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
        "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
        "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
        "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
    )
    out = bytearray()
    for w in words:
        out += struct.pack(">I", len(w)) + w.encode()
    out += tail.encode()
    return bytes(out)


DICTIONARY = _build_dictionary()


class SpdyError(Exception):
    """Protocol violation or a closed connection/stream."""


class StreamClosed(SpdyError):
    pass


Headers = dict[str, list[str]]


class HeaderCodec:
    """Name/value header blocks, zlib-compressed with the SPDY/3 dictionary (one context per direction)."""

    def __init__(self) -> None:
        self._deflate = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
        self._inflate = zlib.decompressobj(15, DICTIONARY)

    def encode(self, headers: Iterable[tuple[str, str | list[str]]]) -> bytes:
        pairs = [(k.lower(), v if isinstance(v, str) else "\x00".join(v)) for k, v in headers]
        raw = bytearray(struct.pack(">I", len(pairs)))
        for k, v in pairs:
            kb, vb = k.encode(), v.encode()
            raw += struct.pack(">I", len(kb)) + kb + struct.pack(">I", len(vb)) + vb
        return self._deflate.compress(bytes(raw)) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def decode(self, block: bytes) -> Headers:
        try:
            raw = self._inflate.decompress(block, MAX_HEADER_BLOCK)
        except zlib.error as exc:
            raise SpdyError(f"header block does not inflate: {exc}") from exc
        if self._inflate.unconsumed_tail:
            raise SpdyError("header block too large")
        headers: Headers = {}
        if not raw:
            return headers
        try:
            (count,), off = struct.unpack_from(">I", raw), 4
            for _ in range(count):
                (n,) = struct.unpack_from(">I", raw, off)
                name = raw[off + 4:off + 4 + n].decode("latin-1").lower()
                off += 4 + n
                (n,) = struct.unpack_from(">I", raw, off)
                value = raw[off + 4:off + 4 + n].decode("latin-1")
                off += 4 + n
                headers.setdefault(name, []).extend(value.split("\x00"))
        except struct.error as exc:
            raise SpdyError("truncated header block") from exc
        return headers


def control_frame(ftype: int, flags: int, payload: bytes) -> bytes:
    return struct.pack(">HHI", 0x8000 | VERSION, ftype, (flags << 24) | len(payload)) + payload


def data_frame(stream_id: int, flags: int, payload: bytes | memoryview) -> bytes:
    return struct.pack(">II", stream_id & 0x7FFFFFFF, (flags << 24) | len(payload)) + bytes(payload)


class SpdyStream:
    """One bidirectional stream. ``read()`` returns b"" once the peer half-closed (FIN) or reset it;
    ``close()`` half-closes our side (FIN); ``reset()`` aborts both."""

    def __init__(self, conn: SpdyConnection, stream_id: int, headers: Headers) -> None:
        self.conn = conn
        self.id = stream_id
        self.headers = headers
        self.discard = False  # set by the owner for streams nobody reads: data is dropped, windows credited
        self._buf: deque[bytes] = deque()
        self._buffered = 0
        self._readable = asyncio.Event()
        self._space = asyncio.Event()
        self._unacked = 0
        self.remote_closed = False
        self.local_closed = False
        self.reset_received = False
        self._replied = asyncio.Event()
        self._send_window = conn.peer_initial_window

    def drop_input(self) -> None:
        """From now on discard what the peer sends (crediting its window), buffered data too."""
        self.discard = True
        n = self._buffered
        self._buf.clear()
        self._buffered = 0
        self._space.set()
        if n:
            self._credit(n)

    def header(self, name: str, default: str = "") -> str:
        values = self.headers.get(name.lower())
        return values[0] if values else default

    @property
    def buffered(self) -> int:
        return self._buffered

    async def read(self) -> bytes:
        while not self._buf:
            if self.remote_closed:
                return b""
            self._readable.clear()
            await self._readable.wait()
        data = self._buf.popleft()
        self._buffered -= len(data)
        self._space.set()
        self._credit(len(data))
        return data

    async def read_all(self, limit: int = 1 << 20) -> bytes:
        out = bytearray()
        while chunk := await self.read():
            if len(out) < limit:
                out += chunk[: limit - len(out)]
        return bytes(out)

    def _credit(self, n: int) -> None:
        self._unacked += n
        if self._unacked >= self.conn.recv_window // 2 and not self.remote_closed and self.conn.flow_control:
            self.conn._write(control_frame(WINDOW_UPDATE, 0, struct.pack(">II", self.id, self._unacked)))
            self._unacked = 0

    async def write(self, data: bytes) -> None:
        """Send ``data``, waiting for the peer's windows (when it does flow control) and for TCP."""
        view = memoryview(data)
        while len(view):
            n = await self.conn._reserve(self, min(len(view), MAX_DATA_CHUNK))
            self.conn._write(data_frame(self.id, 0, view[:n]))
            view = view[n:]
            await self.conn._drain()

    async def close(self) -> None:
        """Half-close: FIN on our side. Idempotent; a no-op once reset or the connection is gone."""
        if self.local_closed or self.reset_received or self.conn.closed.is_set():
            self.local_closed = True
            return
        self.local_closed = True
        self.conn._write(data_frame(self.id, FLAG_FIN, b""))
        self.conn._maybe_forget(self)
        await self.conn._drain()

    def reset(self, status: int = RST_CANCEL) -> None:
        if not (self.reset_received or (self.local_closed and self.remote_closed)) and not self.conn.closed.is_set():
            self.conn._write(control_frame(RST_STREAM, 0, struct.pack(">II", self.id, status)))
        self._on_reset()

    def _on_reset(self) -> None:
        self.reset_received = self.local_closed = self.remote_closed = True
        self._readable.set()
        self._space.set()
        self._replied.set()
        self.conn._notify_window()
        self.conn.streams.pop(self.id, None)

    def _on_fin(self) -> None:
        self.remote_closed = True
        self._readable.set()
        self.conn._maybe_forget(self)


class SpdyConnection:
    """A SPDY/3.1 session. The server side passes ``on_stream``: called (synchronously, in frame
    order) for every SYN_STREAM; return False to refuse the stream (RST_STREAM REFUSED_STREAM).
    The client side opens streams with ``open_stream``. Call ``start()`` once, then use ``closed``
    (set when the peer's side of the connection ends) to learn of disconnects."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, server: bool,
                 on_stream: Callable[[SpdyStream], bool] | None = None, initial_data: bytes = b"",
                 recv_window: int = RECV_WINDOW, flow_control: bool = True) -> None:
        # flow_control=False behaves like spdystream: no SETTINGS, no WINDOW_UPDATE (tests use it)
        self.flow_control = flow_control
        self._reader = reader
        self._writer = writer
        self._prefix = initial_data
        self.server = server
        self.on_stream = on_stream
        self.recv_window = recv_window
        self.streams: dict[int, SpdyStream] = {}
        self.closed = asyncio.Event()
        self.peer_flow_control = False
        self.peer_initial_window = DEFAULT_WINDOW
        self._send_window = DEFAULT_WINDOW  # session
        self._session_unacked = 0
        self._window_event = asyncio.Event()
        self._out_codec = HeaderCodec()
        self._in_codec = HeaderCodec()
        self._next_id = 2 if server else 1
        self._last_peer_id = 0
        self._goaway_sent = False
        self.goaway_received = False
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        # Announce our per-stream window; this also tells a frakpy peer that we do flow control.
        if self.flow_control:
            self._write(control_frame(SETTINGS, 0, struct.pack(">II", 1, SETTINGS_INITIAL_WINDOW_SIZE)
                                      + struct.pack(">I", self.recv_window)))
        self._task = asyncio.get_running_loop().create_task(self._read_loop(), name="spdy-read")

    def goaway(self, status: int = GOAWAY_OK) -> None:
        if not self._goaway_sent and not self.closed.is_set():
            self._goaway_sent = True
            self._write(control_frame(GOAWAY, 0, struct.pack(">II", self._last_peer_id, status)))

    async def shutdown(self, grace_s: float = 5.0) -> None:
        """GOAWAY, stop writing, wait (bounded) for the peer to close, then close the socket. Waiting
        for the peer avoids the reset a close with unread inbound data would cause, which could
        destroy the last frames we sent before the peer read them."""
        self.goaway()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer.drain(), grace_s)
            if self._writer.can_write_eof():
                self._writer.write_eof()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.closed.wait(), grace_s)
        await self.abort()

    async def abort(self) -> None:
        """Drop the connection now (unsent data too); shutdown() is the graceful way."""
        transport = self._writer.transport
        if transport is not None:
            transport.abort()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        self._on_closed()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)

    def _on_closed(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for st in list(self.streams.values()):
            st._on_reset()
        self.streams.clear()
        self._notify_window()

    # -- client side ---------------------------------------------------------------------------
    async def open_stream(self, headers: Iterable[tuple[str, str]], *, fin: bool = False,
                          timeout: float = REPLY_TIMEOUT_S) -> SpdyStream:
        if self.closed.is_set() or self.goaway_received:
            raise StreamClosed("connection is closed")
        sid = self._next_id
        self._next_id += 2
        pairs = list(headers)
        st = SpdyStream(self, sid, {k.lower(): [v] for k, v in pairs})
        self.streams[sid] = st
        block = self._out_codec.encode(pairs)
        self._write(control_frame(SYN_STREAM, FLAG_FIN if fin else 0, struct.pack(">IIBB", sid, 0, 0, 0) + block))
        st.local_closed = fin
        try:
            await asyncio.wait_for(st._replied.wait(), timeout)
        except TimeoutError:
            st.reset()
            raise StreamClosed(f"no SYN_REPLY for stream {sid} within {timeout:g}s") from None
        if st.reset_received:
            raise StreamClosed(f"stream {sid} ({dict(pairs)}) was refused by the peer")
        return st

    # -- output --------------------------------------------------------------------------------
    def _write(self, frame: bytes) -> None:
        # Every frame goes out in one synchronous write, so frames never interleave and header
        # compression order always equals wire order.
        if self._writer.is_closing():
            return
        self._writer.write(frame)

    async def _drain(self) -> None:
        try:
            await self._writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            self._on_closed()
            raise StreamClosed(f"connection lost: {exc}") from exc

    def write_buffer_size(self) -> int:
        transport = self._writer.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def _notify_window(self) -> None:
        self._window_event.set()
        self._window_event = asyncio.Event()

    async def _reserve(self, st: SpdyStream, n: int) -> int:
        while True:
            if st.local_closed or st.reset_received or self.closed.is_set():
                raise StreamClosed(f"stream {st.id} is closed")
            if not self.peer_flow_control:
                return n
            avail = min(st._send_window, self._send_window)
            if avail > 0:
                k = min(n, avail)
                st._send_window -= k
                self._send_window -= k
                return k
            await self._window_event.wait()

    def _maybe_forget(self, st: SpdyStream) -> None:
        if st.local_closed and st.remote_closed:
            self.streams.pop(st.id, None)

    # -- input ---------------------------------------------------------------------------------
    async def _readexactly(self, n: int) -> bytes:
        if self._prefix:
            head, self._prefix = self._prefix[:n], self._prefix[n:]
            if len(head) == n:
                return head
            return head + await self._reader.readexactly(n - len(head))
        return await self._reader.readexactly(n)

    async def _read_loop(self) -> None:
        try:
            while True:
                hdr = await self._readexactly(8)
                if hdr[0] & 0x80:
                    version = ((hdr[0] & 0x7F) << 8) | hdr[1]
                    ftype = (hdr[2] << 8) | hdr[3]
                    flags = hdr[4]
                    length = int.from_bytes(hdr[5:8], "big")
                    if version != VERSION or length > MAX_CONTROL_FRAME:
                        self.goaway(GOAWAY_PROTOCOL_ERROR)
                        raise SpdyError(f"bad control frame (version {version}, length {length})")
                    await self._on_control(ftype, flags, await self._readexactly(length))
                else:
                    sid = int.from_bytes(hdr[0:4], "big") & 0x7FFFFFFF
                    flags = hdr[4]
                    length = int.from_bytes(hdr[5:8], "big")
                    await self._on_data(sid, flags, length)
        except (asyncio.IncompleteReadError, ConnectionError, SpdyError, OSError) as exc:
            log.debug("spdy connection ends: %r", exc)
        finally:
            self._on_closed()

    async def _on_data(self, sid: int, flags: int, length: int) -> None:
        st = self.streams.get(sid)
        remaining = length
        while True:
            n = min(remaining, MAX_DATA_CHUNK)
            piece = await self._readexactly(n) if n else b""
            remaining -= n
            self._session_unacked += n
            if self._session_unacked >= DEFAULT_WINDOW // 2 and self.flow_control:
                self._write(control_frame(WINDOW_UPDATE, 0, struct.pack(">II", 0, self._session_unacked)))
                self._session_unacked = 0
            if piece and st is not None and not st.remote_closed:
                if st.discard:
                    st._credit(len(piece))
                else:
                    while (st._buffered and st._buffered + len(piece) > self.recv_window
                           and not st.remote_closed and not st.discard):
                        st._space.clear()
                        await st._space.wait()
                    if not st.remote_closed and not st.discard:
                        st._buf.append(piece)
                        st._buffered += len(piece)
                        st._readable.set()
            if remaining <= 0:
                break
        if st is None:
            if sid not in (0,) and flags & FLAG_FIN == 0:
                self._write(control_frame(RST_STREAM, 0, struct.pack(">II", sid, RST_INVALID_STREAM)))
            return
        if flags & FLAG_FIN:
            st._on_fin()

    async def _on_control(self, ftype: int, flags: int, p: bytes) -> None:
        if ftype == SYN_STREAM:
            sid, _assoc = struct.unpack_from(">II", p)
            sid &= 0x7FFFFFFF
            headers = self._in_codec.decode(p[10:])  # always inflate: the zlib context is shared
            if self.on_stream is None or self._goaway_sent or sid % 2 == self._next_id % 2 or sid <= self._last_peer_id:
                self._write(control_frame(RST_STREAM, 0, struct.pack(">II", sid, RST_REFUSED_STREAM)))
                return
            self._last_peer_id = sid
            st = SpdyStream(self, sid, headers)
            st._replied.set()
            if flags & FLAG_UNIDIRECTIONAL:
                st.local_closed = True
            self.streams[sid] = st
            try:
                accepted = self.on_stream(st)
            except Exception:  # noqa: BLE001 - a handler bug must not kill the session
                log.exception("spdy stream handler failed")
                accepted = False
            if not accepted:
                st.reset(RST_REFUSED_STREAM)
                return
            self._write(control_frame(SYN_REPLY, 0, struct.pack(">I", sid) + self._out_codec.encode([])))
            if flags & FLAG_FIN:
                st._on_fin()
        elif ftype == SYN_REPLY:
            (sid,) = struct.unpack_from(">I", p)
            self._in_codec.decode(p[4:])
            replied = self.streams.get(sid & 0x7FFFFFFF)
            if replied is not None:
                replied._replied.set()
                if flags & FLAG_FIN:
                    replied._on_fin()
        elif ftype == HEADERS:
            (sid,) = struct.unpack_from(">I", p)
            self._in_codec.decode(p[4:])
            target = self.streams.get(sid & 0x7FFFFFFF)
            if target is not None and flags & FLAG_FIN:
                target._on_fin()
        elif ftype == RST_STREAM:
            sid, _status = struct.unpack_from(">II", p)
            victim = self.streams.get(sid & 0x7FFFFFFF)
            if victim is not None:
                victim._on_reset()
        elif ftype == SETTINGS:
            (count,) = struct.unpack_from(">I", p)
            for i in range(count):
                (fid, value) = struct.unpack_from(">II", p, 4 + 8 * i)
                if fid & 0xFFFFFF == SETTINGS_INITIAL_WINDOW_SIZE:
                    delta = value - self.peer_initial_window
                    self.peer_initial_window = value
                    for each in self.streams.values():
                        each._send_window += delta
            self.peer_flow_control = True
            self._notify_window()
        elif ftype == WINDOW_UPDATE:
            sid, delta = struct.unpack_from(">II", p)
            sid &= 0x7FFFFFFF
            delta &= 0x7FFFFFFF
            if sid == 0:
                self._send_window += delta
            elif (updated := self.streams.get(sid)) is not None:
                updated._send_window += delta
            self.peer_flow_control = True
            self._notify_window()
        elif ftype == PING:
            (pid,) = struct.unpack_from(">I", p)
            if pid % 2 != self._next_id % 2:  # the peer's ping: echo it
                self._write(control_frame(PING, 0, p[:4]))
        elif ftype == GOAWAY:
            self.goaway_received = True
        # other types (CREDENTIAL, NOOP, unknown) are ignored, as the spec asks
