"""Exec, attach and port-forward for the streaming server, on top of the guest agent.

``ContainerStreams`` implements ``frakpy.streaming.backend.StreamingBackend``:

* **exec** starts an exec process in the guest (``ExecStart``, the process JSON is just the
  args, as ExecSync sends them: the agent fills in the rest from the container's process) and
  reads its output with ``ReadOutput``. Flow control end to end: a chunk is acknowledged
  (``AckOutput``) only once the consumer asked for the next one, and the agent holds at most
  ``EXEC_WINDOW`` unacknowledged bytes, so a slow client makes the process block in write(2).
  stdin writes wait until the guest wrote them into the pipe/pty (backpressure).
* **attach** joins the container's main process. Its output has one reader, the manager's log
  pump (``ContainerManager._pump``), which offers every chunk to each attacher. Policy: the
  log is never slowed by an attacher; each attacher has a queue of at most
  ``ATTACH_QUEUE_BYTES``, and an attacher that falls that far behind is **disconnected**
  (what was queued is delivered, then its output ends with ResourceExhausted). Memory stays
  bounded and the log complete; the alternative, waiting for a slow attacher, would stall
  the container.
* **port_forward** opens a TCP connection to the guest's loopback (``PortConnect``): the pod
  VM's network namespace is the pod's. Reads are acknowledged as consumed (``PortAck``, at
  most ``PORT_WINDOW`` bytes in flight); writes wait for the guest socket (``PortWrite``).

Acknowledgements are sent in the background, coalesced, one in flight at a time, so a reader
never waits for an ack round trip.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

from frakpy.agent.client import AgentClient, OutputChunk, PortChunk, Stream
from frakpy.container.manager import ContainerManager
from frakpy.container.model import Container, ContainerState
from frakpy.errors import FailedPrecondition, FrakpyError, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from frakpy.sandbox.manager import SandboxManager
from frakpy.sandbox.model import SandboxState
from frakpy.streaming.backend import STDERR, STDOUT, AttachRequest, ExecRequest

log = logging.getLogger("frakpy.streams")

EXEC_WINDOW = 256 << 10  # unacknowledged exec output the agent may hold
PORT_WINDOW = 1 << 20  # unacknowledged port-forward bytes the agent may hold (per connection)
ATTACH_QUEUE_BYTES = 1 << 20  # an attacher this far behind the log is disconnected
WRITE_CHUNK = 256 << 10  # stdin data per agent call
PORT_WRITE_BATCH = 1 << 20  # port-forward data per agent call at most (collected while one is in flight)
WRITE_TIMEOUT = 24 * 3600.0  # a write waits for the reader in the guest, however slow


class _Acker:
    """Sends ``ack(offset)`` for the highest offset noted: coalesced, one call in flight."""

    def __init__(self, ack: Callable[[int], Awaitable[None]]) -> None:
        self._ack = ack
        self._wanted = 0
        self._sent = 0
        self._task: asyncio.Task[None] | None = None

    def note(self, offset: int) -> None:
        if offset <= self._wanted:
            return
        self._wanted = offset
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while self._sent < self._wanted:
            target = self._wanted
            try:
                await self._ack(target)
            except (FrakpyError, OSError) as exc:
                log.debug("acknowledgement up to %d failed: %s", target, exc)
                return
            self._sent = target

    async def close(self) -> None:
        task, self._task = self._task, None
        await _cancel(task)


async def _cancel(task: asyncio.Task[None] | None) -> None:
    """Stop a background sender (acknowledgements, batched writes) and wait until it has."""
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


def _stream_number(chunk: OutputChunk) -> int:
    return STDERR if chunk.stream is Stream.STDERR else STDOUT


def _wanted(stream: int, stdout: bool, stderr: bool) -> bool:
    return stdout if stream == STDOUT else stderr


async def _write_all(write: Callable[[bytes], Awaitable[object]], data: bytes) -> None:
    view = memoryview(data)
    for start in range(0, len(view), WRITE_CHUNK):
        await write(bytes(view[start:start + WRITE_CHUNK]))


# -- exec -----------------------------------------------------------------------------------------


class ExecSession:
    def __init__(self, agent: AgentClient, container_id: str, exec_id: str, req: ExecRequest) -> None:
        self.agent = agent
        self.container_id = container_id
        self.exec_id = exec_id
        self.req = req
        self._acker = _Acker(lambda off: agent.ack_output(container_id, off, exec_id=exec_id))
        self._exit_code: int | None = None
        self._closed = False

    def output(self) -> AsyncIterator[tuple[int, bytes]]:
        return self._output()

    async def _output(self) -> AsyncIterator[tuple[int, bytes]]:
        async for chunk in self.agent.read_output(self.container_id, exec_id=self.exec_id):
            stream = _stream_number(chunk)
            if _wanted(stream, self.req.stdout or self.req.tty, self.req.stderr):
                yield stream, chunk.data
            self._acker.note(chunk.end)  # consumed: the agent may read the pipes again

    async def write_stdin(self, data: bytes) -> None:
        if not self.req.stdin:
            raise FailedPrecondition(f"exec {self.exec_id} in container {self.container_id} has no stdin")
        await _write_all(lambda piece: self.agent.write_stdin(self.container_id, piece, exec_id=self.exec_id,
                                                              timeout=WRITE_TIMEOUT), data)

    async def close_stdin(self) -> None:
        if self.req.stdin and not self._closed:
            with contextlib.suppress(NotFound, FailedPrecondition):
                await self.agent.write_stdin(self.container_id, exec_id=self.exec_id, close=True)

    async def resize(self, width: int, height: int) -> None:
        if self.req.tty and not self._closed:
            with contextlib.suppress(NotFound):  # exited meanwhile
                await self.agent.resize_tty(self.container_id, width, height, exec_id=self.exec_id)

    async def wait(self) -> int:
        if self._exit_code is None:
            r = await self.agent.wait_process(self.container_id, exec_id=self.exec_id)
            self._exit_code = r.exit_code
        return self._exit_code

    async def close(self) -> None:
        """Kill (if still running) and forget the process; DeleteProcess does both."""
        if self._closed:
            return
        self._closed = True
        await self._acker.close()
        try:
            await self.agent.delete_process(self.container_id, self.exec_id)
        except (FrakpyError, OSError) as exc:
            log.debug("exec %s in %s: delete failed: %s", self.exec_id, self.container_id[:12], exc)


# -- attach ---------------------------------------------------------------------------------------


class _Attachment:
    """One attacher's bounded queue, fed by ContainerManager._pump (``offer`` never blocks)."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = ATTACH_QUEUE_BYTES if limit is None else limit
        self.queue: collections.deque[tuple[int, bytes]] = collections.deque()
        self.queued = 0
        self.ended = False
        self.dropped = False
        self._wake = asyncio.Event()

    def offer(self, chunk: OutputChunk) -> bool:
        if self.ended:
            return False
        if self.queued + len(chunk.data) > self.limit:
            self.dropped = self.ended = True
            self._wake.set()
            return False
        self.queue.append((_stream_number(chunk), chunk.data))
        self.queued += len(chunk.data)
        self._wake.set()
        return True

    def end(self) -> None:
        self.ended = True
        self._wake.set()

    async def chunks(self) -> AsyncIterator[tuple[int, bytes]]:
        while True:
            while self.queue:
                stream, data = self.queue.popleft()
                self.queued -= len(data)
                yield stream, data
            if self.ended:
                if self.dropped:
                    raise ResourceExhausted(f"attach: the client fell more than {self.limit} bytes behind the "
                                            "container's output and was disconnected")
                return
            self._wake.clear()
            await self._wake.wait()


