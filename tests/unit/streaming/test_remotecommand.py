"""exec/attach through the real server and our client over SPDY/3.1 and WebSocket (fake backend)."""

from __future__ import annotations

import asyncio
import json

import pytest

from frakpy.streaming import AttachRequest, ExecRequest, RemoteCommand, StreamingServer, exec_stream
from tests.unit.streaming.fakes import FakeBackend

T = 10.0  # no test step may hang

TRANSPORTS = [
    ("spdy", "v4.channel.k8s.io"),
    ("spdy", "channel.k8s.io"),
    ("websocket", "v5.channel.k8s.io"),
    ("websocket", "v4.channel.k8s.io"),
    ("websocket", "channel.k8s.io"),
    ("websocket", "base64.channel.k8s.io"),
    ("websocket", "v4.base64.channel.k8s.io"),
]


@pytest.mark.parametrize(("transport", "protocol"), TRANSPORTS)
async def test_exec_echo(server: StreamingServer, transport: str, protocol: str) -> None:
    url = server.exec_url(ExecRequest("c1", ("echo", "hello", "world")))
    r = await asyncio.wait_for(exec_stream(url, transport=transport, protocol=protocol), T)
    assert r.stdout == b"hello world\n"
    assert r.stderr == b""
    assert r.exit_code == 0
    if protocol.startswith(("v4", "v5")):
        assert r.status == {"metadata": {}, "status": "Success"}


@pytest.mark.parametrize("protocol", ["v2.channel.k8s.io", "v3.channel.k8s.io"])
async def test_exec_echo_spdy_v2_v3(server: StreamingServer, protocol: str) -> None:
    url = server.exec_url(ExecRequest("c1", ("echo", "hi")))
    r = await asyncio.wait_for(exec_stream(url, protocol=protocol), T)
    assert (r.stdout, r.exit_code) == (b"hi\n", 0)


@pytest.mark.parametrize(("transport", "protocol"), [("spdy", None), ("websocket", "v5.channel.k8s.io")])
async def test_exec_stdin_until_eof(server: StreamingServer, backend: FakeBackend, transport: str,
                                    protocol: str | None) -> None:
    data = bytes(range(256)) * 1000  # 256 KB: more than one SPDY window
    url = server.exec_url(ExecRequest("c1", ("cat",), stdin=True))
    r = await asyncio.wait_for(exec_stream(url, transport=transport, protocol=protocol, stdin=data), T)
    assert r.stdout == data
    assert r.exit_code == 0
    assert backend.sessions[0].stdin_closed.is_set()  # SPDY FIN / v5 CLOSE signal reached close_stdin()


async def test_exec_interactive_stdin(server: StreamingServer, backend: FakeBackend) -> None:
    url = server.exec_url(ExecRequest("c1", ("cat",), stdin=True))
    async with RemoteCommand.connect(url, stdin=True) as rc:
        for word in (b"one\n", b"two\n"):
            await rc.send(word)
            assert await asyncio.wait_for(rc.read(), T) == (1, word)
        await rc.close_stdin()
        assert await asyncio.wait_for(rc.read(), T) is None
        r = await asyncio.wait_for(rc.wait(), T)
    assert r.exit_code == 0


@pytest.mark.parametrize(("transport", "protocol"), [("spdy", None), ("spdy", "v3.channel.k8s.io"),
                                                     ("websocket", None), ("websocket", "v4.channel.k8s.io")])
async def test_tty_resize(server: StreamingServer, backend: FakeBackend, transport: str,
                          protocol: str | None) -> None:
    url = server.exec_url(ExecRequest("c1", ("tty",), tty=True, stdin=True, stderr=False))
    async with RemoteCommand.connect(url, transport=transport, protocol=protocol, stdin=True, tty=True) as rc:
        assert await asyncio.wait_for(rc.read(), T) == (1, b"ready\n")
        await rc.resize(80, 24)
        await rc.resize(132, 43)
        session = backend.sessions[0]
        async with asyncio.timeout(T):
            while len(session.resizes) < 2:
                session.resized.clear()
                await session.resized.wait()
        assert session.resizes == [(80, 24), (132, 43)]
        if transport == "spdy" or protocol is None:  # v4 WebSocket cannot signal stdin EOF
            await rc.close_stdin()
            r = await asyncio.wait_for(rc.wait(), T)
            assert r.exit_code == 0


@pytest.mark.parametrize(("transport", "protocol"), [("spdy", "v4.channel.k8s.io"), ("websocket", "v5.channel.k8s.io"),
                                                     ("websocket", "v4.channel.k8s.io")])
