"""Kubernetes remotecommand (exec / attach) on the streaming server, over SPDY or WebSocket.

Protocol facts (Kubernetes' kubelet streaming server and client-go are the reference):

* SPDY: after the 101 the client opens one stream per role, header ``streamtype`` = ``error``,
  ``stdin``, ``stdout``, ``stderr`` and (TTY, v3+) ``resize``. Versions, negotiated with
  ``X-Stream-Protocol-Version``: ``channel.k8s.io`` (v1), ``v2.channel.k8s.io``,
  ``v3.channel.k8s.io`` (adds resize), ``v4.channel.k8s.io`` (the error stream carries a
  JSON ``metav1.Status``; v1-v3 carry the failure message as plain text and nothing on success).
* WebSocket: every message starts with its channel: 0 stdin, 1 stdout, 2 stderr, 3 error/status,
  4 resize; ``v5.channel.k8s.io`` adds the CLOSE signal ``[255, channel]`` (stdin EOF).
* Resize payloads are JSON objects ``{"Width": w, "Height": h}``, one after another.
* A non-zero exit is ``status: Failure, reason: NonZeroExitCode`` with the code in
  ``details.causes[{reason: ExitCode, message: "<n>"}]``.

The stored CRI request (not the client's query string) decides which streams exist, as in
containerd. The protocol logic is the same for both transports; ``Channels`` is the seam.

Hand-written: no Python library implements this protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shlex
from collections.abc import AsyncIterator
from typing import Any

from frakpy.errors import FrakpyError
from frakpy.streaming.backend import (
    STDERR,
    STDOUT,
    AttachRequest,
    ExecRequest,
    IOSession,
    StreamingBackend,
)
from frakpy.streaming.spdy import SpdyConnection, SpdyError, SpdyStream
from frakpy.streaming.websocket import CLOSE_SIGNAL, V4, V4_BASE64, V5, ChannelSocket

log = logging.getLogger(__name__)

SPDY_V1 = "channel.k8s.io"
SPDY_V2 = "v2.channel.k8s.io"
SPDY_V3 = "v3.channel.k8s.io"
SPDY_V4 = "v4.channel.k8s.io"
SPDY_PROTOCOLS = [SPDY_V4, SPDY_V3, SPDY_V2, SPDY_V1]  # server preference
WS_PROTOCOLS = [V5, V4, V4_BASE64, "channel.k8s.io", "base64.channel.k8s.io", ""]

STDIN_CH, STDOUT_CH, STDERR_CH, ERROR_CH, RESIZE_CH = 0, 1, 2, 3, 4

STREAM_WAIT_S = 30.0  # kubelet's stream creation timeout
STREAM_SETTLE_S = 1.0  # with the error stream present, stop waiting for absent streams after this quiet time
QUEUE_DEPTH = 16


def spdy_version(protocol: str) -> int:
    return {SPDY_V4: 4, SPDY_V3: 3, SPDY_V2: 2}.get(protocol, 1)


def ws_json_status(protocol: str) -> bool:
    return protocol in (V5, V4, V4_BASE64)


# -- status ----------------------------------------------------------------------------------------

def status_success() -> dict[str, Any]:
    return {"metadata": {}, "status": "Success"}


def status_exit(code: int, cmd: tuple[str, ...] = ()) -> dict[str, Any]:
    what = f"command {shlex.join(cmd)!r}" if cmd else "process"
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: {what} exited with {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


_REASONS = {
    "NOT_FOUND": ("NotFound", 404),
    "INVALID_ARGUMENT": ("BadRequest", 400),
    "FAILED_PRECONDITION": ("BadRequest", 400),
    "ALREADY_EXISTS": ("AlreadyExists", 409),
    "UNAVAILABLE": ("ServiceUnavailable", 503),
    "DEADLINE_EXCEEDED": ("Timeout", 504),
    "UNAUTHENTICATED": ("Unauthorized", 401),
    "RESOURCE_EXHAUSTED": ("TooManyRequests", 429),
    "UNIMPLEMENTED": ("MethodNotAllowed", 405),
}


def status_error(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, FrakpyError):
        reason, code = _REASONS.get(exc.code, ("InternalError", 500))
        message = exc.message
    else:
        reason, code, message = "InternalError", 500, f"error executing command in container: {exc}"
    return {"metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code}


def encode_status(status: dict[str, Any], json_status: bool) -> bytes:
    """v4/v5: the Status as JSON; v1-v3: the message as text, and nothing at all on success."""
    if json_status:
        return json.dumps(status, separators=(",", ":")).encode()
    if status.get("status") == "Success":
        return b""
    return str(status.get("message", "error")).encode()


class ResizeDecoder:
    """Consecutive JSON objects (as Go's json.Encoder writes them) -> (width, height) pairs."""

    def __init__(self) -> None:
        self._buf = ""
        self._dec = json.JSONDecoder()

    def feed(self, data: bytes) -> list[tuple[int, int]]:
        self._buf += data.decode("utf-8", errors="replace")
        out: list[tuple[int, int]] = []
        while True:
            text = self._buf.lstrip()
            if not text:
                self._buf = ""
                return out
            try:
                obj, end = self._dec.raw_decode(text)
            except json.JSONDecodeError:
                if len(text) > 4096:  # garbage, not an incomplete object
                    self._buf = ""
                else:
                    self._buf = text
                return out
            self._buf = text[end:]
            if isinstance(obj, dict):
                try:
                    out.append((int(obj.get("Width", 0)), int(obj.get("Height", 0))))
                except (TypeError, ValueError):
                    pass


# -- transport seam --------------------------------------------------------------------------------

class Channels:
    """The client's side of one remotecommand connection, whatever the transport."""

    gone: asyncio.Event  # the client disconnected

    async def read_stdin(self) -> bytes:  # b"" at EOF
        raise NotImplementedError

    def resizes(self) -> AsyncIterator[tuple[int, int]]:
        raise NotImplementedError

    async def write(self, channel: int, data: bytes) -> None:
        raise NotImplementedError

    async def close_outputs(self) -> None:
        raise NotImplementedError

    async def write_status(self, status: dict[str, Any]) -> None:
        raise NotImplementedError

    async def finish(self) -> None:
        """Everything was sent: end the connection gracefully."""
        raise NotImplementedError

    async def abort(self) -> None:
        raise NotImplementedError

    def buffered(self) -> int:
        return 0


class SpdyChannels(Channels):
    def __init__(self, conn: SpdyConnection, streams: dict[str, SpdyStream], protocol: str, tty: bool) -> None:
        self.conn = conn
        self.streams = streams
        self.json_status = spdy_version(protocol) >= 4
        self.tty = tty
        self.gone = conn.closed

    async def read_stdin(self) -> bytes:
        st = self.streams.get("stdin")
        return await st.read() if st is not None else b""

    async def resizes(self) -> AsyncIterator[tuple[int, int]]:
        st = self.streams.get("resize")
        if st is None:
            return
        dec = ResizeDecoder()
        while data := await st.read():
            for size in dec.feed(data):
                yield size

    async def write(self, channel: int, data: bytes) -> None:
        name = "stdout" if channel == STDOUT or self.tty else "stderr"
        st = self.streams.get(name)
        if st is not None and data:
            await st.write(data)

    async def close_outputs(self) -> None:
        for name in ("stdout", "stderr"):
            if (st := self.streams.get(name)) is not None:
                await st.close()

    async def write_status(self, status: dict[str, Any]) -> None:
        st = self.streams.get("error")
        if st is None:
            return
        payload = encode_status(status, self.json_status)
        if payload:
            await st.write(payload)
        await st.close()

    async def finish(self) -> None:
        await self.conn.shutdown()

    async def abort(self) -> None:
        await self.conn.abort()

    def buffered(self) -> int:
        return self.conn.write_buffer_size() + sum(st.buffered for st in list(self.conn.streams.values()))


async def collect_spdy_streams(streams: dict[str, SpdyStream], arrived: asyncio.Event, expected: set[str],
                               closed: asyncio.Event) -> bool:
    """Wait until the expected streams exist (True). With the error stream present, a quiet
    STREAM_SETTLE_S ends the wait too (a client that asked for fewer streams than the CRI request);
    False when the connection dropped or nothing usable arrived within STREAM_WAIT_S."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STREAM_WAIT_S
    while not expected <= streams.keys():
        if closed.is_set():
            return False
        wait = deadline - loop.time()
        if "error" in streams:
            wait = min(wait, STREAM_SETTLE_S)
        if wait <= 0:
            return "error" in streams
        arrived.clear()
        try:
            await asyncio.wait_for(arrived.wait(), wait)
        except TimeoutError:
            if "error" in streams:
                return True
    return True


def spdy_stream_acceptor(streams: dict[str, SpdyStream], arrived: asyncio.Event,
                         req: ExecRequest | AttachRequest) -> Any:
    wanted = {"error", "resize"}
    if req.stdin:
        wanted.add("stdin")
    if req.stdout:
        wanted.add("stdout")
    if req.stderr:
        wanted.add("stderr")

    def on_stream(st: SpdyStream) -> bool:
        kind = st.header("streamtype")
        if kind not in ("error", "stdin", "stdout", "stderr", "resize") or kind in streams:
            return False
        if kind not in wanted or kind == "error" or (kind == "resize" and not req.tty):
            st.discard = True  # nobody reads it; keep the peer's window open
        if kind in wanted:
            streams[kind] = st
        else:
            streams[f"unused-{st.id}"] = st
        arrived.set()
        return True

    return on_stream


def expected_spdy_streams(req: ExecRequest | AttachRequest, protocol: str) -> set[str]:
    exp = {"error"}
    if req.stdin:
        exp.add("stdin")
    if req.stdout:
        exp.add("stdout")
    if req.stderr and not req.tty:
        exp.add("stderr")
    if req.tty and spdy_version(protocol) >= 3:
        exp.add("resize")
    return exp


class WebSocketChannels(Channels):
    def __init__(self, sock: ChannelSocket, req: ExecRequest | AttachRequest) -> None:
        self.sock = sock
        self.req = req
        self.json_status = ws_json_status(sock.protocol)
        self.gone = sock.closed
        self._stdin: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_DEPTH)
        self._resize: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue(QUEUE_DEPTH)
        self._stdin_eof = False
        self._reader = asyncio.get_running_loop().create_task(self._read_loop(), name="ws-remotecommand-read")

    async def start(self) -> None:
        # As the kubelet does: an empty message on the lowest writable channel tells the client
        # that the connection is established.
        first = STDOUT_CH if self.req.stdout else STDERR_CH if self.req.stderr else ERROR_CH
        await self.sock.send(first, b"")

    async def _read_loop(self) -> None:
        dec = ResizeDecoder()
        try:
            while (msg := await self.sock.recv()) is not None:
                ch, data = msg
                # channels nobody consumes (no stdin / no TTY in the request) are dropped, so
                # that they can never fill up and stall the reading of this socket
                if ch == STDIN_CH and data and self.req.stdin and not self._stdin_eof:
                    await self._stdin.put(data)
                elif ch == RESIZE_CH and self.req.tty:
                    for size in dec.feed(data):
                        await self._resize.put(size)
                elif ch == CLOSE_SIGNAL and self.sock.close_signal and data[:1] == bytes([STDIN_CH]):
                    self._eof_stdin()
        finally:
            self._eof_stdin()
            with contextlib.suppress(asyncio.QueueFull):
                self._resize.put_nowait(None)

    def _eof_stdin(self) -> None:
        if not self._stdin_eof:
            self._stdin_eof = True
            with contextlib.suppress(asyncio.QueueFull):
                self._stdin.put_nowait(b"")

    async def read_stdin(self) -> bytes:
        if self._stdin_eof and self._stdin.empty():
            return b""
        return await self._stdin.get()

    async def resizes(self) -> AsyncIterator[tuple[int, int]]:
        while (size := await self._resize.get()) is not None:
            yield size

    async def write(self, channel: int, data: bytes) -> None:
        if channel == STDERR and self.req.tty:
            channel = STDOUT
        if data and ((channel == STDOUT and self.req.stdout) or (channel == STDERR and self.req.stderr)):
            await self.sock.send(channel, data)

    async def close_outputs(self) -> None:
        return None

    async def write_status(self, status: dict[str, Any]) -> None:
        payload = encode_status(status, self.json_status)
        if payload:
            await self.sock.send(ERROR_CH, payload)

    async def _stop_reader(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader

    async def finish(self) -> None:
        await self._stop_reader()
        await self.sock.close(1000)

    async def abort(self) -> None:
        await self._stop_reader()
        self.sock.abort()

    def buffered(self) -> int:
        return self.sock.write_buffer_size()


# -- the session -----------------------------------------------------------------------------------

_CLIENT_GONE = (SpdyError, ConnectionError, OSError)


async def serve(kind: str, req: ExecRequest | AttachRequest, backend: StreamingBackend, ch: Channels) -> None:
    """Run one exec/attach: start it, pump stdin/resize in and output out until the process ends,
    then report the status and close; a vanished client closes the backend session (which kills an
    exec'd process)."""
    try:
        if isinstance(req, ExecRequest):
            session: IOSession = await backend.exec(req)
        else:
            session = await backend.attach(req)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported to the client, whatever it is
        log.info("%s %s failed to start: %s", kind, req.container_id, exc)
        with contextlib.suppress(*_CLIENT_GONE):
            await ch.write_status(status_error(exc))
        await ch.finish()
        return

    async def pump_stdin() -> None:
        try:
            while data := await ch.read_stdin():
                await session.write_stdin(data)
            await session.close_stdin()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the process may be gone; output decides the end
            log.debug("stdin of %s %s: %s", kind, req.container_id, exc)

    async def pump_resize() -> None:
        try:
            async for w, h in ch.resizes():
                await session.resize(w, h)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            log.debug("resize of %s %s: %s", kind, req.container_id, exc)

    async def pump_output() -> bool:
        """True when the output ended; False when the client went away."""
        try:
            async for channel, data in session.output():
                await ch.write(channel, data)
        except _CLIENT_GONE:
            return False
        return True

    helpers: list[asyncio.Task[None]] = []
    if req.stdin:
        helpers.append(asyncio.create_task(pump_stdin(), name="stdin"))
    if req.tty:
        helpers.append(asyncio.create_task(pump_resize(), name="resize"))
    out = asyncio.create_task(pump_output(), name="output")
    gone = asyncio.create_task(ch.gone.wait(), name="client-gone")
    try:
        await asyncio.wait({out, gone}, return_when=asyncio.FIRST_COMPLETED)
        completed = False
        status: dict[str, Any] | None = None
        if out.done():
            try:
                completed = out.result()
            except Exception as exc:  # noqa: BLE001 - backend failure while streaming
                completed, status = True, status_error(exc)
        if not completed:
            out.cancel()
            await ch.abort()
            return
        if status is None:
            if isinstance(req, ExecRequest):
                try:
                    code = await session.wait()
                    status = status_success() if code == 0 else status_exit(code, req.cmd)
                except Exception as exc:  # noqa: BLE001
                    status = status_error(exc)
            else:
                status = status_success()  # as the kubelet: attach reports no exit code
        try:
            await ch.close_outputs()
            await ch.write_status(status)
        except _CLIENT_GONE:
            await ch.abort()
            return
        await ch.finish()
    finally:
        for t in (*helpers, out, gone):
            t.cancel()
        for t in (*helpers, out, gone):
            with contextlib.suppress(BaseException):
                await t
        try:
            await session.close()
        except Exception as exc:  # noqa: BLE001
            log.debug("closing %s session of %s: %s", kind, req.container_id, exc)


__all__ = ["SPDY_PROTOCOLS", "WS_PROTOCOLS", "serve", "status_error", "status_exit", "status_success"]
