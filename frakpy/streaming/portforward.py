"""Kubernetes port forwarding on the streaming server, over SPDY or WebSocket.

Protocol facts (kubelet's streaming server and client-go are the reference):

* SPDY (``portforward.k8s.io``): per forwarded connection the client opens two streams with
  headers ``streamtype`` = ``error`` / ``data``, ``port`` and ``requestID`` (pairing them; without
  it, kubelet pairs error stream N with data stream N+2, and so do we). Errors are written to the
  error stream as text; the connection ends when the pod side reaches EOF.
* WebSocket (``v4.channel.k8s.io`` and friends): the ports come with the request; port i uses
  data channel 2*i and error channel 2*i+1, and the server's first message on each of them is the
  port as 2 bytes little-endian. One TCP connection per port per WebSocket.
  frakpy extension: under ``v5.channel.k8s.io`` the CLOSE signal ``[255, channel]`` half-closes a
  data channel in either direction (Kubernetes defines no v5 for port forwarding; its clients
  never offer it, so they get the Kubernetes behaviour).

Half-close: the client's FIN (SPDY) or CLOSE signal (v5) becomes ``close_write()`` towards the
guest, and the guest's remaining output is still delivered. The guest's EOF ends the forwarded
connection, as in Kubernetes (client-go waits for that to close its local socket).

Hand-written: no Python library implements this protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from frakpy.errors import FailedPrecondition
from frakpy.streaming.backend import PortConnection, PortForwardRequest, StreamingBackend
from frakpy.streaming.spdy import SpdyConnection, SpdyError, SpdyStream
from frakpy.streaming.websocket import CLOSE_SIGNAL, V4, V4_BASE64, V5, ChannelSocket

log = logging.getLogger(__name__)

SPDY_PROTOCOL = "portforward.k8s.io"
SPDY_PROTOCOLS = [SPDY_PROTOCOL]
WS_PROTOCOLS = [V5, V4, V4_BASE64, "channel.k8s.io", "base64.channel.k8s.io", ""]
PAIR_TIMEOUT_S = 30.0
QUEUE_DEPTH = 16

_GONE = (SpdyError, ConnectionError, OSError)


def parse_ports(values: list[str]) -> list[int]:
    """Query ``port=80&port=81`` or ``port=80,81`` (``ports=`` accepted too); ValueError on junk."""
    ports: list[int] = []
    for value in values:
        for part in value.split(","):
            port = int(part)
            if not 1 <= port <= 65535:
                raise ValueError(f"port {part!r} out of range")
            ports.append(port)
    return ports


def _check_port(req: PortForwardRequest, port: int) -> None:
    if req.ports and port not in req.ports:
        raise FailedPrecondition(f"port {port} was not part of the port-forward request "
                                 f"(ports {', '.join(map(str, req.ports))})")


def _error_text(req: PortForwardRequest, port: int, exc: BaseException) -> str:
    return f"error forwarding port {port} to pod {req.sandbox_id}: {exc}"


async def forward(conn: PortConnection, recv: Callable[[], Awaitable[bytes]],
                  send: Callable[[bytes], Awaitable[None]], send_eof: Callable[[], Awaitable[None]]) -> None:
    """Pump both ways until the guest's EOF (then the client gets EOF too)."""

    async def to_guest() -> None:
        while data := await recv():
            await conn.write(data)
        await conn.close_write()

    inbound = asyncio.create_task(to_guest(), name="to-guest")
    try:
        while True:
            reading = asyncio.ensure_future(conn.read())
            if not inbound.done():
                await asyncio.wait({reading, inbound}, return_when=asyncio.FIRST_COMPLETED)
                if inbound.done() and inbound.exception() is not None:
                    reading.cancel()
                    raise inbound.exception()  # type: ignore[misc]
            data = await reading
            if not data:
                break
            await send(data)
        with contextlib.suppress(*_GONE):
            await send_eof()
    finally:
        inbound.cancel()
        with contextlib.suppress(BaseException):
            await inbound


# -- SPDY ------------------------------------------------------------------------------------------

@dataclass
class _Pair:
    request_id: str
    data: SpdyStream | None = None
    error: SpdyStream | None = None
    expiry: asyncio.Task[None] | None = None


