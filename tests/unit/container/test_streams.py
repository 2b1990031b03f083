"""ContainerStreams (exec / attach / port-forward backend) against a fake agent, plus the attach
fan-out of ContainerManager._pump."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from frakpy import errors
from frakpy.agent.client import OutputChunk, PortChunk, ProcessExit, Stream
from frakpy.container import streams as streams_mod
from frakpy.container.manager import ContainerManager
from frakpy.container.model import Container, ContainerMetadata
from frakpy.container.streams import ContainerStreams
from frakpy.sandbox.model import SandboxState
from frakpy.store.index import IdIndex
from frakpy.streaming.backend import STDERR, STDOUT, AttachRequest, ExecRequest


class FakeAgent:
    """Records calls; exec output comes from ``outputs[exec_id]`` (a queue, None ends it)."""

    def __init__(self) -> None:
        self.closed = False
        self.calls: list[tuple[Any, ...]] = []
        self.outputs: dict[str, asyncio.Queue[OutputChunk | None]] = {}
        self.exits: dict[str, asyncio.Future[int]] = {}
        self.port_data: asyncio.Queue[PortChunk | None] = asyncio.Queue()
        self.refuse = False

    async def exec_start(self, cid: str, eid: str, process: Any, **kw: Any) -> int:
        self.calls.append(("exec_start", cid, eid, process, kw))
        self.outputs[eid] = asyncio.Queue()
        self.exits[eid] = asyncio.get_running_loop().create_future()
        return 42

    async def read_output(self, cid: str, *, exec_id: str = "", from_offset: int = 0,
                          auto_ack: bool = False) -> AsyncIterator[OutputChunk]:
        q = self.outputs[exec_id]
        while (c := await q.get()) is not None:
            yield c

    async def ack_output(self, cid: str, off: int, *, exec_id: str = "") -> None:
        self.calls.append(("ack_output", exec_id, off))

    async def write_stdin(self, cid: str, data: bytes = b"", *, exec_id: str = "", close: bool = False,
                          timeout: float | None = None) -> int:
        self.calls.append(("write_stdin", cid, exec_id, data, close))
        return len(data)

    async def resize_tty(self, cid: str, w: int, h: int, *, exec_id: str = "") -> None:
        self.calls.append(("resize_tty", exec_id, w, h))

    async def wait_process(self, cid: str, *, exec_id: str = "") -> ProcessExit:
        return ProcessExit(await self.exits[exec_id], 0, False)

    async def delete_process(self, cid: str, eid: str) -> None:
        self.calls.append(("delete_process", eid))
        if not self.exits[eid].done():
            self.exits[eid].set_result(137)

    async def port_connect(self, port: int, *, window_bytes: int = 0) -> AsyncIterator[PortChunk]:
        self.calls.append(("port_connect", port, window_bytes))
        if self.refuse:
            raise errors.Unavailable(f"agent PortConnect: port {port}: connection refused")
        yield PortChunk("p1", 0, b"", False)
        while (c := await self.port_data.get()) is not None:
            yield c

    async def port_ack(self, conn_id: str, off: int) -> None:
        self.calls.append(("port_ack", conn_id, off))

    async def port_write(self, conn_id: str, data: bytes = b"", *, close_write: bool = False,
                         timeout: float | None = None) -> int:
        self.calls.append(("port_write", conn_id, data, close_write))
        return len(data)

    async def port_close(self, conn_id: str) -> None:
        self.calls.append(("port_close", conn_id))
        self.port_data.put_nowait(None)


def chunk(offset: int, data: bytes, stream: Stream = Stream.STDOUT) -> OutputChunk:
    return OutputChunk(offset, stream, 0, data)


class Env:
    def __init__(self) -> None:
        self.agent = FakeAgent()
        running = SimpleNamespace(agent=self.agent)
        mgr: Any = ContainerManager.__new__(ContainerManager)  # only what streams.py and _pump use
        mgr.containers = IdIndex("container")
        mgr._pumps, mgr._writers, mgr._attached, mgr._exited = {}, {}, {}, {}
        mgr.records = SimpleNamespace(save=lambda c: None)
        mgr.sandboxes = SimpleNamespace(running={"sb1": running})
        self.mgr = mgr
        self.sb = SimpleNamespace(id="sb1", state=SandboxState.READY)
        sandboxes = SimpleNamespace(sandboxes=IdIndex("sandbox"), running={"sb1": running})
        sandboxes.sandboxes.add("sb1", self.sb)
        self.running = running
        self.streams = ContainerStreams(mgr, sandboxes)  # type: ignore[arg-type]

    def container(self, cid: str = "c1", *, running: bool = True, **kw: Any) -> Container:
        c = Container(id=cid, sandbox_id="sb1", metadata=ContainerMetadata(cid), image_ref="i", image_id="i",
                      started_at=1 if running else 0, **kw)
        self.mgr.containers.add(cid, c)
        return c


@pytest.fixture
def env() -> Env:
    return Env()


async def collect(it: AsyncIterator[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    return [x async for x in it]


async def test_exec_validates_like_containerd(env: Env) -> None:
    with pytest.raises(errors.NotFound, match="nope"):
        await env.streams.exec(ExecRequest("nope", ("ls",)))
    env.container("c0", running=False)
    with pytest.raises(errors.FailedPrecondition, match="not running"):
        await env.streams.exec(ExecRequest("c0", ("ls",)))
    env.container()
    with pytest.raises(errors.InvalidArgument, match="empty"):
        await env.streams.exec(ExecRequest("c1", ()))
    assert env.agent.calls == []


async def test_exec_output_acks_consumed_chunks_and_filters_streams(env: Env) -> None:
    env.container()
    s = await env.streams.exec(ExecRequest("c1", ("sh", "-c", "x"), stderr=False, stdin=True))
    (_, cid, eid, process, kw), = env.agent.calls
    assert cid == "c1" and process == {"args": ["sh", "-c", "x"]}
    assert kw == {"tty": False, "stdin": True, "log_buffer_bytes": streams_mod.EXEC_WINDOW}
    q = env.agent.outputs[eid]
    out = s.output()
    q.put_nowait(chunk(0, b"out"))
    assert await out.__anext__() == (STDOUT, b"out")
    await asyncio.sleep(0)
    assert not any(c[0] == "ack_output" for c in env.agent.calls)  # not consumed yet
    q.put_nowait(chunk(3, b"err", Stream.STDERR))
    q.put_nowait(chunk(6, b"more"))
    assert await out.__anext__() == (STDOUT, b"more")  # stderr was not requested
    q.put_nowait(None)
    assert await collect(out) == []
    await asyncio.sleep(0.01)
    acks = [c[2] for c in env.agent.calls if c[0] == "ack_output"]
    assert acks and acks[-1] == 10 and acks == sorted(acks)
    await s.write_stdin(b"x" * (streams_mod.WRITE_CHUNK + 1))
    assert [len(c[3]) for c in env.agent.calls if c[0] == "write_stdin"] == [streams_mod.WRITE_CHUNK, 1]
    await s.close_stdin()
    assert env.agent.calls[-1] == ("write_stdin", "c1", eid, b"", True)
    env.agent.exits[eid].set_result(3)
    assert await s.wait() == 3
    await s.close()
    await s.close()
    assert [c for c in env.agent.calls if c[0] == "delete_process"] == [("delete_process", eid)]


async def test_exec_close_kills_a_running_process_and_resize_needs_tty(env: Env) -> None:
    env.container()
    s = await env.streams.exec(ExecRequest("c1", ("top",), tty=True))
    eid = env.agent.calls[0][2]
    await s.resize(100, 30)
    assert env.agent.calls[-1] == ("resize_tty", eid, 100, 30)
    with pytest.raises(errors.FailedPrecondition, match="no stdin"):
        await s.write_stdin(b"x")
    await s.close()
    assert await s.wait() == 137
    s2 = await env.streams.exec(ExecRequest("c1", ("ls",)))
    n = len(env.agent.calls)
    await s2.resize(1, 1)  # no tty: ignored
    assert len(env.agent.calls) == n


def live_pump(env: Env, c: Container, q: asyncio.Queue[OutputChunk | None]) -> asyncio.Task[None]:
    async def read_output(cid: str, *, from_offset: int = 0, **kw: Any) -> AsyncIterator[OutputChunk]:
        while (ch := await q.get()) is not None:
            yield ch

    env.agent.read_output = read_output  # type: ignore[method-assign]
    task = asyncio.ensure_future(env.mgr._pump(c, env.running))
    env.mgr._pumps[c.id] = task
    return task


async def test_attach_receives_pump_output_and_writes_stdin(env: Env) -> None:
    c = env.container(stdin=True, tty=True, config={"stdin_once": True})
    q: asyncio.Queue[OutputChunk | None] = asyncio.Queue()
    pump = live_pump(env, c, q)
    a = await env.streams.attach(AttachRequest("c1", tty=True, stdin=True))
    b = await env.streams.attach(AttachRequest("c1", stdout=False))
    q.put_nowait(chunk(0, b"hello"))
    q.put_nowait(chunk(5, b"oops", Stream.STDERR))
    await asyncio.sleep(0.01)
    assert c.output_offset == 9  # the log pump went on as before
    out = a.output()
    assert await out.__anext__() == (STDOUT, b"hello")
    assert await out.__anext__() == (STDERR, b"oops")
    await a.write_stdin(b"ls\n")
    assert ("write_stdin", "c1", "", b"ls\n", False) in env.agent.calls
    await a.resize(80, 24)
    assert env.agent.calls[-1] == ("resize_tty", "", 80, 24)
    await a.close_stdin()  # stdin_once: the container's stdin is closed
    assert env.agent.calls[-1] == ("write_stdin", "c1", "", b"", True)
    await b.close()
    assert env.mgr._attached["c1"] == {a._sub}
    q.put_nowait(None)
    await pump
    assert await collect(out) == []
    assert await collect(b.output()) == []  # stderr only, nothing before it detached
    c.mark_exited(7, 1)
    env.mgr._exit_event(c.id).set()
    assert await a.wait() == 7
    assert "c1" not in env.mgr._attached


async def test_attach_validation(env: Env) -> None:
    env.container()
    with pytest.raises(errors.FailedPrecondition, match="stdin"):
        await env.streams.attach(AttachRequest("c1", stdin=True))
    with pytest.raises(errors.NotFound):
        await env.streams.attach(AttachRequest("zz"))


async def test_slow_attacher_is_disconnected_without_stalling_the_log(env: Env, monkeypatch: Any) -> None:
    monkeypatch.setattr(streams_mod, "ATTACH_QUEUE_BYTES", 10)
    c = env.container()
    q: asyncio.Queue[OutputChunk | None] = asyncio.Queue()
    pump = live_pump(env, c, q)
    a = await env.streams.attach(AttachRequest("c1"))
    for i in range(5):
        q.put_nowait(chunk(4 * i, b"abcd"))
    await asyncio.sleep(0.01)
    assert c.output_offset == 20 and "c1" not in env.mgr._attached
    got = []
    with pytest.raises(errors.ResourceExhausted, match="disconnected"):
        async for item in a.output():
            got.append(item)
    assert got == [(STDOUT, b"abcd"), (STDOUT, b"abcd")]
    q.put_nowait(None)
    await pump


async def test_port_forward_reads_acks_writes_and_closes(env: Env) -> None:
    with pytest.raises(errors.NotFound):
        await env.streams.port_forward("other", 80)
    conn = await env.streams.port_forward("sb1", 8080)
    assert env.agent.calls[0] == ("port_connect", 8080, streams_mod.PORT_WINDOW)
    env.agent.port_data.put_nowait(PortChunk("p1", 0, b"HTTP/1.0", False))
    env.agent.port_data.put_nowait(PortChunk("p1", 8, b" 200", False))
    assert await conn.read() == b"HTTP/1.0"
    assert await conn.read() == b" 200"
    await asyncio.sleep(0.01)
    assert ("port_ack", "p1", 8) in env.agent.calls
    await conn.write(b"GET /")
    await conn.close_write()
    assert env.agent.calls[-2:] == [("port_write", "p1", b"GET /", False), ("port_write", "p1", b"", True)]
    env.agent.port_data.put_nowait(PortChunk("p1", 12, b"", True))
    assert await conn.read() == b""
    assert await conn.read() == b""
    await conn.close()
    assert ("port_close", "p1") in env.agent.calls


async def test_port_forward_refused_names_port_and_pod(env: Env) -> None:
    env.agent.refuse = True
    with pytest.raises(errors.Unavailable, match="^port 8080 in pod sb1: connection refused$"):
        await env.streams.port_forward("sb1", 8080)
    env.sb.state = SandboxState.NOTREADY
    with pytest.raises(errors.FailedPrecondition):
        await env.streams.port_forward("sb1", 8080)


class FakeStreamingServer:
    def __init__(self) -> None:
        self.issued: list[Any] = []

    def exec_url(self, req: Any) -> str:
        self.issued.append(req)
        return "http://s/exec/t"

    def attach_url(self, req: Any) -> str:
        self.issued.append(req)
        return "http://s/attach/t"

    def port_forward_url(self, req: Any) -> str:
        self.issued.append(req)
        return "http://s/portforward/t"


async def test_cri_exec_attach_port_forward_check_up_front(env: Env) -> None:
    from frakpy.cri.container import ContainerServicer
    from frakpy.cri.proto import api_pb2 as pb
    from frakpy.cri.sandbox import SandboxServicer
    from frakpy.streaming.backend import PortForwardRequest

    srv = FakeStreamingServer()
    cs = ContainerServicer(env.mgr, srv)  # type: ignore[arg-type]
    ss = SandboxServicer(SimpleNamespace(sandboxes=env.streams.sandboxes.sandboxes), None, srv)  # type: ignore[arg-type]
    env.container(stdin=False)
    env.container("c0", running=False)
    with pytest.raises(errors.NotFound):
        await cs.Exec(pb.ExecRequest(container_id="zz", cmd=["ls"], stdout=True), None)
    with pytest.raises(errors.FailedPrecondition):
        await cs.Exec(pb.ExecRequest(container_id="c0", cmd=["ls"], stdout=True), None)
    with pytest.raises(errors.InvalidArgument, match="one of stdin"):
        await cs.Exec(pb.ExecRequest(container_id="c1", cmd=["ls"]), None)
    with pytest.raises(errors.InvalidArgument, match="tty and stderr"):
        await cs.Exec(pb.ExecRequest(container_id="c1", cmd=["ls"], tty=True, stderr=True), None)
    with pytest.raises(errors.InvalidArgument, match="cmd"):
        await cs.Exec(pb.ExecRequest(container_id="c1", stdout=True), None)
    with pytest.raises(errors.FailedPrecondition, match="stdin"):
        await cs.Attach(pb.AttachRequest(container_id="c1", stdin=True, stdout=True), None)
    assert srv.issued == []
    r = await cs.Exec(pb.ExecRequest(container_id="c1", cmd=["ls", "-l"], tty=True, stdin=True, stdout=True), None)
    assert r.url == "http://s/exec/t"
    assert srv.issued[-1] == ExecRequest("c1", ("ls", "-l"), tty=True, stdin=True, stdout=True, stderr=False)
    assert (await cs.Attach(pb.AttachRequest(container_id="c1", stdout=True), None)).url.endswith("/attach/t")
    with pytest.raises(errors.NotFound):
        await ss.PortForward(pb.PortForwardRequest(pod_sandbox_id="nope", port=[80]), None)
    with pytest.raises(errors.InvalidArgument):
        await ss.PortForward(pb.PortForwardRequest(pod_sandbox_id="sb1", port=[70000]), None)
    assert (await ss.PortForward(pb.PortForwardRequest(pod_sandbox_id="sb1", port=[80, 81]), None)).url
    assert srv.issued[-1] == PortForwardRequest("sb1", (80, 81))
    env.sb.state = SandboxState.NOTREADY
    with pytest.raises(errors.FailedPrecondition):
        await ss.PortForward(pb.PortForwardRequest(pod_sandbox_id="sb1"), None)
    with pytest.raises(errors.Unimplemented):
        await ContainerServicer(env.mgr).Exec(pb.ExecRequest(container_id="c1", cmd=["x"], stdout=True), None)


def test_port_writes_are_batched_while_one_call_is_in_flight() -> None:
    async def main() -> list[bytes]:
        sent: list[bytes] = []
        gate = asyncio.Event()

        async def send(piece: bytes) -> None:
            sent.append(piece)
            await gate.wait()

        w = streams_mod._Coalescer(send, limit=10)
        await w.write(b"abc")  # goes out at once
        await asyncio.sleep(0)
        await w.write(b"def")
        await w.write(b"ghi")  # both collected while the first call waits
        gate.set()
        await w.flush()
        return sent

    assert asyncio.run(main()) == [b"abc", b"defghi"]


def test_port_write_failure_surfaces_on_the_next_write() -> None:
    async def main() -> None:
        async def send(piece: bytes) -> None:
            raise errors.Unavailable("guest socket closed")

        w = streams_mod._Coalescer(send, limit=4)
        await w.write(b"xy")
        await asyncio.sleep(0.01)
        with pytest.raises(errors.Unavailable):
            await w.write(b"z")

    asyncio.run(main())
