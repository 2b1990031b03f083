"""Port forwarding through the real server and our client over SPDY/3.1 and WebSocket (fake backend)."""

from __future__ import annotations

import asyncio

import pytest

from frakpy.streaming import PFStream, PortForward, PortForwardError, PortForwardRequest, StreamingServer
from frakpy.streaming.client import forward_local
from tests.unit.streaming.fakes import FakeBackend

T = 10.0


async def roundtrip(stream: PFStream, payload: bytes) -> bytes:
    await stream.write(payload)
    await stream.close_write()  # half close: the echo still answers
    out = bytearray()
    while chunk := await asyncio.wait_for(stream.read(), T):
        out += chunk
    await stream.close()
    return bytes(out)


async def test_spdy_several_connections_two_ports(server: StreamingServer, backend: FakeBackend) -> None:
    url = server.port_forward_url(PortForwardRequest("pod1"))
    async with PortForward.connect(url) as pf:
        streams = [await pf.open(port) for port in (80, 80, 81, 81, 80)]
        payloads = [f"hello {i} ".encode() * (i * 5000 + 1) for i in range(len(streams))]
        results = await asyncio.gather(*(roundtrip(s, p) for s, p in zip(streams, payloads, strict=True)))
        for s, p, r in zip(streams, payloads, results, strict=True):
            assert r == f"port={s.port}\n".encode() + p  # type: ignore[attr-defined]
        # the session stays usable after connections ended
        assert await roundtrip(await pf.open(82), b"again") == b"port=82\nagain"
    assert len(backend.connections) == 6
    assert all(c.write_closed for c in backend.connections)
    await asyncio.wait_for(asyncio.gather(*(c.closed_event.wait() for c in backend.connections)), T)


async def test_spdy_refused_port_reports_error(server: StreamingServer) -> None:
    url = server.port_forward_url(PortForwardRequest("pod1"))
    async with PortForward.connect(url) as pf:
        s = await pf.open(9999)
        with pytest.raises(PortForwardError, match="connection refused: port 9999"):
            await asyncio.wait_for(s.read(), T)
        # other connections are unaffected
        assert await roundtrip(await pf.open(80), b"x") == b"port=80\nx"


async def test_spdy_port_outside_the_request_is_refused(server: StreamingServer) -> None:
    url = server.port_forward_url(PortForwardRequest("pod1", ports=(80,)))
    async with PortForward.connect(url) as pf:
        with pytest.raises(PortForwardError, match="not part of the port-forward request"):
            await asyncio.wait_for((await pf.open(81)).read(), T)


async def test_spdy_backend_not_found(server: StreamingServer) -> None:
    url = server.port_forward_url(PortForwardRequest("missing"))
    async with PortForward.connect(url) as pf:
        with pytest.raises(PortForwardError, match="sandbox missing not found"):
            await asyncio.wait_for((await pf.open(80)).read(), T)


async def test_websocket_two_ports_half_close(server: StreamingServer, backend: FakeBackend) -> None:
    url = server.port_forward_url(PortForwardRequest("pod1", ports=(80, 81)))
    async with PortForward.connect(url, transport="websocket") as pf:
        a, b = await pf.open(80), await pf.open(81)
        ra, rb = await asyncio.gather(roundtrip(a, b"to a" * 20000), roundtrip(b, b"to b"))
    assert ra == b"port=80\n" + b"to a" * 20000
    assert rb == b"port=81\nto b"
    assert all(c.write_closed for c in backend.connections)


async def test_websocket_ports_from_query_and_errors(server: StreamingServer) -> None:
    url = server.port_forward_url(PortForwardRequest("pod1"))
    async with PortForward.connect(url, transport="websocket", ports=[9999, 80]) as pf:
        bad, good = await pf.open(9999), await pf.open(80)
        with pytest.raises(PortForwardError, match="connection refused"):
            await asyncio.wait_for(bad.read(), T)
        assert await roundtrip(good, b"ok") == b"port=80\nok"


async def test_websocket_requires_ports(server: StreamingServer) -> None:
    from frakpy.streaming import StreamingError

    url = server.port_forward_url(PortForwardRequest("pod1"))
    with pytest.raises(StreamingError) as ei:
        async with PortForward.connect(url, transport="websocket"):
            pass
    assert ei.value.status == 400


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
async def test_forward_local(server: StreamingServer, transport: str) -> None:
    url = server.port_forward_url(PortForwardRequest("pod1", ports=(80,)))
    async with await forward_local(url, 80, transport=transport) as lf:
        reader, writer = await asyncio.open_connection("127.0.0.1", lf.port)
        writer.write(b"ping")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), T) == b"port=80\nping"
        writer.close()
