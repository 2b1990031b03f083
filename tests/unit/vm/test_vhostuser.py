"""vhost-user framing, negotiation answers, guest memory mapping and descriptor-chain checks."""

from __future__ import annotations

import asyncio
import mmap
import os
import socket
from pathlib import Path

import pytest

from frakpy.vm import vhostuser as vu
from frakpy.vm.vsockdev import VsockDevice

from .fake_driver import MEM_SIZE, FakeGuest, until


def test_read_message_with_fds_and_payload() -> None:
    a, b = socket.socketpair()
    r, w = os.pipe()
    try:
        socket.send_fds(a, [vu.encode_message(vu.SET_VRING_CALL, vu.U64.pack(1), vu.FLAG_VERSION)], [r])
        req, flags, payload, fds = vu.read_message(b)
        assert (req, flags, payload, len(fds)) == (vu.SET_VRING_CALL, vu.FLAG_VERSION, vu.U64.pack(1), 1)
        os.close(fds[0])
        a.close()
        assert vu.read_message(b) is None  # EOF: the front-end hung up
    finally:
        os.close(r)
        os.close(w)
        b.close()


@pytest.mark.parametrize(("raw", "needle"), [
    (vu.HEADER.pack(vu.GET_FEATURES, 0x2, 0), "version 2"),
    (vu.HEADER.pack(vu.SET_MEM_TABLE, 1, 1 << 20), "too large"),
    (vu.HEADER.pack(vu.SET_FEATURES, 1, 8) + b"\0\0", "cut short"),
])
def test_bad_frames_are_protocol_errors(raw: bytes, needle: str) -> None:
    a, b = socket.socketpair()
    a.sendall(raw)
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(vu.ProtocolError, match=needle):
        vu.read_message(b)
    a.close()
    b.close()


@pytest.fixture
async def guest():  # type: ignore[no-untyped-def]
    g = await FakeGuest(VsockDevice(7)).start()
    yield g
    g.close()


async def test_features_and_queue_count(guest: FakeGuest) -> None:
    features = vu.U64.unpack(await guest.request(vu.GET_FEATURES, ack=False))[0]
    assert features == vu.F_VERSION_1 | vu.F_PROTOCOL_FEATURES  # nothing we do not implement
    assert vu.U64.unpack(await guest.request(vu.GET_QUEUE_NUM, ack=False))[0] == 2
    cfg = await guest.request(vu.GET_CONFIG, vu.CONFIG_HEADER.pack(0, 8, 0) + bytes(8), ack=False)
    assert cfg == vu.CONFIG_HEADER.pack(0, 8, 0) + (7).to_bytes(8, "little")


async def test_failures_are_acked_as_failures_and_the_connection_stays(guest: FakeGuest) -> None:
    assert await guest.request(99) == vu.U64.pack(1)  # unknown, with need_reply: a failed ack
    assert await guest.request(vu.SET_VRING_NUM, vu.VRING_STATE.pack(5, 16)) == vu.U64.pack(1)  # no queue 5
    assert await guest.request(vu.SET_VRING_NUM, vu.VRING_STATE.pack(0, 100)) == vu.U64.pack(1)  # not 2^n
    r, w = os.pipe()
    try:  # two regions announced, one fd given
        table = vu.MEM_HEADER.pack(2, 0) + vu.MEM_REGION.pack(0, 4096, 0, 0) * 2
        assert await guest.request(vu.SET_MEM_TABLE, table, (r,)) == vu.U64.pack(1)
    finally:
        os.close(r)
        os.close(w)
    assert await guest.request(vu.SET_FEATURES, vu.U64.pack(1 << 5)) == vu.U64.pack(1)  # never offered
    assert await guest.request(vu.SET_OWNER) == vu.U64.pack(0)
    assert not guest.backend.closed.is_set()


async def test_unknown_request_without_reply_closes_the_connection(guest: FakeGuest) -> None:
    guest.front.sendall(vu.encode_message(99))
    await asyncio.wait_for(guest.backend.closed.wait(), 5)


