"""Flow control, tokens and TLS of the streaming server."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from frakpy.config import StreamingConfig
from frakpy.streaming import (
    ExecRequest,
    PortForward,
    PortForwardRequest,
    RemoteCommand,
    StreamingError,
    StreamingServer,
    exec_stream,
)
from frakpy.streaming import client as client_mod
from frakpy.streaming.spdy import SpdyConnection
from tests.unit.streaming.fakes import FakeBackend

T = 20.0
MiB = 1 << 20


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
async def test_slow_reader_bounds_server_buffers(server: StreamingServer, backend: FakeBackend,
                                                 transport: str) -> None:
    total = 50 * MiB
    url = server.exec_url(ExecRequest("c1", ("big", str(total))))
    async with asyncio.timeout(T), RemoteCommand.connect(url, transport=transport) as rc:
        # a fixed receive buffer keeps the kernel's share of "in flight" small and predictable
        sock = (rc._conn._writer if rc._conn is not None else rc._sock.writer).get_extra_info("socket")  # type: ignore[union-attr]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        got = 0
        while got < 2 * MiB:
            item = await rc.read()
            assert item is not None
            got += len(item[1])
        # the client stops reading: the producer must come to a stop (robust to a slow machine:
        # wait for the pipeline to fill, i.e. for production to stand still for 0.2 s)
        session = backend.sessions[0]
        for _ in range(50):
            before = session.produced
            await asyncio.sleep(0.2)
            if session.produced == before:
                break
        else:
            pytest.fail("the backend kept producing for a stalled reader")
        assert server.buffered_bytes() < 1 * MiB
        # in flight: SPDY windows + queues; WebSocket has no windows, so add the kernel socket
        # buffers (send autotuning, up to tcp_wmem max): bounded either way, nowhere near 50 MB
        assert session.produced - got < (2 * MiB if transport == "spdy" else 12 * MiB)
        peak = 0
        n = 0
        while (item := await rc.read()) is not None:
            got += len(item[1])
            n += 1
            if n % 64 == 0:
                peak = max(peak, server.buffered_bytes())
        result = await rc.wait()
    assert got == total
    assert result.exit_code == 0
    assert peak < 1 * MiB


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
async def test_stdin_backpressure(server: StreamingServer, backend: FakeBackend, transport: str) -> None:
    """A process that does not read stdin makes the client's send() wait; nothing piles up."""
    url = server.exec_url(ExecRequest("c1", ("sleep",), stdin=True))
    async with RemoteCommand.connect(url, transport=transport, stdin=True) as rc:
        chunk = b"z" * MiB

        async def flood() -> None:
            for _ in range(64):
                await rc.send(chunk)

        task = asyncio.create_task(flood())
        await asyncio.sleep(0.5)
        assert not task.done(), "64 MiB of stdin went nowhere without blocking the sender"
        assert server.buffered_bytes() < 1 * MiB
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_spdy_peer_without_flow_control_does_not_stall(server: StreamingServer,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """spdystream (kubelet/kubectl) never sends SETTINGS or WINDOW_UPDATE: the server must not
    wait for windows that never open, in either direction."""
    monkeypatch.setattr(client_mod, "SpdyConnection", functools.partial(SpdyConnection, flow_control=False))
    url = server.exec_url(ExecRequest("c1", ("big", str(3 * MiB))))
    r = await asyncio.wait_for(exec_stream(url), T)
    assert len(r.stdout) == 3 * MiB
    data = b"y" * (2 * MiB)
    url = server.exec_url(ExecRequest("c1", ("cat",), stdin=True))
    r = await asyncio.wait_for(exec_stream(url, stdin=data), T)
    assert r.stdout == data


def _clock(start: float = 1000.0) -> list[float]:
    return [start]


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
async def test_token_unknown_reused_expired_wrong_kind(server: StreamingServer, transport: str) -> None:
    now = _clock()
    server.tokens._clock = lambda: now[0]

    async def status_of(url: str) -> int | None:
        with pytest.raises(StreamingError) as ei:
            await asyncio.wait_for(exec_stream(url, transport=transport), T)
        return ei.value.status

    base = server.base_url
    assert await status_of(f"{base}/exec/not-a-token") == 404
    url = server.exec_url(ExecRequest("c1", ("echo", "once")))
    assert (await asyncio.wait_for(exec_stream(url, transport=transport), T)).stdout == b"once\n"
    assert await status_of(url) == 404  # reused
    url = server.exec_url(ExecRequest("c1", ("echo",)))
    now[0] += server.cfg.token_ttl_s + 1
    assert await status_of(url) == 404  # expired
    url = server.exec_url(ExecRequest("c1", ("echo",)))
    assert await status_of(url.replace("/exec/", "/attach/")) == 404  # issued for another kind
    with pytest.raises(StreamingError) as ei:
        async with PortForward.connect(f"{base}/portforward/nope", transport=transport, ports=[80]):
            pass
    assert ei.value.status == 404


async def test_spdy_protocol_negotiation_failure_is_403(server: StreamingServer) -> None:
    url = server.exec_url(ExecRequest("c1", ("echo",)))
    with pytest.raises(StreamingError) as ei:
        await asyncio.wait_for(exec_stream(url, protocol="v9.channel.k8s.io"), T)
    assert ei.value.status == 403


async def test_plain_get_without_upgrade_is_400(server: StreamingServer) -> None:
    url = server.exec_url(ExecRequest("c1", ("echo",)))
    host, port = server.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {url.removeprefix(server.base_url)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.read(), T)
    writer.close()
    assert head.startswith(b"HTTP/1.1 400 ")


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[str, str]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    return str(cert), str(key)


async def test_tls(backend: FakeBackend, tls_files: tuple[str, str]) -> None:
    cert, key = tls_files
    srv = StreamingServer(StreamingConfig(address="127.0.0.1", port=0, tls_cert=cert, tls_key=key), backend)
    await srv.start()
    try:
        assert srv.base_url.startswith("https://127.0.0.1:")
        ctx = ssl.create_default_context(cafile=cert)
        for transport in ("spdy", "websocket"):
            url = srv.exec_url(ExecRequest("c1", ("echo", "secure")))
            r = await asyncio.wait_for(exec_stream(url, transport=transport, ssl=ctx), T)
            assert (r.stdout, r.exit_code) == (b"secure\n", 0)
        url = srv.port_forward_url(PortForwardRequest("pod1"))
        async with PortForward.connect(url, ssl=ctx) as pf:
            s = await pf.open(80)
            await s.write(b"tls")
            await s.close_write()
            assert await asyncio.wait_for(s.read(), T) == b"port=80\n"
        # an untrusting client fails the handshake
        url = srv.exec_url(ExecRequest("c1", ("echo",)))
        with pytest.raises((StreamingError, ssl.SSLError)):
            await asyncio.wait_for(exec_stream(url), T)
    finally:
        await srv.close()


async def test_tls_needs_cert_and_key(backend: FakeBackend, tls_files: tuple[str, str]) -> None:
    from frakpy.errors import InvalidArgument

    srv = StreamingServer(StreamingConfig(tls_cert=tls_files[0]), backend)
    with pytest.raises(InvalidArgument, match="together"):
        await srv.start()


async def test_close_ends_live_sessions(backend: FakeBackend) -> None:
    srv = StreamingServer(StreamingConfig(), backend)
    await srv.start()
    url = srv.exec_url(ExecRequest("c1", ("sleep",)))
    async with RemoteCommand.connect(url) as rc:
        await asyncio.wait_for(backend.exec_started.wait(), T)
        await asyncio.wait_for(srv.close(), T)
        assert backend.sessions[0].closed.is_set()
        assert await asyncio.wait_for(rc.read(), T) is None
        result = await asyncio.wait_for(rc.wait(), T)
        assert result.exit_code == -1
        assert result.status is not None and "ended before the exit status" in result.status["message"]


def test_token_store_is_bounded_and_purges_expired() -> None:
    from frakpy.errors import ResourceExhausted
    from frakpy.streaming.tokens import TokenStore

    now = [0.0]
    store: TokenStore[str] = TokenStore(10.0, clock=lambda: now[0], max_pending=2)
    a = store.issue("exec", "a")
    store.issue("exec", "b")
    with pytest.raises(ResourceExhausted):
        store.issue("exec", "c")
    now[0] = 11.0
    store.issue("exec", "d")  # the expired ones made room
    assert len(store) == 1
    assert store.consume("exec", a) is None
