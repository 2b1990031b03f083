"""The userspace vsock device: virtqueues, the vsock stream protocol and credit, the CONNECT handshake.

A fake driver (tests/unit/vm/fake_driver.py) plays QEMU and the guest; host clients are real unix
sockets connected through the device's own handshake code.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest

from frakpy.vm import vsockdev as vd
from frakpy.vm.vsockdev import (
    BUF_ALLOC,
    OP_CREDIT_REQUEST,
    OP_CREDIT_UPDATE,
    OP_REQUEST,
    OP_RESPONSE,
    OP_RST,
    OP_RW,
    OP_SHUTDOWN,
    SHUT_RCV,
    SHUT_SEND,
    VsockDevice,
)

from .fake_driver import FakeGuest, until

GUEST_PORT = 1024


@pytest.fixture
async def guest() -> AsyncIterator[FakeGuest]:
    g = await FakeGuest(VsockDevice(3)).start()
    g.post_rx(8)
    yield g
    g.close()


class Client:
    """A host client on the device's CONNECT socket (asyncio streams)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, device: VsockDevice, line: bytes, *, small_buffers: bool = False) -> Client:
        a, b = socket.socketpair()
        if small_buffers:  # the device can hand the kernel only a few KiB: the rest stays its own
            b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        asyncio.ensure_future(vd.handshake(device, b))
        reader, writer = await asyncio.open_connection(sock=a)
        writer.write(line)
        await writer.drain()
        return cls(reader, writer)


async def connected(guest: FakeGuest, data_after_connect: bytes = b"", **kw: bool) -> tuple[Client, int]:
    """A client whose CONNECT the guest accepted; (client, host port)."""
    c = await Client.open(guest.device, f"CONNECT {GUEST_PORT}\n".encode() + data_after_connect, **kw)
    req = (await until(lambda: [p for p in guest.collect() if p.op == OP_REQUEST], "REQUEST"))[0]
    assert (req.src_cid, req.dst_cid, req.dst_port) == (2, 3, GUEST_PORT)
    guest.send(OP_RESPONSE, GUEST_PORT, req.src_port)
    line = await asyncio.wait_for(c.reader.readline(), 5)
    assert line == f"OK {req.src_port}\n".encode()
    return c, req.src_port


def data_of(guest: FakeGuest) -> bytes:
    return b"".join(p.data for p in guest.received if p.op == OP_RW)


async def test_config_space_is_the_guest_cid(guest: FakeGuest) -> None:
    from frakpy.vm import vhostuser as vu
    reply = await guest.request(vu.GET_CONFIG, vu.CONFIG_HEADER.pack(0, 8, 0) + bytes(8), ack=False)
    assert reply[vu.CONFIG_HEADER.size:] == (3).to_bytes(8, "little")


async def test_connect_and_stream_both_ways(guest: FakeGuest) -> None:
    c, host_port = await connected(guest, b"early")
    # host -> guest, including what the client wrote right behind its CONNECT line
    c.writer.write(b" bytes")
    await until(lambda: guest.collect() is not None and data_of(guest) == b"early bytes", "host data")
    assert data_of(guest) == b"early bytes"
    assert all(p.dst_port == GUEST_PORT and p.src_port == host_port for p in guest.received if p.op == OP_RW)
    # guest -> host
    guest.send(OP_RW, GUEST_PORT, host_port, b"hello from the guest")
    assert await asyncio.wait_for(c.reader.readexactly(20), 5) == b"hello from the guest"
    c.writer.close()


async def test_large_host_write_is_split_into_receive_buffers(guest: FakeGuest) -> None:
    c, host_port = await connected(guest)
    blob = bytes(range(256)) * 200  # 51200 bytes, > 12 receive buffers of 4 KiB
    c.writer.write(blob)
    await until(lambda: guest.collect() is not None and len(data_of(guest)) >= len(blob), "all of the blob")
    assert data_of(guest) == blob
    assert max(len(p.data) for p in guest.received) <= 4096
    c.writer.close()