class AttachSession:
    def __init__(self, containers: ContainerManager, agent: AgentClient, c: Container, req: AttachRequest) -> None:
        self.containers = containers
        self.agent = agent
        self.c = c
        self.req = req
        self._sub = _Attachment()
        self._closed = False
        if not containers.subscribe_output(c.id, self._sub):
            self._sub.end()

    def output(self) -> AsyncIterator[tuple[int, bytes]]:
        return self._output()

    async def _output(self) -> AsyncIterator[tuple[int, bytes]]:
        async for stream, data in self._sub.chunks():
            if _wanted(stream, self.req.stdout or self.req.tty, self.req.stderr):
                yield stream, data

    async def write_stdin(self, data: bytes) -> None:
        if not self.req.stdin:
            raise FailedPrecondition(f"attach to container {self.c.id}: stdin was not requested")
        await _write_all(lambda piece: self.agent.write_stdin(self.c.id, piece, timeout=WRITE_TIMEOUT), data)

    async def close_stdin(self) -> None:
        """Closes the container's stdin only with stdin_once (kubelet's contract); otherwise a
        later attach can still write to it."""
        if self.req.stdin and (self.c.config or {}).get("stdin_once") and self.c.state is ContainerState.RUNNING:
            with contextlib.suppress(NotFound, FailedPrecondition):
                await self.agent.write_stdin(self.c.id, close=True)

    async def resize(self, width: int, height: int) -> None:
        if self.c.tty and self.c.state is ContainerState.RUNNING:
            with contextlib.suppress(NotFound, FailedPrecondition):
                await self.agent.resize_tty(self.c.id, width, height)

    async def wait(self) -> int:
        await self.containers._exit_event(self.c.id).wait()
        return self.c.exit_code

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.containers.unsubscribe_output(self.c.id, self._sub)
            self._sub.queue.clear()  # detached: what was queued is not wanted any more
            self._sub.queued = 0
            self._sub.end()


