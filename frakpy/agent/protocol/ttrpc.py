"""ttrpc, containerd's lightweight RPC protocol, over any asyncio byte stream.

There is no maintained Python implementation of ttrpc (only Go and Rust ones), so this module is
our own, written from the protocol description in containerd/ttrpc's PROTOCOL.md and matching the
reference implementation's observable behaviour where the description is silent:

* A frame is a 10-byte header -- payload length (uint32 BE), stream id (uint32 BE), message type
  (uint8: 1 request, 2 response, 3 data), flags (uint8) -- followed by the payload.
* Flags: 0x1 remote-closed (the sender sends no more data on this stream), 0x2 remote-open (a
  request whose sender will stream data frames after it), 0x4 no-data (a data frame without a
  payload, used to close a stream).
* Client-initiated streams use odd ids that must increase; server-initiated streams (even ids)
  do not exist yet.
* Payloads above the maximum message size (4 MiB unless configured) are not buffered: the header
  is read, the payload bytes are skipped as they arrive, and the stream gets a
  RESOURCE_EXHAUSTED status. The connection stays usable.
* A unary call is Request -> Response. A server-streaming call is Request[remote-closed] ->
  Data* -> Data[remote-closed|no-data] on success, or a Response carrying the error status. A
  client-streaming call is Request[remote-open] -> Data* -> Data[remote-closed] -> Response.

Everything here is transport-neutral: ``Server.serve`` and ``Client`` take an
``(asyncio.StreamReader, asyncio.StreamWriter)`` pair, so unix sockets, vsock, a virtio-serial
port or a socketpair all work. This module imports only the standard library and the generated
envelope messages, because it also runs inside the guest.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable, Iterable, Mapping
from enum import IntEnum
from typing import Any

from frakpy.agent.protocol import ttrpc_pb2

log = logging.getLogger("frakpy.ttrpc")

HEADER = struct.Struct(">IIBB")
HEADER_SIZE = HEADER.size  # 10
DEFAULT_MAX_MESSAGE_SIZE = 4 << 20
READ_CHUNK = 1 << 16

MSG_REQUEST = 1
MSG_RESPONSE = 2
MSG_DATA = 3

FLAG_REMOTE_CLOSED = 0x1
FLAG_REMOTE_OPEN = 0x2
FLAG_NO_DATA = 0x4


class Code(IntEnum):
    """gRPC status codes; ttrpc carries them numerically in Response.status.code."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class TTRPCError(Exception):
    """A call that ended with a non-OK status, raised by the client and by handlers alike.

    Handlers raise it to choose the status code sent back; any other exception becomes UNKNOWN.
    """

    def __init__(self, code: int, message: str) -> None:
        try:
            self.code: Code | int = Code(code)
        except ValueError:
            self.code = code
        self.message = message
        super().__init__(code, message)

    @property
    def code_name(self) -> str:
        return self.code.name if isinstance(self.code, Code) else f"CODE_{self.code}"

    def __str__(self) -> str:
        return f"{self.code_name}: {self.message}"


class ConnectionLost(TTRPCError):
    """The byte stream closed or failed; every call pending on it fails with this (UNAVAILABLE)."""

    def __init__(self, message: str) -> None:
        super().__init__(Code.UNAVAILABLE, message)


# --------------------------------------------------------------------------------------------
# framing: pure functions and an incremental decoder


class Frame:
    """One decoded frame. ``payload`` is None when the frame exceeded the size limit and its
    bytes were skipped; ``length`` is always the length announced by the header."""

    __slots__ = ("stream_id", "type", "flags", "payload", "length")

    def __init__(self, stream_id: int, type: int, flags: int, payload: bytes | None, length: int) -> None:
        self.stream_id = stream_id
        self.type = type
        self.flags = flags
        self.payload = payload
        self.length = length

    @property
    def oversized(self) -> bool:
        return self.payload is None

    def __repr__(self) -> str:
        return (f"Frame(stream_id={self.stream_id}, type={self.type}, flags={self.flags:#x}, "
                f"length={self.length}{', oversized' if self.oversized else ''})")


