"""A fake StreamingBackend: scripted processes and in-memory TCP connections, no VMs.

Exec commands (``cmd[0]``):
  echo ARGS...      prints ARGS on stdout, exits 0
  cat               copies stdin to stdout until stdin EOF, exits 0
  fail N            prints "oops" on stderr, exits N
  big N             writes N bytes on stdout (64 KiB chunks), counting what it produced
  tty               prints "ready", waits for stdin EOF, exits 0 (resizes are recorded)
  sleep             runs until the session is closed (never reads stdin)
Attach to any container id: every attached session sees what ``backend.container(id).emit()``
writes, until ``.exit()``.
Port forward: ports 1..8999 are echo servers that first send b"port=<port>\\n"; 9999 refuses.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from frakpy.errors import NotFound, Unavailable
from frakpy.streaming.backend import STDERR, STDOUT, AttachRequest, ExecRequest

EOF = None


class FakeSession:
    def __init__(self, backend: FakeBackend, req: ExecRequest | AttachRequest) -> None:
        self.backend = backend
        self.req = req
        self.out: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue(4)
        self.stdin: asyncio.Queue[bytes | None] = asyncio.Queue(4)
        self.stdin_closed = asyncio.Event()
        self.resizes: list[tuple[int, int]] = []
        self.resized = asyncio.Event()
        self.closed = asyncio.Event()
        self.exit_code = 0
        self.produced = 0
        self.task: asyncio.Task[None] | None = None

    async def output(self) -> AsyncIterator[tuple[int, bytes]]:
        while (item := await self.out.get()) is not None:
            yield item

    async def write_stdin(self, data: bytes) -> None:
        await self.stdin.put(data)

    async def close_stdin(self) -> None:
        self.stdin_closed.set()
        await self.stdin.put(EOF)

    async def resize(self, width: int, height: int) -> None:
        self.resizes.append((width, height))
        self.resized.set()

    async def wait(self) -> int:
        return self.exit_code

    async def close(self) -> None:
        self.closed.set()
        if self.task is not None:
            self.task.cancel()


class FakeContainer:
    def __init__(self) -> None:
        self.sessions: list[FakeSession] = []
        self.attached = asyncio.Condition()

    async def emit(self, data: bytes) -> None:
        for s in list(self.sessions):
            if not s.closed.is_set():
                await s.out.put((STDOUT, data))

    async def exit(self) -> None:
        for s in list(self.sessions):
            if not s.closed.is_set():
                await s.out.put(EOF)


class EchoConnection:
    def __init__(self, port: int) -> None:
        self.port = port
        self.buf: asyncio.Queue[bytes] = asyncio.Queue(8)
        self.buf.put_nowait(f"port={port}\n".encode())
        self.closed = False
        self.closed_event = asyncio.Event()
        self.write_closed = False

    async def read(self) -> bytes:
        return await self.buf.get()

    async def write(self, data: bytes) -> None:
        await self.buf.put(data)

    async def close_write(self) -> None:
        self.write_closed = True
        await self.buf.put(b"")

    async def close(self) -> None:
        self.closed = True
        self.closed_event.set()


class FakeBackend:
    def __init__(self) -> None:
        self.sessions: list[FakeSession] = []
        self.containers: dict[str, FakeContainer] = {}
        self.connections: list[EchoConnection] = []
        self.exec_started = asyncio.Event()

    def container(self, cid: str) -> FakeContainer:
        return self.containers.setdefault(cid, FakeContainer())

    async def exec(self, req: ExecRequest) -> FakeSession:
        if req.container_id == "missing":
            raise NotFound("container missing not found", kind="container", ident="missing")
        s = FakeSession(self, req)
        self.sessions.append(s)
        self.exec_started.set()
        s.task = asyncio.get_running_loop().create_task(self._run(s))
        return s

    async def _run(self, s: FakeSession) -> None:
        cmd = s.req.cmd if isinstance(s.req, ExecRequest) else ()
        name, args = cmd[0], cmd[1:]
        if name == "echo":
            await s.out.put((STDOUT, (" ".join(args) + "\n").encode()))
        elif name == "cat":
            while (data := await s.stdin.get()) is not None:
                await s.out.put((STDOUT, data))
        elif name == "fail":
            await s.out.put((STDERR, b"oops\n"))
            s.exit_code = int(args[0])
        elif name == "big":
            total, chunk = int(args[0]), b"x" * 65536
            while s.produced < total:
                piece = chunk[: total - s.produced]
                await s.out.put((STDOUT, piece))
                s.produced += len(piece)
        elif name == "tty":
            await s.out.put((STDOUT, b"ready\n"))
            while await s.stdin.get() is not None:
                pass
        elif name == "sleep":
            await asyncio.Event().wait()
        await s.out.put(EOF)

    async def attach(self, req: AttachRequest) -> FakeSession:
        s = FakeSession(self, req)
        c = self.container(req.container_id)
        c.sessions.append(s)
        async with c.attached:
            c.attached.notify_all()
        return s

    async def port_forward(self, sandbox_id: str, port: int) -> EchoConnection:
        if sandbox_id == "missing":
            raise NotFound("sandbox missing not found")
        if port == 9999:
            raise Unavailable(f"connection refused: port {port}")
        conn = EchoConnection(port)
        self.connections.append(conn)
        return conn