# -- port forward ---------------------------------------------------------------------------------


class _Coalescer:
    """Batches writes into agent calls of up to ``limit`` bytes with one call in flight.

    Each agent call costs a round trip (milliseconds under TCG), so a client sending many small
    frames would be bound by call latency; while a call is in flight, further data collects and
    goes in the next call. ``write`` returns once its data is queued, and waits only while
    ``limit`` bytes are already queued (backpressure); a failure surfaces on the next write or
    on ``flush``.
    """

    def __init__(self, send: Callable[[bytes], Awaitable[object]], limit: int) -> None:
        self._send = send
        self._limit = limit
        self._buf = bytearray()
        self._task: asyncio.Task[None] | None = None
        self._room = asyncio.Event()
        self._room.set()
        self._error: BaseException | None = None

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            self._raise()
            if len(self._buf) >= self._limit:
                self._room.clear()
                self._kick()
                await self._room.wait()
                continue
            take = self._limit - len(self._buf)
            self._buf += view[:take]
            view = view[take:]
            self._kick()

    async def flush(self) -> None:
        while self._buf or (self._task is not None and not self._task.done()):
            self._kick()
            if self._task is not None:
                await asyncio.shield(self._task)
            self._raise()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _kick(self) -> None:
        if self._buf and (self._task is None or self._task.done()) and self._error is None:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while self._buf:
            piece, self._buf = bytes(self._buf), bytearray()
            self._room.set()
            try:
                await self._send(piece)
            except BaseException as exc:
                self._error = exc
                self._room.set()
                return

    async def close(self) -> None:
        task, self._task = self._task, None
        await _cancel(task)