async def test_nonzero_exit_status(server: StreamingServer, transport: str, protocol: str) -> None:
    url = server.exec_url(ExecRequest("c1", ("fail", "3")))
    r = await asyncio.wait_for(exec_stream(url, transport=transport, protocol=protocol), T)
    assert r.stderr == b"oops\n"
    assert r.exit_code == 3
    assert r.status is not None
    assert r.status["status"] == "Failure"
    assert r.status["reason"] == "NonZeroExitCode"
    assert r.status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    assert r.status["metadata"] == {}


@pytest.mark.parametrize(("transport", "protocol"), [("spdy", "channel.k8s.io"), ("spdy", "v3.channel.k8s.io"),
                                                     ("websocket", "channel.k8s.io")])
async def test_nonzero_exit_plain_text_protocols(server: StreamingServer, transport: str, protocol: str) -> None:
    url = server.exec_url(ExecRequest("c1", ("fail", "7")))
    r = await asyncio.wait_for(exec_stream(url, transport=transport, protocol=protocol), T)
    assert r.exit_code == 7
    assert r.status is not None
    assert "non-zero exit code" in r.status["message"]


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
async def test_backend_not_found_is_a_failure_status(server: StreamingServer, transport: str) -> None:
    url = server.exec_url(ExecRequest("missing", ("echo",)))
    r = await asyncio.wait_for(exec_stream(url, transport=transport), T)
    assert r.exit_code == -1
    assert r.status is not None
    assert r.status["status"] == "Failure"
    assert r.status["reason"] == "NotFound"
    assert "missing" in r.status["message"]


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
async def test_client_disconnect_closes_the_exec(server: StreamingServer, backend: FakeBackend,
                                                 transport: str) -> None:
    url = server.exec_url(ExecRequest("c1", ("sleep",)))
    async with RemoteCommand.connect(url, transport=transport):
        await asyncio.wait_for(backend.exec_started.wait(), T)
    await asyncio.wait_for(backend.sessions[0].closed.wait(), T)


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
async def test_two_attached_clients_each_get_output(server: StreamingServer, backend: FakeBackend,
                                                    transport: str) -> None:
    c = backend.container("web")
    u1 = server.attach_url(AttachRequest("web"))
    u2 = server.attach_url(AttachRequest("web"))
    async with RemoteCommand.connect(u1, transport=transport) as a, RemoteCommand.connect(u2, transport="spdy") as b:
        async with asyncio.timeout(T):
            async with c.attached:
                await c.attached.wait_for(lambda: len(c.sessions) == 2)
        await c.emit(b"line 1\n")
        assert await asyncio.wait_for(a.read(), T) == (1, b"line 1\n")
        assert await asyncio.wait_for(b.read(), T) == (1, b"line 1\n")
        await c.exit()
        ra, rb = await asyncio.wait_for(asyncio.gather(a.wait(), b.wait()), T)
    assert ra.exit_code == rb.exit_code == 0


async def test_websocket_close_signal_only_with_v5(server: StreamingServer, backend: FakeBackend) -> None:
    """Under v4 a [255, 0] message is not a close signal (v4 has none): stdin stays open."""
    url = server.exec_url(ExecRequest("c1", ("cat",), stdin=True))
    async with RemoteCommand.connect(url, transport="websocket", protocol="v4.channel.k8s.io", stdin=True) as rc:
        await rc.send(b"x")
        assert await asyncio.wait_for(rc.read(), T) == (1, b"x")
        assert rc._sock is not None
        await rc._sock._send(__import__("wsproto").events.BytesMessage(data=bytes([255, 0])))
        await asyncio.sleep(0.1)
        assert not backend.sessions[0].stdin_closed.is_set()


def test_status_json_shape() -> None:
    from frakpy.streaming.remotecommand import encode_status, status_exit, status_success

    assert json.loads(encode_status(status_success(), True)) == {"metadata": {}, "status": "Success"}
    assert encode_status(status_success(), False) == b""
    assert b"exited with 2" in encode_status(status_exit(2, ("sh", "-c", "exit 2")), False)


def test_resize_decoder_handles_split_and_concatenated_objects() -> None:
    from frakpy.streaming.remotecommand import ResizeDecoder

    d = ResizeDecoder()
    assert d.feed(b'{"Width":80,') == []
    assert d.feed(b'"Height":24}\n{"Width":1,"Height":2}') == [(80, 24), (1, 2)]
