"""Port-forward RPCs end to end: real agent services (FakeAgent) + AgentClient + a TCP server on
the host's loopback (the fake agent's "guest" loopback)."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from frakpy import errors
from frakpy.agent.client import AgentClient
from tests.fakes.agent import FakeAgent


async def echo_upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data.upper())
        await writer.drain()
    writer.write(b"BYE")
    await writer.drain()
    writer.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connect_write_read_half_close_and_close(agent: FakeAgent, client: AgentClient) -> None:
    server = await asyncio.start_server(echo_upper, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        chunks = client.port_connect(port, window_bytes=4096)
        first = await chunks.__anext__()
        assert first.conn_id and not first.data and not first.eof
        assert await client.port_write(first.conn_id, b"hello") == 5
        got = await chunks.__anext__()
        assert (got.offset, got.data) == (0, b"HELLO")
        await client.port_ack(first.conn_id, got.end)
        await client.port_write(first.conn_id, close_write=True)
        rest = b""
        while True:
            c = await chunks.__anext__()
            if c.eof:
                assert c.offset == 5 + len(rest)
                break
            rest += c.data
        assert rest == b"BYE"
        await client.port_close(first.conn_id)
        assert [c async for c in chunks] == []  # the stream ends after PortClose
        assert agent.state.port_conns == {}  # type: ignore[attr-defined]
        await client.port_close(first.conn_id)  # idempotent
        with pytest.raises(errors.NotFound):
            await client.port_write(first.conn_id, b"x")


async def test_refused_is_unavailable_naming_the_port(client: AgentClient) -> None:
    port = free_port()
    with pytest.raises(errors.Unavailable, match=f"port {port}: connection refused"):
        await client.port_connect(port).__anext__()
    with pytest.raises(errors.InvalidArgument):
        await client.port_connect(70000).__anext__()


async def test_window_bounds_what_the_agent_reads(agent: FakeAgent, client: AgentClient) -> None:
    total = 24 << 20  # well beyond what the loopback socket buffers hold
    sent = asyncio.Event()

    async def blast(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"z" * total)
        await writer.drain()
        sent.set()
        writer.close()

    server = await asyncio.start_server(blast, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        chunks = client.port_connect(port, window_bytes=64 << 10)
        conn_id = (await chunks.__anext__()).conn_id
        await asyncio.sleep(0.3)
        conn = agent.state.port_conns[conn_id]  # type: ignore[attr-defined]
        assert conn.buffer.retained <= 64 << 10 and not sent.is_set()  # not acknowledged: paused
        received = 0
        while True:
            c = await chunks.__anext__()
            if c.eof:
                break
            received += len(c.data)
            await client.port_ack(conn_id, c.end)
        assert received == total
        await client.port_close(conn_id)


async def test_lost_host_connection_closes_guest_connections(agent: FakeAgent, client: AgentClient) -> None:
    accepted: list[asyncio.StreamReader] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(reader)
        with contextlib.suppress(ConnectionError):
            await reader.read()  # EOF once the agent closed the socket
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        chunks = client.port_connect(port)
        await chunks.__anext__()
        assert len(agent.state.port_conns) == 1  # type: ignore[attr-defined]
        agent.drop_connections()
        for _ in range(50):
            if not agent.state.port_conns:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.05)
        assert agent.state.port_conns == {}  # type: ignore[attr-defined]