def test_read_only_region_is_mapped_read_only(tmp_path: Path) -> None:
    image = tmp_path / "rootfs.img"
    image.write_bytes(b"R" * 8192)
    ram = os.memfd_create("ram")
    os.ftruncate(ram, 8192)
    mem = vu.GuestMemory()
    mem.set_table([(0, 8192, 0x1000_0000, 0), (8192, 8192, 0x2000_0000, 0)],
                  [ram, os.open(image, os.O_RDONLY)])
    try:
        assert [r.writable for r in mem.regions] == [True, False]
        m, off = mem.gpa(8192 + 100, 4)
        assert m[off:off + 4] == b"RRRR"
        with pytest.raises(vu.ProtocolError, match="read-only"):
            mem.gpa(8192, 16, write=True)
        with pytest.raises(vu.ProtocolError, match="outside guest memory"):
            mem.gpa(8192 + 8000, 1000)  # runs past the end of the region
        with pytest.raises(vu.ProtocolError, match="not in writable"):
            mem.uva(0x2000_0000, 16)  # rings never live in the read-only image
        assert mem.uva(0x1000_0010, 16)[1] == 0x10
    finally:
        mem.clear()


def _queue(num: int = 8) -> tuple[vu.Virtqueue, mmap.mmap]:
    fd = os.memfd_create("q")
    os.ftruncate(fd, MEM_SIZE)
    mem = vu.GuestMemory()
    mem.set_table([(0, MEM_SIZE, 0, 0)], [fd])
    q = vu.Virtqueue(0, mem)
    q.num, q.addrs, q.started, q.enabled = num, (0x0, 0x1000, 0x2000), True, True
    q.map_rings()
    return q, mem.regions[0].map


def _desc(m: mmap.mmap, i: int, addr: int, length: int, flags: int, nxt: int = 0) -> None:
    vu.DESC.pack_into(m, 16 * i, addr, length, flags, nxt)


def _make_available(m: mmap.mmap, heads: list[int]) -> None:
    for k, head in enumerate(heads):
        vu.U16.pack_into(m, 0x1000 + 4 + 2 * k, head)
    vu.U16.pack_into(m, 0x1002, len(heads))


def test_chain_with_readable_and_writable_parts() -> None:
    q, m = _queue()
    m[0x8000:0x8005] = b"hello"
    _desc(m, 0, 0x8000, 5, vu.DESC_F_NEXT, 3)
    _desc(m, 3, 0x9000, 100, vu.DESC_F_WRITE)
    _make_available(m, [0])
    chain = q.pop()
    assert chain is not None and chain.read() == b"hello" and chain.writable_len == 100
    assert chain.write(b"x" * 150) == 100  # only what fits
    q.push(chain, 100)
    assert vu.U16.unpack_from(m, 0x2002)[0] == 1
    assert vu.USED_ELEM.unpack_from(m, 0x2004) == (0, 100)
    assert q.pop() is None


@pytest.mark.parametrize(("setup", "needle"), [
    (lambda m: (_desc(m, 0, 0x8000, 4, vu.DESC_F_NEXT, 0)), "broken"),  # a loop
    (lambda m: (_desc(m, 0, 0x8000, 4, vu.DESC_F_NEXT, 9)), "broken"),  # next out of the table
    (lambda m: (_desc(m, 0, 0x8000, 4, vu.DESC_F_WRITE | vu.DESC_F_NEXT, 1), _desc(m, 1, 0x9000, 4, 0)),
     "readable descriptor after a writable"),
    (lambda m: (_desc(m, 0, 0x8000, 16, vu.DESC_F_INDIRECT)), "indirect"),
    (lambda m: (_desc(m, 0, MEM_SIZE - 2, 16, 0)), "outside guest memory"),
])
def test_bad_chains_are_refused(setup, needle: str) -> None:  # type: ignore[no-untyped-def]
    q, m = _queue()
    setup(m)
    _make_available(m, [0])
    with pytest.raises(vu.ProtocolError, match=needle):
        q.pop()


def test_available_index_running_too_far_ahead_is_refused() -> None:
    q, m = _queue()
    vu.U16.pack_into(m, 0x1002, 9)  # 9 new entries in a ring of 8
    with pytest.raises(vu.ProtocolError, match="ahead"):
        q.pop()


async def test_call_is_skipped_when_the_driver_suppresses_interrupts(guest: FakeGuest) -> None:
    rx = guest.backend.queues[0]
    chain_head = guest.rx.add([(guest.alloc(64), 64, True)])
    chain = rx.pop()
    assert chain is not None and chain.head == chain_head
    vu.U16.pack_into(guest.mem, guest.rx.avail, vu.AVAIL_F_NO_INTERRUPT)
    rx.push(chain, 0)
    rx.notify()
    with pytest.raises(BlockingIOError):
        os.eventfd_read(guest.rx.call_fd)
    vu.U16.pack_into(guest.mem, guest.rx.avail, 0)
    rx.notify()
    assert await until(lambda: _read_eventfd(guest.rx.call_fd), "the call eventfd") == 1


def _read_eventfd(fd: int) -> int:
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0
