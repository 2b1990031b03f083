"""A client for the streaming server's exec/attach/port-forward URLs (SPDY/3.1 or WebSocket).

Used by the integration tests, the CLI and the benchmarks; it speaks the same wire protocols as
kubectl/crictl (client-go), so it also works against another CRI runtime's streaming server.

    result = await exec_stream(url, stdin=b"hi\\n")                  # one shot
    async with RemoteCommand.connect(url, stdin=True, tty=True) as rc:  # interactive
        await rc.resize(80, 24); await rc.send(b"ls\\n"); await rc.close_stdin()
        while (item := await rc.read()) is not None: channel, data = item
        result = await rc.wait()
    async with PortForward.connect(url) as pf:                         # port forward
        s = await pf.open(8080); await s.write(b"GET / ..."); await s.close_write(); await s.read()

Reads are flow-controlled: nothing is buffered beyond a few chunks until ``read()`` asks for
more, so a slow reader slows the remote process down instead of filling memory.

Hand-written: there is no Python client for these Kubernetes protocols (and no SPDY library).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl as _ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from frakpy.streaming._http import StreamingError, client_upgrade, open_connection, parse_url
from frakpy.streaming.remotecommand import SPDY_PROTOCOLS, SPDY_V1, spdy_version, ws_json_status
from frakpy.streaming.spdy import SpdyConnection, SpdyError, SpdyStream
from frakpy.streaming.websocket import CLOSE_SIGNAL, V1, V4, V5, ChannelSocket, client_handshake

SSLArg = _ssl.SSLContext | bool | None
STDOUT, STDERR, ERROR, RESIZE = 1, 2, 3, 4
CONNECT_TIMEOUT_S = 30.0
QUEUE_DEPTH = 4


@dataclass
class ExecResult:
    stdout: bytes
    stderr: bytes
    exit_code: int  # -1: the command did not run or its code is unknown (see status)
    status: dict[str, Any] | None  # the remote metav1.Status (v4/v5), or {"status","message"} for v1-v3 failures


class PortForwardError(StreamingError):
    """The server reported an error for one forwarded connection (e.g. connection refused)."""


def _parse_status(raw: bytes, json_status: bool) -> tuple[int, dict[str, Any] | None]:
    if not raw:
        return 0, None
    if json_status:
        try:
            status = json.loads(raw)
        except ValueError:
            return -1, {"status": "Failure", "message": raw.decode(errors="replace")}
        if not isinstance(status, dict):
            return -1, {"status": "Failure", "message": raw.decode(errors="replace")}
        if status.get("status") == "Success":
            return 0, status
        if status.get("reason") == "NonZeroExitCode":
            for cause in (status.get("details") or {}).get("causes") or []:
                if cause.get("reason") == "ExitCode":
                    with contextlib.suppress(TypeError, ValueError):
                        return int(cause.get("message")), status
        return -1, status
    text = raw.decode(errors="replace")
    m = re.search(r"exited with (\d+)|exit code:? (\d+)", text)
    return (int(m.group(1) or m.group(2)) if m else -1), {"status": "Failure", "message": text}


def _with_query(url: str, params: list[tuple[str, str]]) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit(parts._replace(query=query))


async def _spdy_connect(url: str, protocols: list[str], ssl: SSLArg,
                        timeout: float) -> tuple[SpdyConnection, str]:
    t = parse_url(url)
    reader, writer = await open_connection(t, ssl, timeout)
    try:
        headers = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]
        headers += [("X-Stream-Protocol-Version", p) for p in protocols]
        got, leftover = await client_upgrade(reader, writer, t, headers, timeout)
        h = dict(got)
        if h.get("upgrade", "").lower() != "spdy/3.1":
            raise StreamingError(f"server upgraded to {h.get('upgrade')!r}, not SPDY/3.1")
        chosen = h.get("x-stream-protocol-version", "")
        if chosen and chosen not in protocols:
            raise StreamingError(f"server chose protocol {chosen!r}, not one of {protocols}")
    except BaseException:
        writer.close()
        raise
    conn = SpdyConnection(reader, writer, server=False, initial_data=leftover)
    conn.start()
    return conn, chosen


async def _ws_connect(url: str, protocols: list[str], ssl: SSLArg, timeout: float) -> ChannelSocket:
    t = parse_url(url)
    reader, writer = await open_connection(t, ssl, timeout)
    try:
        return await client_handshake(reader, writer, t, protocols, timeout)
    except BaseException:
        writer.close()
        raise


# -- exec / attach ---------------------------------------------------------------------------------

class RemoteCommand:
    """One exec/attach session. Create with ``RemoteCommand.connect(...)`` (an async context
    manager that closes the connection on exit)."""

    def __init__(self, transport: str, protocol: str, tty: bool) -> None:
        self.transport = transport
        self.protocol = protocol  # negotiated subprotocol ("" = none, i.e. legacy v1)
        self.tty = tty
        self._queue: asyncio.Queue[tuple[int, bytes | None]] = asyncio.Queue(QUEUE_DEPTH)
        self._open_outputs = 0
        self._status_raw = b""
        self._status_done = asyncio.Event()
        self._lost = False  # the connection ended before the status arrived
        self._tasks: list[asyncio.Task[None]] = []
        self._json = False
        # transport state
        self._conn: SpdyConnection | None = None
        self._streams: dict[str, SpdyStream] = {}
        self._sock: ChannelSocket | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, url: str, *, transport: str = "spdy", protocol: str | None = None,
                      stdin: bool = False, stdout: bool = True, stderr: bool = True, tty: bool = False,
                      ssl: SSLArg = None, timeout: float = CONNECT_TIMEOUT_S) -> AsyncIterator[RemoteCommand]:
        """Open an exec/attach URL. ``transport`` is "spdy" (default protocol v4, falling back to
        v3/v2/v1) or "websocket" (v5, falling back to v4/v1); ``protocol`` forces one. The streams
        should match the CRI request the URL was issued for (``stderr`` is ignored with ``tty``)."""
        if tty:
            stderr = False
        rc = cls(transport, "", tty)
        if transport == "spdy":
            await rc._open_spdy(url, [protocol] if protocol else SPDY_PROTOCOLS, stdin, stdout, stderr, ssl, timeout)
        elif transport == "websocket":
            params = [("stdin", "1" if stdin else "0"), ("stdout", "1" if stdout else "0"),
                      ("stderr", "1" if stderr else "0"), ("tty", "1" if tty else "0")]
            await rc._open_ws(_with_query(url, params), [protocol] if protocol else [V5, V4, V1], ssl, timeout)
        else:
            raise ValueError(f"unknown transport {transport!r}: spdy or websocket")
        try:
            yield rc
        finally:
            await rc.aclose()

    async def _open_spdy(self, url: str, protocols: list[str], stdin: bool, stdout: bool, stderr: bool,
                         ssl: SSLArg, timeout: float) -> None:
        conn, chosen = await _spdy_connect(url, protocols, ssl, timeout)
        self._conn, self.protocol = conn, chosen or SPDY_V1
        self._json = spdy_version(self.protocol) >= 4
        try:
            roles = ["error"] + ["stdin"] * stdin + ["stdout"] * stdout + ["stderr"] * stderr
            if self.tty and spdy_version(self.protocol) >= 3:
                roles.append("resize")
            for role in roles:
                self._streams[role] = await conn.open_stream([("streamtype", role)], timeout=timeout)
            await self._streams["error"].close()  # we never write to it
        except BaseException:
            await conn.abort()
            raise
        for role, channel in (("stdout", STDOUT), ("stderr", STDERR)):
            if role in self._streams:
                self._open_outputs += 1
                self._tasks.append(asyncio.create_task(self._pump_spdy(self._streams[role], channel)))
        self._tasks.append(asyncio.create_task(self._read_spdy_status()))

    async def _pump_spdy(self, st: SpdyStream, channel: int) -> None:
        with contextlib.suppress(StreamingError, ConnectionError, OSError, SpdyError):
            while data := await st.read():
                await self._queue.put((channel, data))
        await self._queue.put((channel, None))

    async def _read_spdy_status(self) -> None:
        st = self._streams["error"]
        try:
            self._status_raw = await st.read_all()
            self._lost = not self._status_raw and st.reset_received  # reset/dropped, not FIN
        finally:
            self._status_done.set()

    async def _open_ws(self, url: str, protocols: list[str], ssl: SSLArg, timeout: float) -> None:
        self._sock = await _ws_connect(url, protocols, ssl, timeout)
        self.protocol = self._sock.protocol
        self._json = ws_json_status(self.protocol)
        self._open_outputs = 1
        self._tasks.append(asyncio.create_task(self._pump_ws(self._sock)))

    async def _pump_ws(self, sock: ChannelSocket) -> None:
        status = bytearray()
        try:
            while (msg := await sock.recv()) is not None:
                channel, data = msg
                if channel in (STDOUT, STDERR) and data:
                    await self._queue.put((channel, data))
                elif channel == ERROR:
                    status += data
        finally:
            self._status_raw = bytes(status)
            # v4/v5 always send a status; older protocols end with a close frame
            self._lost = not status if self._json else sock.close_code is None
            self._status_done.set()
        await self._queue.put((STDOUT, None))

    # -- public API --------------------------------------------------------------------------------
    async def send(self, data: bytes) -> None:
        """Write to the process's stdin (waits while the remote side is not keeping up)."""
        if self._sock is not None:
            await self._sock.send(0, data)
        elif "stdin" in self._streams:
            await self._streams["stdin"].write(data)
        else:
            raise StreamingError("this session has no stdin (connect with stdin=True)")

    async def close_stdin(self) -> None:
        """EOF on stdin. WebSocket needs v5 for this (older versions cannot signal it: no-op)."""
        if self._sock is not None:
            await self._sock.send_close_signal(0)
        elif "stdin" in self._streams:
            await self._streams["stdin"].close()

    async def resize(self, width: int, height: int) -> None:
        payload = json.dumps({"Width": width, "Height": height}).encode()
        if self._sock is not None:
            await self._sock.send(RESIZE, payload)
        elif "resize" in self._streams:
            await self._streams["resize"].write(payload)

    async def read(self) -> tuple[int, bytes] | None:
        """Next output chunk as (1 = stdout | 2 = stderr, data); None once all output ended."""
        while self._open_outputs > 0:
            channel, data = await self._queue.get()
            if data is None:
                self._open_outputs -= 1
                continue
            return channel, data
        return None

    async def wait(self) -> ExecResult:
        """Collect the output not yet read and the final status."""
        out, err = bytearray(), bytearray()
        while (item := await self.read()) is not None:
            (out if item[0] == STDOUT else err).extend(item[1])
        await self._status_done.wait()
        if self._lost:
            return ExecResult(bytes(out), bytes(err), -1, {
                "status": "Failure", "message": "the connection ended before the exit status arrived"})
        code, status = _parse_status(self._status_raw, self._json)
        if status is None and self._json:
            status = {"metadata": {}, "status": "Success"}
        return ExecResult(bytes(out), bytes(err), code, status)

    async def aclose(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        if self._conn is not None:
            await self._conn.abort()
        if self._sock is not None:
            await self._sock.close(1000, grace_s=1.0)


async def exec_stream(url: str, *, transport: str = "spdy", protocol: str | None = None,
                      stdin: bytes | None = None, tty: bool = False,
                      resize: list[tuple[int, int]] | None = None, ssl: SSLArg = None) -> ExecResult:
    """Run an exec (or attach) URL to completion: send ``resize`` events and ``stdin`` (then EOF),
    collect stdout/stderr and the exit code."""
    async with RemoteCommand.connect(url, transport=transport, protocol=protocol, stdin=stdin is not None,
                                     tty=tty, ssl=ssl) as rc:

        async def feed() -> None:
            for w, h in resize or []:
                await rc.resize(w, h)
            if stdin is not None:
                if stdin:
                    await rc.send(stdin)
                await rc.close_stdin()

        feeder = asyncio.create_task(feed())
        try:
            result = await rc.wait()
        finally:
            if not feeder.done():
                feeder.cancel()
            with contextlib.suppress(BaseException):
                await feeder
        return result


# -- port forward ----------------------------------------------------------------------------------

class PFStream:
    """One forwarded TCP connection."""

    async def read(self) -> bytes:
        """Next chunk; b"" at EOF. Raises PortForwardError if the server reported one."""
        raise NotImplementedError

    async def write(self, data: bytes) -> None:
        raise NotImplementedError

    async def close_write(self) -> None:
        """Half-close (the pod side reads EOF; its answer still arrives)."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class _SpdyPFStream(PFStream):
    def __init__(self, port: int, data: SpdyStream, error: SpdyStream) -> None:
        self.port = port
        self._data = data
        self._error = error

    async def read(self) -> bytes:
        chunk = await self._data.read()
        if not chunk:
            msg = await self._error.read_all()
            if msg:
                raise PortForwardError(msg.decode(errors="replace"))
        return chunk

    async def write(self, data: bytes) -> None:
        await self._data.write(data)

    async def close_write(self) -> None:
        await self._data.close()

    async def close(self) -> None:
        self._data.reset()
        self._error.reset()


class _WSPFStream(PFStream):
    def __init__(self, pf: PortForward, index: int, port: int) -> None:
        self.pf = pf
        self.index = index
        self.port = port
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_DEPTH)
        self.error = bytearray()
        self.eof = False

    async def read(self) -> bytes:
        if self.eof and self.queue.empty():
            chunk = b""
        else:
            chunk = await self.queue.get()
        if not chunk:
            self.eof = True
            if self.error:
                raise PortForwardError(self.error.decode(errors="replace"))
        return chunk

    async def write(self, data: bytes) -> None:
        assert self.pf._sock is not None
        await self.pf._sock.send(2 * self.index, data)

    async def close_write(self) -> None:
        assert self.pf._sock is not None
        await self.pf._sock.send_close_signal(2 * self.index)

    async def close(self) -> None:
        self.eof = True


class PortForward:
    """A port-forward session. SPDY: any number of connections to any ports (``open`` per
    connection). WebSocket: exactly one connection per port the URL was issued for (or listed in
    ``ports``), opened once each; half-close needs v5 (a frakpy extension, offered first)."""

    def __init__(self, transport: str) -> None:
        self.transport = transport
        self._conn: SpdyConnection | None = None
        self._next_request = 0
        self._sock: ChannelSocket | None = None
        self._ws_streams: dict[int, _WSPFStream] = {}  # by channel index
        self._ws_ports: dict[int, int] = {}
        self._ws_ports_known = asyncio.Event()
        self._ws_opened: set[int] = set()
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, url: str, *, transport: str = "spdy", ports: Sequence[int] = (),
                      ssl: SSLArg = None, timeout: float = CONNECT_TIMEOUT_S) -> AsyncIterator[PortForward]:
        pf = cls(transport)
        if transport == "spdy":
            pf._conn, _ = await _spdy_connect(url, ["portforward.k8s.io"], ssl, timeout)
        elif transport == "websocket":
            if ports:
                url = _with_query(url, [("port", str(p)) for p in ports])
            pf._sock = await _ws_connect(url, [V5, V4], ssl, timeout)
            pf._reader = asyncio.create_task(pf._ws_read_loop(pf._sock))
        else:
            raise ValueError(f"unknown transport {transport!r}: spdy or websocket")
        try:
            yield pf
        finally:
            await pf.aclose()

    async def open(self, port: int, *, timeout: float = CONNECT_TIMEOUT_S) -> PFStream:
        if self._conn is not None:
            rid = str(self._next_request)
            self._next_request += 1
            base = [("port", str(port)), ("requestid", rid)]
            error = await self._conn.open_stream([("streamtype", "error"), *base], timeout=timeout)
            await error.close()  # the client never writes on the error stream
            data = await self._conn.open_stream([("streamtype", "data"), *base], timeout=timeout)
            return _SpdyPFStream(port, data, error)
        async with asyncio.timeout(timeout):
            while True:
                mine = [index for index, p in self._ws_ports.items() if p == port]
                for index in mine:
                    if index not in self._ws_opened:
                        self._ws_opened.add(index)
                        return self._ws_streams[index]
                if mine:
                    raise StreamingError(f"port {port} is already open: a port-forward WebSocket carries one "
                                         "connection per port")
                if self._sock is None or self._sock.closed.is_set():
                    raise StreamingError("port-forward connection is closed")
                self._ws_ports_known.clear()
                await self._ws_ports_known.wait()

    async def _ws_read_loop(self, sock: ChannelSocket) -> None:
        try:
            while (msg := await sock.recv()) is not None:
                channel, data = msg
                if channel == CLOSE_SIGNAL:
                    if data and data[0] % 2 == 0 and (s := self._ws_streams.get(data[0] // 2)) is not None:
                        await s.queue.put(b"")
                    continue
                index, is_error = divmod(channel, 2)
                stream = self._ws_streams.get(index)
                if stream is None:  # the first message on a channel is its port
                    if len(data) >= 2:
                        port = int.from_bytes(data[:2], "little")
                        self._ws_ports[index] = port
                        self._ws_streams[index] = _WSPFStream(self, index, port)
                        self._ws_ports_known.set()
                    continue
                if is_error:
                    if len(data) == 2 and not stream.error and int.from_bytes(data, "little") == stream.port:
                        continue  # the error channel's own port prefix
                    stream.error += data
                elif data:
                    await stream.queue.put(data)
        finally:
            for s in self._ws_streams.values():
                s.eof = True
                with contextlib.suppress(asyncio.QueueFull):
                    s.queue.put_nowait(b"")
            self._ws_ports_known.set()

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if self._conn is not None:
            await self._conn.abort()
        if self._sock is not None:
            await self._sock.close(1000, grace_s=1.0)


class LocalForward:
    """A local listener forwarding each accepted connection through a PortForward session
    (like ``kubectl port-forward``). Over WebSocket only one connection can be served (a URL's
    token is single-use and a WebSocket carries one connection per port)."""

    def __init__(self, server: asyncio.Server, pf: PortForward, tasks: set[asyncio.Task[None]],
                 session: contextlib.AbstractAsyncContextManager[PortForward]) -> None:
        self.server = server
        self.pf = pf
        self._session = session  # keeps the PortForward context (and so its connection) alive
        self._tasks = tasks
        self.port: int = server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._session.__aexit__(None, None, None)

    async def __aenter__(self) -> LocalForward:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def forward_local(url: str, port: int, *, transport: str = "spdy", local_host: str = "127.0.0.1",
                        local_port: int = 0, ssl: SSLArg = None) -> LocalForward:
    """Listen on ``local_host:local_port`` (0 = any free port, see ``.port``) and forward every
    connection to ``port`` in the pod. Close with ``await lf.close()`` or ``async with``."""
    cm = PortForward.connect(url, transport=transport, ports=[port] if transport == "websocket" else (), ssl=ssl)
    pf = await cm.__aenter__()
    tasks: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        stream: PFStream | None = None
        try:
            stream = await pf.open(port)

            async def up() -> None:
                while data := await reader.read(65536):
                    await stream.write(data)
                await stream.close_write()

            upt = asyncio.create_task(up())
            try:
                while data := await stream.read():
                    writer.write(data)
                    await writer.drain()
            finally:
                upt.cancel()
                with contextlib.suppress(BaseException):
                    await upt
        except (StreamingError, SpdyError, ConnectionError, OSError):
            pass
        finally:
            tasks.discard(task)
            if stream is not None:
                with contextlib.suppress(Exception):
                    await stream.close()
            writer.close()

    server = await asyncio.start_server(handle, local_host, local_port)
    return LocalForward(server, pf, tasks, cm)