def encode_header(length: int, stream_id: int, msg_type: int, flags: int = 0) -> bytes:
    return HEADER.pack(length, stream_id, msg_type, flags)


def encode_frame(stream_id: int, msg_type: int, flags: int, payload: bytes = b"",
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> bytes:
    """Header + payload; refuses payloads above ``max_message_size`` like the peer would."""
    check_size(len(payload), max_message_size)
    return HEADER.pack(len(payload), stream_id, msg_type, flags) + payload


def check_size(length: int, max_message_size: int) -> None:
    if length > max_message_size:
        raise TTRPCError(Code.RESOURCE_EXHAUSTED,
                         f"message of {length} bytes exceeds the maximum message size of {max_message_size}")


class FrameDecoder:
    """Turns arbitrary chunks of a byte stream into frames.

    Feed it whatever the transport delivers (single bytes, several frames at once); complete
    frames come out in order. Oversized frames come out as soon as their header is complete,
    with ``payload=None``; their payload is then skipped without being buffered.
    """

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.max_message_size = max_message_size
        self._buf = bytearray()
        self._skip = 0

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held (or still to skip): non-zero means mid-frame."""
        return len(self._buf) + self._skip

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            data = data[n:]
            if not data:
                return frames
        buf = self._buf
        buf += data
        pos = 0
        size = len(buf)
        while size - pos >= HEADER_SIZE:
            length, stream_id, msg_type, flags = HEADER.unpack_from(buf, pos)
            if length > self.max_message_size:
                frames.append(Frame(stream_id, msg_type, flags, None, length))
                pos += HEADER_SIZE
                n = min(length, size - pos)
                pos += n
                self._skip = length - n
                continue
            end = pos + HEADER_SIZE + length
            if end > size:
                break
            frames.append(Frame(stream_id, msg_type, flags, bytes(buf[pos + HEADER_SIZE:end]), length))
            pos = end
        if pos:
            del buf[:pos]
        return frames


class _FrameWriter:
    """Writes whole frames; ``StreamWriter.write`` is synchronous, so frames never interleave."""

    def __init__(self, writer: asyncio.StreamWriter, max_message_size: int) -> None:
        self.writer = writer
        self.max_message_size = max_message_size
        self.lost: ConnectionLost | None = None

    async def send(self, stream_id: int, msg_type: int, flags: int, payload: bytes = b"") -> None:
        check_size(len(payload), self.max_message_size)
        if self.lost is not None:
            raise self.lost
        if self.writer.is_closing():
            raise ConnectionLost("ttrpc connection is closed")
        try:
            self.writer.write(HEADER.pack(len(payload), stream_id, msg_type, flags))
            if payload:
                self.writer.write(payload)
            await self.writer.drain()
        except (ConnectionError, OSError, RuntimeError) as exc:
            raise ConnectionLost(f"ttrpc connection failed while sending: {exc}") from exc


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    try:
        writer.close()
        await writer.wait_closed()
    except (ConnectionError, OSError, RuntimeError):
        pass


def _metadata_pairs(metadata: Mapping[str, str | Iterable[str]] | None) -> list[ttrpc_pb2.KeyValue]:
    pairs = []
    for key, value in (metadata or {}).items():
        for v in [value] if isinstance(value, str) else value:
            pairs.append(ttrpc_pb2.KeyValue(key=key, value=v))
    return pairs


_EOF = object()


# --------------------------------------------------------------------------------------------
# server


Handler = Callable[[Any, "ServerCall"], Any]


class Method:
    """How to run one RPC: the handler and the message type its request payload decodes to.

    * unary: ``async def handler(request, call) -> response message``
    * server-streaming: an async generator ``handler(request, call)`` whose yielded messages go
      out as data frames, or a coroutine that uses ``await call.send(msg)``
    * client-streaming (stdin-like): the handler reads ``await call.recv()`` until it returns
      None; inbound data payloads are decoded with ``data_type`` (raw bytes if None)
    """

    __slots__ = ("handler", "request_type", "server_streaming", "client_streaming", "data_type")

    def __init__(self, handler: Handler, request_type: Any, *, server_streaming: bool = False,
                 client_streaming: bool = False, data_type: Any = None) -> None:
        self.handler = handler
        self.request_type = request_type
        self.server_streaming = server_streaming
        self.client_streaming = client_streaming
        self.data_type = data_type


class ServerCall:
    """Server-side view of one stream: request metadata, deadline and the data channel."""

    def __init__(self, conn: _ServerConnection, stream_id: int, service: str, method: str,
                 metadata: dict[str, list[str]], timeout: float | None, data_type: Any,
                 remote_closed: bool) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self.service = service
        self.method = method
        self.metadata = metadata
        self.timeout = timeout
        self._data_type = data_type
        self._inbound: asyncio.Queue[Any] = asyncio.Queue()
        self._remote_closed = remote_closed
        if remote_closed:
            self._inbound.put_nowait(_EOF)
        self._after_reply: list[Callable[[], Any]] = []
        self.task: asyncio.Task[None] | None = None

    async def recv(self) -> Any:
        """Next message the client streamed to us, or None once it closed its side."""
        item = await self._inbound.get()
        if item is _EOF:
            self._inbound.put_nowait(_EOF)
            return None
        if self._data_type is None:
            return item
        return self._data_type.FromString(item)

    async def send(self, message: Any) -> None:
        """Send one data frame to the client (streaming methods only)."""
        await self._conn.frames.send(self.stream_id, MSG_DATA, 0, message.SerializeToString())

    def after_reply(self, callback: Callable[[], Any]) -> None:
        """Run ``callback`` once the final frame of this call was handed to the transport (or
        could not be, because the peer left). Used e.g. to power off after answering Shutdown."""
        self._after_reply.append(callback)

    def _deliver(self, frame: Frame) -> None:
        if self._remote_closed:
            return
        if not frame.flags & FLAG_NO_DATA and frame.payload:
            self._inbound.put_nowait(frame.payload)
        if frame.flags & FLAG_REMOTE_CLOSED:
            self._remote_closed = True
            self._inbound.put_nowait(_EOF)


class Server:
    """Serves registered services on any number of connections (one ``serve`` per connection)."""

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.max_message_size = max_message_size
        self._services: dict[str, dict[str, Method]] = {}
        self._connections: set[_ServerConnection] = set()

    def register(self, service: str, methods: Mapping[str, Method]) -> None:
        self._services.setdefault(service, {}).update(methods)

    def lookup(self, service: str, method: str) -> Method:
        methods = self._services.get(service)
        if methods is None:
            raise TTRPCError(Code.UNIMPLEMENTED, f"service {service!r} is not served here")
        found = methods.get(method)
        if found is None:
            raise TTRPCError(Code.UNIMPLEMENTED,
                             f"method {method!r} of service {service!r} is not implemented")
        return found

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection until the peer closes it; then cancel its in-flight calls.

        Returns normally on EOF or transport errors; the caller decides whether to wait for a
        new connection. Nothing outside this connection is affected.
        """
        conn = _ServerConnection(self, reader, writer)
        self._connections.add(conn)
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)

    @property
    def active_connections(self) -> int:
        return len(self._connections)