class PortStream:
    def __init__(self, agent: AgentClient, sandbox_id: str, port: int, conn_id: str,
                 chunks: AsyncIterator[PortChunk]) -> None:
        self.agent = agent
        self.sandbox_id = sandbox_id
        self.port = port
        self.conn_id = conn_id
        self._chunks = chunks
        self._acker = _Acker(lambda off: agent.port_ack(conn_id, off))
        self._writer = _Coalescer(lambda piece: agent.port_write(conn_id, piece, timeout=WRITE_TIMEOUT),
                                  PORT_WRITE_BATCH)
        self._pending = 0  # end offset of the chunk handed out last: consumed once read() is called again
        self._eof = False
        self._closed = False

    async def read(self) -> bytes:
        if self._pending:
            self._acker.note(self._pending)
        while not self._eof and not self._closed:
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self._eof = True
                break
            if chunk.eof:
                self._eof = True
                break
            if chunk.data:
                self._pending = chunk.end
                return chunk.data
        return b""

    async def write(self, data: bytes) -> None:
        await self._writer.write(data)

    async def close_write(self) -> None:
        if not self._closed:
            await self._writer.flush()
            with contextlib.suppress(NotFound):
                await self.agent.port_write(self.conn_id, close_write=True)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._acker.close()
        await self._writer.close()
        try:
            await self.agent.port_close(self.conn_id)
        except (FrakpyError, OSError) as exc:
            log.debug("port %d in %s: close failed: %s", self.port, self.sandbox_id[:12], exc)
        with contextlib.suppress(RuntimeError, FrakpyError, OSError):  # RuntimeError: a read is in progress
            await self._chunks.aclose()  # type: ignore[attr-defined]


# -- the backend ----------------------------------------------------------------------------------


class ContainerStreams:
    """``StreamingBackend`` of frakpyd."""

    def __init__(self, containers: ContainerManager, sandboxes: SandboxManager) -> None:
        self.containers = containers
        self.sandboxes = sandboxes

    def _running_container(self, container_id: str) -> tuple[Container, AgentClient]:
        c = self.containers.containers.find(container_id) if container_id else None
        if c is None:
            raise NotFound(f"container {container_id!r} not found")
        if c.state is not ContainerState.RUNNING:
            raise FailedPrecondition(f"container {c.id} is not running ({c.state.value})")
        running = self.containers._running_vm(c.sandbox_id)
        if running is None or running.agent is None:
            raise FailedPrecondition(f"container {c.id}: its sandbox {c.sandbox_id[:12]} has no running VM")
        return c, running.agent

    async def exec(self, req: ExecRequest) -> ExecSession:
        c, agent = self._running_container(req.container_id)
        if not req.cmd:
            raise InvalidArgument("exec: cmd is empty")
        exec_id = "x" + secrets.token_hex(12)
        await agent.exec_start(c.id, exec_id, {"args": list(req.cmd)}, tty=req.tty, stdin=req.stdin,
                               log_buffer_bytes=EXEC_WINDOW)
        log.debug("exec %s in container %s: %s", exec_id, c.id[:12], list(req.cmd))
        return ExecSession(agent, c.id, exec_id, req)

    async def attach(self, req: AttachRequest) -> AttachSession:
        c, agent = self._running_container(req.container_id)
        if req.stdin and not c.stdin:
            raise FailedPrecondition(f"container {c.id} was not created with stdin: cannot attach to its stdin")
        return AttachSession(self.containers, agent, c, req)

    async def port_forward(self, sandbox_id: str, port: int) -> PortStream:
        sb = self.sandboxes.sandboxes.find(sandbox_id) if sandbox_id else None
        if sb is None or sb.state is SandboxState.CREATING:
            raise NotFound(f"sandbox {sandbox_id!r} not found")
        if sb.state is not SandboxState.READY:
            raise FailedPrecondition(f"sandbox {sb.id} is not ready ({sb.state.value})")
        running = self.sandboxes.running.get(sb.id)
        if running is None or running.agent is None or running.agent.closed:
            raise FailedPrecondition(f"sandbox {sb.id} has no running VM")
        if not 0 < port < 65536:
            raise InvalidArgument(f"port {port} is out of range")
        agent = running.agent
        chunks = agent.port_connect(port, window_bytes=PORT_WINDOW)
        try:
            first = await chunks.__anext__()
        except Unavailable as exc:
            reason = str(exc).rsplit(f"port {port}: ", 1)[-1]
            raise Unavailable(f"port {port} in pod {sb.id}: {reason}") from exc
        except StopAsyncIteration:
            raise Unavailable(f"port {port} in pod {sb.id}: the agent closed the connection at once") from None
        return PortStream(agent, sb.id, port, first.conn_id, chunks)
