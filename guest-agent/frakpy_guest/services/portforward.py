"""Port forwarding: TCP connections to the guest's loopback (the pod's network namespace).

``PortConnect`` opens the connection and streams what the guest side sends: the socket is read
by an ``iobuf.Pump`` into an ``iobuf.OutputBuffer`` of ``window_bytes``, so at most that much is
unacknowledged (``PortAck``) and memory is bounded: a slow host stops the reads and TCP pushes
back on the sender in the pod. ``PortWrite`` blocks until the socket took the data. The
connection lives as long as its stream: ``PortClose`` or a lost ttrpc connection close it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket

from frakpy.agent.protocol import agent_pb2 as pb
from frakpy.agent.protocol.ttrpc import Code, ServerCall, TTRPCError
from frakpy_guest import iobuf

DEFAULT_WINDOW = 256 << 10
MAX_WINDOW = 8 << 20
CONNECT_TIMEOUT = 10.0
SOCKET_READ = 256 << 10  # per recv: a loopback socket often has more than a pipe's 64 KiB
COALESCE = 1 << 20  # bytes per PortData message at most, from chunks already buffered
_ids = itertools.count(1)


class Conn:
    def __init__(self, conn_id: str, sock: socket.socket, port: int, window: int) -> None:
        self.id = conn_id
        self.port = port
        self.sock = sock
        self.fd = sock.fileno()
        self.buffer = iobuf.OutputBuffer(window)
        self.closed = asyncio.Event()
        # the pump owns a duplicate: it closes it at EOF while the write half stays usable
        self.pump = iobuf.Pump(os.dup(self.fd), iobuf.STDOUT, self.buffer, self.buffer.close,
                               read_size=SOCKET_READ)

    async def write(self, data: bytes) -> int:
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        written = 0
        while written < len(view):
            if self.closed.is_set():
                raise TTRPCError(Code.FAILED_PRECONDITION, f"port {self.port} connection {self.id} is closed")
            try:
                written += os.write(self.fd, view[written:])
            except (BlockingIOError, InterruptedError):
                ready = loop.create_future()
                loop.add_writer(self.fd, lambda r=ready: r.done() or r.set_result(None))
                try:
                    await ready
                finally:
                    loop.remove_writer(self.fd)
            except OSError as exc:
                raise TTRPCError(Code.UNAVAILABLE, f"port {self.port}: writing: {exc.strerror or exc}") from exc
        return written

    def close_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self.pump.finish()
        self.buffer.close()
        self.sock.close()


def _table(state) -> dict[str, Conn]:  # type: ignore[no-untyped-def]
    table = getattr(state, "port_conns", None)
    if table is None:
        table = state.port_conns = {}
    return table


def _get(state, conn_id: str) -> Conn:  # type: ignore[no-untyped-def]
    conn = _table(state).get(conn_id)
    if conn is None:
        raise TTRPCError(Code.NOT_FOUND, f"no port-forward connection {conn_id!r}")
    return conn


async def connect(port: int) -> socket.socket:
    """127.0.0.1 first, then ::1 (as containerd does); refused on both -> UNAVAILABLE."""
    if not 0 < port < 65536:
        raise TTRPCError(Code.INVALID_ARGUMENT, f"port {port} is out of range")
    loop = asyncio.get_running_loop()
    failures: list[OSError] = []
    for family, addr in ((socket.AF_INET, ("127.0.0.1", port)), (socket.AF_INET6, ("::1", port))):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:  # e.g. no IPv6 in this kernel
            if not failures:
                failures.append(exc)
            continue
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, addr), CONNECT_TIMEOUT)
        except TimeoutError:
            sock.close()
            failures.append(TimeoutError(f"timed out after {CONNECT_TIMEOUT:g}s"))
            continue
        except OSError as exc:
            sock.close()
            failures.append(exc)
            continue
        except BaseException:
            sock.close()
            raise
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return sock
    if any(isinstance(f, ConnectionRefusedError) for f in failures):
        raise TTRPCError(Code.UNAVAILABLE, f"port {port}: connection refused")
    first = failures[0] if failures else OSError("no address to connect to")
    raise TTRPCError(Code.UNAVAILABLE, f"port {port}: {getattr(first, 'strerror', None) or first}")


async def port_connect(state, req: pb.PortConnectRequest, call: ServerCall):  # type: ignore[no-untyped-def]
    window = min(req.window_bytes or DEFAULT_WINDOW, MAX_WINDOW)
    sock = await connect(req.port)
    conn = Conn(f"p{next(_ids)}", sock, req.port, window)
    table = _table(state)
    table[conn.id] = conn
    try:
        yield pb.PortData(conn_id=conn.id)
        async for chunk in conn.buffer.read(0, coalesce=COALESCE):
            yield pb.PortData(conn_id=conn.id, offset=chunk.offset, data=chunk.data)
        if not conn.closed.is_set():
            yield pb.PortData(conn_id=conn.id, offset=conn.buffer.end, eof=True)
            await conn.closed.wait()
    finally:
        conn.close()
        table.pop(conn.id, None)


async def port_ack(state, req: pb.PortAckRequest, call: ServerCall) -> pb.PortAckResponse:  # type: ignore[no-untyped-def]
    conn = _table(state).get(req.conn_id)
    if conn is not None:  # acknowledging a closed connection is harmless
        conn.buffer.ack(req.up_to_offset)
    return pb.PortAckResponse()


async def port_write(state, req: pb.PortWriteRequest, call: ServerCall) -> pb.PortWriteResponse:  # type: ignore[no-untyped-def]
    conn = _get(state, req.conn_id)
    written = await conn.write(bytes(req.data)) if req.data else 0
    if req.close_write:
        conn.close_write()
    return pb.PortWriteResponse(written=written)


async def port_close(state, req: pb.PortCloseRequest, call: ServerCall) -> pb.PortCloseResponse:  # type: ignore[no-untyped-def]
    conn = _table(state).get(req.conn_id)
    if conn is not None:
        conn.close()
    return pb.PortCloseResponse()