class SpdyPortForward:
    """Pairs streams into forwarded connections; many at once, any ports, on one SPDY session."""

    def __init__(self, req: PortForwardRequest, backend: StreamingBackend) -> None:
        self.req = req
        self.backend = backend
        self.pairs: dict[str, _Pair] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.conn: SpdyConnection | None = None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def on_stream(self, st: SpdyStream) -> bool:
        kind = st.header("streamtype")
        try:
            port = int(st.header("port"))
        except ValueError:
            return False
        if kind not in ("error", "data") or not 1 <= port <= 65535:
            return False
        rid = st.header("requestid") or str(st.id if kind == "error" else st.id - 2)
        pair = self.pairs.get(rid)
        if pair is None:
            pair = self.pairs[rid] = _Pair(rid)
            pair.expiry = self._spawn(self._expire(pair))
        if getattr(pair, kind) is not None:
            return False
        setattr(pair, kind, st)
        if kind == "error":
            st.discard = True
        if pair.data is not None and pair.error is not None:
            del self.pairs[rid]
            if pair.expiry is not None:
                pair.expiry.cancel()
            self._spawn(self._forward(pair.data, pair.error, port))
        return True

    async def _expire(self, pair: _Pair) -> None:
        await asyncio.sleep(PAIR_TIMEOUT_S)
        if self.pairs.get(pair.request_id) is pair:
            del self.pairs[pair.request_id]
            for st in (pair.error, pair.data):
                if st is not None:
                    with contextlib.suppress(*_GONE):
                        if st is pair.error:
                            await st.write(f"timed out waiting for the streams of request {pair.request_id}".encode())
                        await st.close()

    async def _forward(self, data: SpdyStream, error: SpdyStream, port: int) -> None:
        conn: PortConnection | None = None
        try:
            _check_port(self.req, port)
            conn = await self.backend.port_forward(self.req.sandbox_id, port)
            await forward(conn, data.read, data.write, data.close)
        except asyncio.CancelledError:
            raise
        except _GONE as exc:
            log.debug("port-forward %s:%d: client side gone: %s", self.req.sandbox_id, port, exc)
        except Exception as exc:  # noqa: BLE001 - reported on the error stream
            with contextlib.suppress(*_GONE):
                await error.write(_error_text(self.req, port, exc).encode())
        finally:
            data.drop_input()  # whatever the client still sends is dropped, never buffered
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
            for st in (data, error):
                with contextlib.suppress(*_GONE):
                    await st.close()

    async def run(self, conn: SpdyConnection) -> None:
        """Until the client closes the session (or the server stops)."""
        self.conn = conn
        try:
            await conn.closed.wait()
        finally:
            for t in list(self.tasks):
                t.cancel()
            if self.tasks:
                await asyncio.gather(*self.tasks, return_exceptions=True)
            await conn.abort()


# -- WebSocket -------------------------------------------------------------------------------------

async def serve_websocket(sock: ChannelSocket, req: PortForwardRequest, ports: list[int],
                          backend: StreamingBackend) -> None:
    queues: list[asyncio.Queue[bytes]] = [asyncio.Queue(QUEUE_DEPTH) for _ in ports]
    eof = [False] * len(ports)

    def end_input(i: int) -> None:
        if not eof[i]:
            eof[i] = True
            with contextlib.suppress(asyncio.QueueFull):
                queues[i].put_nowait(b"")

    async def read_loop() -> None:
        try:
            while (msg := await sock.recv()) is not None:
                ch, data = msg
                if ch == CLOSE_SIGNAL and sock.close_signal and data:
                    if data[0] % 2 == 0 and data[0] // 2 < len(ports):
                        end_input(data[0] // 2)
                elif ch % 2 == 0 and ch // 2 < len(ports) and data and not eof[ch // 2]:
                    await queues[ch // 2].put(data)
        finally:
            for i in range(len(ports)):
                end_input(i)

    async def recv_from(i: int) -> bytes:
        if eof[i] and queues[i].empty():
            return b""
        return await queues[i].get()

    async def one(i: int, port: int) -> None:
        conn: PortConnection | None = None
        try:
            _check_port(req, port)
            conn = await backend.port_forward(req.sandbox_id, port)

            async def send(data: bytes) -> None:
                await sock.send(2 * i, data)

            async def send_eof() -> None:
                await sock.send_close_signal(2 * i)

            await forward(conn, lambda: recv_from(i), send, send_eof)
        except asyncio.CancelledError:
            raise
        except _GONE:
            pass
        except Exception as exc:  # noqa: BLE001 - reported on the error channel
            with contextlib.suppress(*_GONE):
                await sock.send(2 * i + 1, _error_text(req, port, exc).encode())
                await sock.send_close_signal(2 * i)
        finally:
            eof[i] = True  # drop what the client still sends on this port (and unblock the reader)
            while not queues[i].empty():
                queues[i].get_nowait()
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()

    try:
        for i, port in enumerate(ports):
            prefix = port.to_bytes(2, "little")
            await sock.send(2 * i, prefix)
            await sock.send(2 * i + 1, prefix)
    except _GONE:
        sock.abort()
        return
    reader = asyncio.create_task(read_loop(), name="ws-portforward-read")
    workers = [asyncio.create_task(one(i, p), name=f"port-{p}") for i, p in enumerate(ports)]
    gone: asyncio.Future[Any] = asyncio.ensure_future(sock.closed.wait())
    all_done: asyncio.Future[Any] = asyncio.gather(*workers, return_exceptions=True)
    try:
        await asyncio.wait({gone, all_done}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (*workers, gone):
            t.cancel()
        await asyncio.gather(*workers, gone, return_exceptions=True)
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader
        await sock.close(1000)
