"""Kubernetes' channel framing on WebSocket (RFC 6455 handled by ``wsproto``).

Framing (Kubernetes wsstream): every message starts with its channel number. ``*channel.k8s.io``
protocols send binary messages whose first byte is the channel; ``*base64.channel.k8s.io`` send
text messages whose first character is ``'0' + channel`` followed by the base64 of the payload.
``v5.channel.k8s.io`` adds the CLOSE signal: a binary message ``[255, channel]`` half-closes that
channel (used for stdin EOF). Hand-written only as far as this framing goes; the WebSocket
protocol itself (handshake, masking, fragmentation, ping, close) is wsproto's.

There is no WebSocket flow control, so we read the socket only as fast as messages are consumed
and write with ``drain()``: TCP carries the backpressure both ways.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from collections import deque

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from frakpy.streaming._http import StreamingError, Target

CLOSE_SIGNAL = 255
MAX_MESSAGE = 16 * 1024 * 1024
MAX_OUT_CHUNK = 32 * 1024

V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
V4_BASE64 = "v4.base64.channel.k8s.io"
V1 = "channel.k8s.io"
V1_BASE64 = "base64.channel.k8s.io"


def is_base64(protocol: str) -> bool:
    return protocol.endswith("base64.channel.k8s.io")


class ChannelSocket:
    """A WebSocket carrying numbered channels, either end."""

    def __init__(self, ws: WSConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 protocol: str, initial_data: bytes = b"") -> None:
        self.ws = ws
        self.reader = reader
        self.writer = writer
        self.protocol = protocol
        self.base64 = is_base64(protocol)
        self.close_signal = protocol == V5
        self._events: deque[Event] = deque()
        self._parts: list[bytes | str] = []
        self._size = 0
        self.closed = asyncio.Event()  # the peer is gone (close frame, EOF or error)
        self.close_code: int | None = None
        if initial_data:
            self.ws.receive_data(initial_data)

    # -- sending -------------------------------------------------------------------------------
    async def _send(self, event: Event) -> None:
        if self.ws.state is not ConnectionState.OPEN or self.writer.is_closing():
            raise ConnectionError("websocket is closed")
        self.writer.write(self.ws.send(event))
        await self.writer.drain()

    async def send(self, channel: int, data: bytes = b"") -> None:
        """``data`` on ``channel``, in messages of at most 32 KiB (an empty one if ``data`` is)."""
        first = True
        for i in range(0, max(len(data), 1), MAX_OUT_CHUNK):
            if not first and i >= len(data):
                break
            first = False
            chunk = data[i:i + MAX_OUT_CHUNK]
            if self.base64:
                await self._send(TextMessage(data=chr(48 + channel) + base64.b64encode(chunk).decode()))
            else:
                await self._send(BytesMessage(data=bytes([channel]) + chunk))

    async def send_close_signal(self, channel: int) -> None:
        if self.close_signal:
            await self._send(BytesMessage(data=bytes([CLOSE_SIGNAL, channel])))

    # -- receiving -----------------------------------------------------------------------------
    async def _next_event(self) -> Event | None:
        while not self._events:
            for ev in self.ws.events():
                self._events.append(ev)
            if self._events:
                break
            try:
                data = await self.reader.read(65536)
            except (ConnectionError, OSError):
                data = b""
            try:
                self.ws.receive_data(data or None)
            except RemoteProtocolError:
                return None
            if not data:
                for ev in self.ws.events():
                    self._events.append(ev)
                if not self._events:
                    return None
        return self._events.popleft()

    async def recv(self) -> tuple[int, bytes] | None:
        """The next whole message as (channel, payload); None once the peer closed. A v5 CLOSE
        signal comes back as (255, bytes([channel]))."""
        while True:
            try:
                ev = await self._next_event()
            except RemoteProtocolError:
                ev = None
            if ev is None:
                self.closed.set()
                return None
            if isinstance(ev, Ping):
                with contextlib.suppress(ConnectionError, LocalProtocolError):
                    await self._send(ev.response())
            elif isinstance(ev, CloseConnection):
                self.close_code = ev.code
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    with contextlib.suppress(Exception):
                        self.writer.write(self.ws.send(ev.response()))
                        await self.writer.drain()
                self.closed.set()
                return None
            elif isinstance(ev, Message):
                self._size += len(ev.data)
                if self._size > MAX_MESSAGE:
                    await self.close(1009, "message too big")
                    return None
                self._parts.append(ev.data)
                if not ev.message_finished:
                    continue
                parts, self._parts, self._size = self._parts, [], 0
                if isinstance(ev, TextMessage):
                    text = "".join(p for p in parts if isinstance(p, str))
                    if not text:
                        continue
                    if not self.base64:
                        payload = text.encode()
                        return payload[0], payload[1:]
                    try:
                        return ord(text[0]) - 48, base64.b64decode(text[1:], validate=False)
                    except (binascii.Error, ValueError):
                        continue
                raw = b"".join(p for p in parts if isinstance(p, bytes))
                if raw:
                    return raw[0], raw[1:]

    async def close(self, code: int = 1000, reason: str = "", grace_s: float = 5.0) -> None:
        """Close handshake (bounded wait for the peer's close frame), then the socket."""
        clean = False
        with contextlib.suppress(Exception):
            async with asyncio.timeout(grace_s):
                if self.ws.state is ConnectionState.OPEN:
                    self.writer.write(self.ws.send(CloseConnection(code=code, reason=reason)))
                    await self.writer.drain()
                while not self.closed.is_set() and await self.recv() is not None:
                    pass
                clean = True
        self.closed.set()
        if clean:
            self.writer.close()
        else:
            self.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)

    def abort(self) -> None:
        """Drop the connection now, unsent data included."""
        self.closed.set()
        transport = self.writer.transport
        if transport is not None:
            transport.abort()

    def write_buffer_size(self) -> int:
        transport = self.writer.transport
        return transport.get_write_buffer_size() if transport is not None else 0