async def test_host_never_exceeds_guest_credit(guest: FakeGuest) -> None:
    guest.buf_alloc = 1000  # the guest has room for 1000 bytes
    c, host_port = await connected(guest)
    c.writer.write(b"x" * 5000)
    await until(lambda: guest.collect() is not None and len(data_of(guest)) >= 1000, "first 1000 bytes")
    await asyncio.sleep(0.05)
    guest.collect()
    assert len(data_of(guest)) == 1000  # nothing beyond the credit
    assert any(p.op == OP_CREDIT_REQUEST for p in guest.received)  # ... but it asked for more
    guest.fwd_cnt = 1000  # the guest app read them: its credit update
    guest.send(OP_CREDIT_UPDATE, GUEST_PORT, host_port)
    await until(lambda: guest.collect() is not None and len(data_of(guest)) >= 2000, "next 1000 bytes")
    await asyncio.sleep(0.05)
    guest.collect()
    assert len(data_of(guest)) == 2000
    c.writer.close()


async def test_device_advertises_its_credit_as_the_host_drains(guest: FakeGuest) -> None:
    c, host_port = await connected(guest)
    sent = 0
    chunk = b"y" * 16384
    while sent < BUF_ALLOC // 2:  # well within our buffer, beyond the update threshold
        guest.send(OP_RW, GUEST_PORT, host_port, chunk)
        sent += len(chunk)
        await asyncio.sleep(0)
    got = await asyncio.wait_for(c.reader.readexactly(sent), 5)
    assert len(got) == sent

    def reported() -> int:
        guest.collect()
        return max((p.fwd_cnt for p in guest.received if p.src_port == host_port), default=0)
    assert await until(lambda: reported() >= BUF_ALLOC // 4, "a credit update")
    assert all(p.buf_alloc == BUF_ALLOC for p in guest.received)
    c.writer.close()


async def test_guest_overrunning_our_buffer_is_reset(guest: FakeGuest) -> None:
    c, host_port = await connected(guest, small_buffers=True)
    c.writer.transport.pause_reading()  # the host client reads nothing: the device buffers
    chunk = b"z" * 65536
    for _ in range(BUF_ALLOC // len(chunk) + 1):
        guest.send(OP_RW, GUEST_PORT, host_port, chunk)
    # our buffer is BUF_ALLOC; one chunk more than that is a protocol violation
    await until(lambda: guest.collect() is not None and any(p.op == OP_RST for p in guest.received), "RST")
    c.writer.close()


async def test_guest_refusal_is_an_err_line(guest: FakeGuest) -> None:
    c = await Client.open(guest.device, b"CONNECT 2000\n")
    req = (await until(lambda: [p for p in guest.collect() if p.op == OP_REQUEST], "REQUEST"))[0]
    guest.send(OP_RST, 2000, req.src_port)
    line = await asyncio.wait_for(c.reader.readline(), 5)
    assert line.startswith(b"ERR ECONNREFUSED ") and b"2000" in line
    assert await c.reader.read() == b""
    assert not guest.device.conns


@pytest.mark.parametrize(("line", "needle"), [
    (b"HELLO\n", b"ERR EINVAL expected 'CONNECT <port>'"),
    (b"CONNECT\n", b"ERR EINVAL expected 'CONNECT <port>'"),
    (b"CONNECT abc\n", b"ERR EINVAL port 'abc' is not a number"),
    (b"CONNECT 0\n", b"ERR EINVAL port 0 is outside"),
    (b"CONNECT 4294967295\n", b"ERR EINVAL port 4294967295 is outside"),
    (b"CONNECT " + b"9" * 80 + b"\n", b"ERR EINVAL request line too long"),
])
async def test_bad_connect_lines(guest: FakeGuest, line: bytes, needle: bytes) -> None:
    c = await Client.open(guest.device, line)
    answer = await asyncio.wait_for(c.reader.readline(), 5)
    assert answer.startswith(needle), answer
    assert await c.reader.read() == b""
    assert not guest.device.conns and not guest.collect()


async def test_client_closing_before_its_line_gets_an_error(guest: FakeGuest) -> None:
    c = await Client.open(guest.device, b"CONN")
    c.writer.write_eof()
    assert (await asyncio.wait_for(c.reader.readline(), 5)).startswith(b"ERR EINVAL the client closed")


async def test_client_giving_up_while_connecting_withdraws_or_resets(guest: FakeGuest) -> None:
    guest.collect()
    c = await Client.open(guest.device, f"CONNECT {GUEST_PORT}\n".encode())
    req = (await until(lambda: [p for p in guest.collect() if p.op == OP_REQUEST], "REQUEST"))[0]
    c.writer.close()  # the guest already has the REQUEST: the device must reset it
    await until(lambda: guest.collect() is not None and any(
        p.op == OP_RST and p.src_port == req.src_port for p in guest.received), "RST after the client left")
    assert not guest.device.conns


async def test_half_close_both_ways_and_clean_close(guest: FakeGuest) -> None:
    c, host_port = await connected(guest)
    c.writer.write_eof()  # host: no more data
    await until(lambda: guest.collect() is not None and any(
        p.op == OP_SHUTDOWN and p.flags == SHUT_SEND for p in guest.received), "SHUTDOWN(SEND)")
    guest.send(OP_RW, GUEST_PORT, host_port, b"still flowing")  # the other direction stays open
    assert await asyncio.wait_for(c.reader.readexactly(13), 5) == b"still flowing"
    guest.send(OP_SHUTDOWN, GUEST_PORT, host_port, flags=SHUT_RCV | SHUT_SEND)  # the guest closes
    assert await asyncio.wait_for(c.reader.read(), 5) == b""
    await until(lambda: guest.collect() is not None and any(p.op == OP_RST for p in guest.received), "RST")
    assert not guest.device.conns


async def test_guest_send_shutdown_gives_the_host_eof(guest: FakeGuest) -> None:
    c, host_port = await connected(guest)
    guest.send(OP_RW, GUEST_PORT, host_port, b"last words")
    guest.send(OP_SHUTDOWN, GUEST_PORT, host_port, flags=SHUT_SEND)
    assert await asyncio.wait_for(c.reader.read(), 5) == b"last words"
    c.writer.write(b"reply after their EOF")  # the host may still write
    await until(lambda: guest.collect() is not None and data_of(guest) == b"reply after their EOF", "reply")
    c.writer.close()


async def test_guest_reset_ends_the_host_connection(guest: FakeGuest) -> None:
    c, host_port = await connected(guest)
    guest.send(OP_RST, GUEST_PORT, host_port)
    assert await asyncio.wait_for(c.reader.read(), 5) == b""
    assert not guest.device.conns


async def test_packets_for_unknown_connections_are_reset(guest: FakeGuest) -> None:
    guest.send(OP_RW, 5555, 77, b"who are you")
    rst = (await until(lambda: [p for p in guest.collect() if p.op == OP_RST], "RST"))[0]
    assert (rst.src_port, rst.dst_port) == (77, 5555)
    guest.send(OP_RW, 5555, 77, b"spoofed", src_cid=9)  # not the guest's CID: dropped silently
    await asyncio.sleep(0.05)
    assert not guest.collect()


async def test_guest_connection_to_a_host_port(guest: FakeGuest, tmp_path) -> None:  # type: ignore[no-untyped-def]
    guest.device.uds_path = str(tmp_path / "vsock.sock")
    server_got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        server_got.set_result(await r.readexactly(4))
        w.write(b"pong")
        await w.drain()
        w.close()
    server = await asyncio.start_unix_server(on_client, str(tmp_path / "vsock.sock_5000"))
    try:
        guest.send(OP_REQUEST, 40000, 5000)
        await until(lambda: guest.collect() is not None and any(p.op == OP_RESPONSE for p in guest.received),
                    "RESPONSE")
        guest.send(OP_RW, 40000, 5000, b"ping")
        assert await asyncio.wait_for(server_got, 5) == b"ping"
        await until(lambda: guest.collect() is not None and data_of(guest) == b"pong", "pong")
        guest.send(OP_REQUEST, 40001, 5001)  # nobody listens on host port 5001
        await until(lambda: guest.collect() is not None and any(
            p.op == OP_RST and p.dst_port == 40001 for p in guest.received), "RST for 5001")
    finally:
        server.close()


async def test_ring_stop_ends_every_connection(guest: FakeGuest) -> None:
    from frakpy.vm import vhostuser as vu
    c, host_port = await connected(guest)
    guest.collect()
    reply = await guest.request(vu.GET_VRING_BASE, vu.VRING_STATE.pack(0, 0), ack=False)
    assert vu.VRING_STATE.unpack(reply) == (0, len(guest.received))  # one receive buffer per packet
    assert await asyncio.wait_for(c.reader.read(), 5) == b""
    assert not guest.device.conns


async def test_backend_closes_when_the_front_end_hangs_up(guest: FakeGuest) -> None:
    c, _ = await connected(guest)
    guest.front.close()
    await asyncio.wait_for(guest.backend.closed.wait(), 5)
    assert await asyncio.wait_for(c.reader.read(), 5) == b""
    with contextlib.suppress(OSError):
        guest.front.close()