class _ServerConnection:
    def __init__(self, server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.frames = _FrameWriter(writer, server.max_message_size)
        self.calls: dict[int, ServerCall] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.last_stream_id = 0

    async def run(self) -> None:
        decoder = FrameDecoder(self.server.max_message_size)
        try:
            while True:
                data = await self.reader.read(READ_CHUNK)
                if not data:
                    if decoder.pending:
                        log.warning("ttrpc peer closed the connection in the middle of a frame "
                                    "(%d bytes dropped)", decoder.pending)
                    break
                for frame in decoder.feed(data):
                    self.dispatch(frame)
        except (ConnectionError, OSError) as exc:
            log.info("ttrpc connection failed: %s", exc)
        finally:
            self.frames.lost = ConnectionLost("ttrpc connection closed")
            for task in list(self.tasks):
                task.cancel()
            if self.tasks:
                await asyncio.gather(*self.tasks, return_exceptions=True)
            await _close_writer(self.frames.writer)

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def reply_status(self, stream_id: int, code: int, message: str) -> None:
        self._spawn(self._send_status(stream_id, code, message))

    async def _send_status(self, stream_id: int, code: int, message: str) -> None:
        resp = ttrpc_pb2.Response(status=ttrpc_pb2.Status(code=int(code), message=message))
        try:
            await self.frames.send(stream_id, MSG_RESPONSE, 0, resp.SerializeToString())
        except TTRPCError as exc:
            log.debug("could not send status for stream %d: %s", stream_id, exc)

    def dispatch(self, frame: Frame) -> None:
        sid = frame.stream_id
        if frame.oversized:
            call = self.calls.pop(sid, None)
            if call is not None and call.task is not None:
                call.task.cancel()
            self.reply_status(sid, Code.RESOURCE_EXHAUSTED,
                              f"message length {frame.length} exceeds the maximum message size of "
                              f"{self.server.max_message_size}")
            return
        if sid % 2 != 1:
            self.reply_status(sid, Code.INVALID_ARGUMENT, "client-initiated stream ids must be odd")
            return
        if frame.type == MSG_DATA:
            call = self.calls.get(sid)
            if call is None:
                self.reply_status(sid, Code.INVALID_ARGUMENT, f"stream {sid} is not active")
                return
            call._deliver(frame)
        elif frame.type == MSG_REQUEST:
            if sid <= self.last_stream_id:
                self.reply_status(sid, Code.INVALID_ARGUMENT,
                                  f"stream id {sid} reused: ids must increase (last {self.last_stream_id})")
                return
            self.last_stream_id = sid
            self.start_call(frame)
        else:
            log.debug("ignoring ttrpc frame of type %d on stream %d", frame.type, sid)

    def start_call(self, frame: Frame) -> None:
        sid = frame.stream_id
        try:
            req = ttrpc_pb2.Request.FromString(frame.payload or b"")
        except Exception as exc:  # protobuf's DecodeError
            self.reply_status(sid, Code.INVALID_ARGUMENT, f"cannot decode ttrpc request: {exc}")
            return
        try:
            method = self.server.lookup(req.service, req.method)
        except TTRPCError as exc:
            self.reply_status(sid, exc.code, exc.message)
            return
        metadata: dict[str, list[str]] = {}
        for kv in req.metadata:
            metadata.setdefault(kv.key, []).append(kv.value)
        timeout = req.timeout_nano / 1e9 if req.timeout_nano > 0 else None
        # unary requests carry no flags; a non-unary request stays open only with remote-open
        remote_closed = not frame.flags & FLAG_REMOTE_OPEN
        call = ServerCall(self, sid, req.service, req.method, metadata, timeout, method.data_type,
                          remote_closed)
        self.calls[sid] = call
        call.task = self._spawn(self._run(call, method, req.payload))

    async def _run(self, call: ServerCall, method: Method, payload: bytes) -> None:
        name = f"{call.service}/{call.method}"
        status: tuple[int, str] | None = None
        response = b""
        handled = False
        try:
            try:
                request = method.request_type.FromString(payload)
            except Exception as exc:
                raise TTRPCError(Code.INVALID_ARGUMENT, f"cannot decode {name} request: {exc}") from exc
            deadline = asyncio.timeout(call.timeout)
            try:
                async with deadline:
                    if method.server_streaming:
                        result = method.handler(request, call)
                        if hasattr(result, "__anext__"):
                            async for message in result:
                                await call.send(message)
                        else:
                            await result
                    else:
                        message = await method.handler(request, call)
                        response = message.SerializeToString() if message is not None else b""
            except TimeoutError:
                if not deadline.expired():
                    raise
                raise TTRPCError(Code.DEADLINE_EXCEEDED,
                                 f"{name} exceeded its deadline of {call.timeout:g}s") from None
            handled = True
            if method.server_streaming:
                await self.frames.send(call.stream_id, MSG_DATA, FLAG_REMOTE_CLOSED | FLAG_NO_DATA)
            else:
                resp = ttrpc_pb2.Response(status=ttrpc_pb2.Status(code=0), payload=response)
                await self.frames.send(call.stream_id, MSG_RESPONSE, 0, resp.SerializeToString())
        except ConnectionLost as exc:
            log.debug("%s (stream %d): reply not sent: %s", name, call.stream_id, exc)
        except TTRPCError as exc:
            status = (exc.code, exc.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%s (stream %d) failed", name, call.stream_id)
            status = (Code.UNKNOWN, f"{type(exc).__name__}: {exc}")
        finally:
            self.calls.pop(call.stream_id, None)
        if status is not None:
            await self._send_status(call.stream_id, *status)
        if handled:
            for callback in call._after_reply:
                try:
                    callback()
                except Exception:
                    log.exception("after-reply callback of %s failed", name)


# --------------------------------------------------------------------------------------------
# client


class ClientStream:
    """Client side of one streaming call: iterate the server's messages, optionally send data.

    ``async for msg in stream`` ends when the server closes the stream; a non-OK status raises
    ``TTRPCError``. ``send``/``close_send`` exist for calls opened with ``client_streaming``.
    """

    def __init__(self, client: Client, stream_id: int, name: str, response_type: Any,
                 deadline: float | None) -> None:
        self._client = client
        self.stream_id = stream_id
        self.name = name
        self._response_type = response_type
        self._deadline = deadline
        self._queue: asyncio.Queue[Frame | BaseException] = asyncio.Queue()
        self._done = False

    def _put(self, item: Frame | BaseException) -> None:
        self._queue.put_nowait(item)

    async def _next_frame(self) -> Frame:
        cm = asyncio.timeout_at(self._deadline)
        try:
            async with cm:
                item = await self._queue.get()
        except TimeoutError:
            if not cm.expired():
                raise
            self._finish()
            raise TTRPCError(Code.DEADLINE_EXCEEDED, f"{self.name}: deadline exceeded") from None
        if isinstance(item, BaseException):
            self._finish()
            raise item
        return item

    def _finish(self) -> None:
        self._done = True
        self._client._calls.pop(self.stream_id, None)

    def __aiter__(self) -> ClientStream:
        return self

    async def __anext__(self) -> Any:
        while not self._done:
            frame = await self._next_frame()
            if frame.type == MSG_RESPONSE:
                self._finish()
                resp = ttrpc_pb2.Response.FromString(frame.payload or b"")
                if resp.status.code != Code.OK:
                    raise TTRPCError(resp.status.code, resp.status.message)
                if resp.payload:
                    return self._response_type.FromString(resp.payload)
                break
            if frame.type == MSG_DATA:
                closing = bool(frame.flags & FLAG_REMOTE_CLOSED)
                if closing:
                    self._finish()
                if not frame.flags & FLAG_NO_DATA:
                    return self._response_type.FromString(frame.payload or b"")
        raise StopAsyncIteration

    async def send(self, message: Any) -> None:
        await self._client._frames.send(self.stream_id, MSG_DATA, 0, message.SerializeToString())

    async def close_send(self) -> None:
        await self._client._frames.send(self.stream_id, MSG_DATA, FLAG_REMOTE_CLOSED | FLAG_NO_DATA)

    async def aclose(self) -> None:
        """Stop listening; ttrpc has no cancel frame, late frames for this stream are dropped."""
        self._finish()

    async def __aenter__(self) -> ClientStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Client:
    """Multiplexes calls over one connection. Create it inside a running event loop."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self._reader = reader
        self._frames = _FrameWriter(writer, max_message_size)
        self.max_message_size = max_message_size
        self._calls: dict[int, ClientStream] = {}
        self._next_id = 1
        self._lost: ConnectionLost | None = None
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop())

    @property
    def closed(self) -> bool:
        return self._lost is not None

    async def _read_loop(self) -> None:
        decoder = FrameDecoder(self.max_message_size)
        lost = ConnectionLost("ttrpc connection closed by the peer")
        try:
            while True:
                data = await self._reader.read(READ_CHUNK)
                if not data:
                    if decoder.pending:
                        lost = ConnectionLost("ttrpc connection closed by the peer in the middle of a frame")
                    break
                for frame in decoder.feed(data):
                    self._dispatch(frame)
        except asyncio.CancelledError:
            lost = ConnectionLost("ttrpc client closed")
            raise
        except Exception as exc:
            lost = ConnectionLost(f"ttrpc connection failed: {exc}")
        finally:
            self._fail_all(lost)

    def _fail_all(self, lost: ConnectionLost) -> None:
        if self._lost is None:
            self._lost = lost
        self._frames.lost = self._lost
        calls, self._calls = self._calls, {}
        for stream in calls.values():
            stream._put(self._lost)

    def _dispatch(self, frame: Frame) -> None:
        stream = self._calls.get(frame.stream_id)
        if stream is None:
            log.debug("dropping ttrpc frame for unknown stream %d", frame.stream_id)
            return
        if frame.oversized:
            self._calls.pop(frame.stream_id, None)
            stream._put(TTRPCError(Code.RESOURCE_EXHAUSTED,
                                   f"{stream.name}: reply of {frame.length} bytes exceeds the maximum "
                                   f"message size of {self.max_message_size}"))
            return
        stream._put(frame)

    async def _start(self, service: str, method: str, request: Any, response_type: Any, flags: int,
                     timeout: float | None,  # noqa: ASYNC109 - sent to the server as timeout_nano
                     metadata: Mapping[str, str | Iterable[str]] | None) -> ClientStream:
        if self._lost is not None:
            raise self._lost
        name = f"{service}/{method}"
        stream_id = self._next_id
        self._next_id += 2
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout is not None else None
        req = ttrpc_pb2.Request(service=service, method=method, payload=request.SerializeToString(),
                                timeout_nano=int(timeout * 1e9) if timeout is not None else 0,
                                metadata=_metadata_pairs(metadata))
        stream = ClientStream(self, stream_id, name, response_type, deadline)
        self._calls[stream_id] = stream
        try:
            await self._frames.send(stream_id, MSG_REQUEST, flags, req.SerializeToString())
        except BaseException:
            self._calls.pop(stream_id, None)
            raise
        return stream

    async def call(self, service: str, method: str, request: Any, response_type: Any, *,
                   timeout: float | None = None,  # noqa: ASYNC109 - also sent as timeout_nano
                   metadata: Mapping[str, str | Iterable[str]] | None = None) -> Any:
        """Unary call. Raises TTRPCError (DEADLINE_EXCEEDED on timeout, UNAVAILABLE on disconnect)."""
        stream = await self._start(service, method, request, response_type, 0, timeout, metadata)
        try:
            frame = await stream._next_frame()
        finally:
            stream._finish()
        if frame.type != MSG_RESPONSE:
            raise TTRPCError(Code.INTERNAL, f"{stream.name}: got frame type {frame.type}, not a response")
        resp = ttrpc_pb2.Response.FromString(frame.payload or b"")
        if resp.status.code != Code.OK:
            raise TTRPCError(resp.status.code, resp.status.message)
        return response_type.FromString(resp.payload)

    async def stream(self, service: str, method: str, request: Any, response_type: Any, *,
                     timeout: float | None = None,  # noqa: ASYNC109 - also sent as timeout_nano
                     client_streaming: bool = False,
                     metadata: Mapping[str, str | Iterable[str]] | None = None) -> ClientStream:
        """Open a streaming call; iterate the result. ``timeout`` bounds the whole stream."""
        flags = FLAG_REMOTE_OPEN if client_streaming else FLAG_REMOTE_CLOSED
        return await self._start(service, method, request, response_type, flags, timeout, metadata)

    async def close(self) -> None:
        """Close the connection; calls still pending fail with ConnectionLost."""
        if not self._reader_task.done():
            self._reader_task.cancel()
            try:
                await self._reader_task
            except asyncio.CancelledError:
                pass
        self._fail_all(ConnectionLost("ttrpc client closed"))
        await _close_writer(self._frames.writer)

    async def wait_closed(self) -> None:
        """Return once the connection is gone (peer closed, failed, or ``close()``)."""
        await asyncio.wait([self._reader_task])