# -- handshakes ----------------------------------------------------------------------------------

def server_handshake(headers: list[tuple[str, str]], path: str,
                     choose: list[str]) -> tuple[WSConnection, str, bytes]:
    """Validate a WebSocket upgrade already parsed by h11 and pick a subprotocol from ``choose``
    (server preference order; "" = the client offered none). Returns the connection, the chosen
    protocol and the 101 response bytes; raises StreamingError(400) if nothing fits."""
    ws = WSConnection(ConnectionType.SERVER)
    try:
        ws.initiate_upgrade_connection([(k.encode(), v.encode()) for k, v in headers], path)
    except RemoteProtocolError as exc:
        raise StreamingError(f"bad WebSocket upgrade: {exc}", 400) from exc
    req = next((e for e in ws.events() if isinstance(e, Request)), None)
    if req is None:
        raise StreamingError("bad WebSocket upgrade", 400)
    offered = list(req.subprotocols)
    if not offered:
        if "" not in choose:
            raise StreamingError("a WebSocket subprotocol is required: one of "
                                 + ", ".join(c for c in choose if c), 400)
        return ws, "", ws.send(AcceptConnection())
    for proto in choose:
        if proto and proto in offered:
            return ws, proto, ws.send(AcceptConnection(subprotocol=proto))
    raise StreamingError(f"requested protocol(s) are not supported: {offered}; supports "
                         f"{[c for c in choose if c]}", 400)


async def client_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, t: Target,
                           protocols: list[str], timeout: float) -> ChannelSocket:
    ws = WSConnection(ConnectionType.CLIENT)
    writer.write(ws.send(Request(host=t.host_header, target=t.path_qs, subprotocols=protocols)))
    status = 0
    body = bytearray()
    async with asyncio.timeout(timeout):
        while True:
            for ev in ws.events():
                if isinstance(ev, AcceptConnection):
                    return ChannelSocket(ws, reader, writer, ev.subprotocol or "")
                if isinstance(ev, RejectConnection):
                    status = ev.status_code
                    if not ev.has_body:
                        raise StreamingError(f"websocket upgrade refused: HTTP {status}", status)
                elif isinstance(ev, RejectData):
                    body += ev.data
                    if ev.body_finished:
                        raise StreamingError(f"websocket upgrade refused: HTTP {status}: "
                                             f"{body.decode(errors='replace').strip()}", status)
            data = await reader.read(65536)
            if not data:
                raise StreamingError(f"connection closed during the websocket upgrade (HTTP {status or '?'})",
                                     status or None)
            ws.receive_data(data)
