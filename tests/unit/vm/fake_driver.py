"""A fake virtio-vsock guest driver and vhost-user front-end, for testing frakpy.vm.vsockdev.

It plays both QEMU (the vhost-user messages, with REPLY_ACK so every step is acknowledged) and
the guest (split rings and buffers laid out in a memfd it shares with the backend), so the
backend under test runs unchanged: same socket protocol, same memory mapping, same eventfds.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import socket
import struct

from frakpy.vm import vhostuser as vu
from frakpy.vm.vsockdev import HDR, HOST_CID, Packet, VsockDevice

UVA_BASE = 0x7F00_0000_0000  # where "QEMU" has guest RAM mapped
MEM_SIZE = 16 << 20
QSIZE = 64
RX_BUF = 4096  # what Linux posts per receive buffer (plus a separate header descriptor)


class Ring:
    """One split ring in guest memory, driven from the driver's side."""

    def __init__(self, mem: mmap.mmap, base: int, num: int = QSIZE) -> None:
        self.mem, self.num = mem, num
        self.desc = base
        self.avail = base + 16 * num
        self.used = (self.avail + 6 + 2 * num + 3) & ~3
        self.end = self.used + 6 + 8 * num
        self.avail_idx = 0
        self.used_seen = 0
        self.free = list(range(num))
        self.chains: dict[int, list[int]] = {}
        self.kick_fd = os.eventfd(0, os.EFD_NONBLOCK)
        self.call_fd = os.eventfd(0, os.EFD_NONBLOCK)

    def add(self, bufs: list[tuple[int, int, bool]]) -> int:
        """Make a chain of (gpa, len, device-writable) buffers available; returns its head."""
        ids = [self.free.pop(0) for _ in bufs]
        for k, (i, (addr, length, writable)) in enumerate(zip(ids, bufs, strict=True)):
            last = k == len(ids) - 1
            flags = (0 if last else vu.DESC_F_NEXT) | (vu.DESC_F_WRITE if writable else 0)
            vu.DESC.pack_into(self.mem, self.desc + 16 * i, addr, length, flags, 0 if last else ids[k + 1])
        self.chains[ids[0]] = ids
        struct.pack_into("<H", self.mem, self.avail + 4 + 2 * (self.avail_idx % self.num), ids[0])
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        struct.pack_into("<H", self.mem, self.avail + 2, self.avail_idx)
        return ids[0]

    def kick(self) -> None:
        os.eventfd_write(self.kick_fd, 1)

    def take_used(self) -> list[tuple[int, int]]:
        """(head, written) of every chain the device returned since the last call; ids are freed."""
        out = []
        idx = struct.unpack_from("<H", self.mem, self.used + 2)[0]
        while self.used_seen != idx:
            head, written = vu.USED_ELEM.unpack_from(self.mem, self.used + 4 + 8 * (self.used_seen % self.num))
            self.used_seen = (self.used_seen + 1) & 0xFFFF
            self.free.extend(self.chains.pop(head))
            out.append((head, written))
        return out


class FakeGuest:
    """Front-end + driver. ``await FakeGuest.start(device)`` negotiates and starts both rings."""

    def __init__(self, device: VsockDevice, *, guest_cid: int = 3) -> None:
        self.device = device
        self.cid = guest_cid
        self.fd = os.memfd_create("fake-guest-ram")
        os.ftruncate(self.fd, MEM_SIZE)
        self.mem = mmap.mmap(self.fd, MEM_SIZE)
        self.rx = Ring(self.mem, 0x1000)
        self.tx = Ring(self.mem, 0x4000)
        self._heap = 0x10000
        self.rx_bufs: dict[int, tuple[int, int]] = {}  # head -> (header gpa, data gpa)
        self.front, back = socket.socketpair()
        self.backend = vu.Backend(back, device)
        self.received: list[Packet] = []
        self.buf_alloc = 256 << 10
        self.fwd_cnt = 0

    def alloc(self, size: int) -> int:
        addr = self._heap
        self._heap += (size + 63) & ~63
        assert self._heap < MEM_SIZE
        return addr

    # -- front-end (QEMU's role) ---------------------------------------------------------------
    async def request(self, req: int, payload: bytes = b"", fds: tuple[int, ...] = (),
                      *, ack: bool = True) -> bytes:
        """Send one message; returns the reply payload (the REPLY_ACK u64 for messages without a reply)."""
        flags = vu.FLAG_VERSION | (vu.FLAG_NEED_REPLY if ack else 0)
        data = vu.encode_message(req, payload, flags)
        if fds:
            socket.send_fds(self.front, [data], list(fds))
        else:
            self.front.sendall(data)
        loop = asyncio.get_running_loop()
        head = b""
        while len(head) < vu.HEADER.size:
            chunk = await loop.sock_recv(self.front, vu.HEADER.size - len(head))
            assert chunk, "backend hung up"
            head += chunk
        r, f, size = vu.HEADER.unpack(head)
        assert r == req and f & vu.FLAG_REPLY
        body = b""
        while len(body) < size:
            body += await loop.sock_recv(self.front, size - len(body))
        return body

    async def start(self) -> FakeGuest:
        self.front.setblocking(False)
        self.backend.start()
        features = vu.U64.unpack(await self.request(vu.GET_FEATURES, ack=False))[0]
        assert features & vu.F_PROTOCOL_FEATURES
        proto = vu.U64.unpack(await self.request(vu.GET_PROTOCOL_FEATURES, ack=False))[0]
        assert proto & vu.PF_REPLY_ACK and proto & vu.PF_CONFIG
        # the first SET_PROTOCOL_FEATURES cannot be acked yet: sent without need_reply
        self.front.sendall(vu.encode_message(vu.SET_PROTOCOL_FEATURES, vu.U64.pack(proto)))
        assert await self.request(vu.SET_OWNER) == vu.U64.pack(0)
        await self.request(vu.SET_FEATURES, vu.U64.pack(vu.F_VERSION_1 | vu.F_PROTOCOL_FEATURES))
        table = vu.MEM_HEADER.pack(1, 0) + vu.MEM_REGION.pack(0, MEM_SIZE, UVA_BASE, 0)
        assert await self.request(vu.SET_MEM_TABLE, table, (self.fd,)) == vu.U64.pack(0)
        for i, ring in enumerate((self.rx, self.tx)):
            await self.request(vu.SET_VRING_NUM, vu.VRING_STATE.pack(i, QSIZE))
            await self.request(vu.SET_VRING_BASE, vu.VRING_STATE.pack(i, 0))
            await self.request(vu.SET_VRING_ADDR, vu.VRING_ADDR.pack(
                i, 0, UVA_BASE + ring.desc, UVA_BASE + ring.used, UVA_BASE + ring.avail, 0))
            await self.request(vu.SET_VRING_CALL, vu.U64.pack(i), (ring.call_fd,))
            await self.request(vu.SET_VRING_KICK, vu.U64.pack(i), (ring.kick_fd,))
            await self.request(vu.SET_VRING_ENABLE, vu.VRING_STATE.pack(i, 1))
        return self

    # -- driver (the guest's role) -------------------------------------------------------------
    def post_rx(self, n: int = 8) -> None:
        for _ in range(n):
            hdr, data = self.alloc(HDR.size), self.alloc(RX_BUF)
            head = self.rx.add([(hdr, HDR.size, True), (data, RX_BUF, True)])
            self.rx_bufs[head] = (hdr, data)
        self.rx.kick()

    def send(self, op: int, src_port: int, dst_port: int, data: bytes = b"", flags: int = 0,
             *, buf_alloc: int | None = None, fwd_cnt: int | None = None, src_cid: int | None = None) -> None:
        pkt = Packet(self.cid if src_cid is None else src_cid, HOST_CID, src_port, dst_port, op, flags,
                     self.buf_alloc if buf_alloc is None else buf_alloc,
                     self.fwd_cnt if fwd_cnt is None else fwd_cnt, data)
        raw = pkt.encode()
        self.tx.take_used()  # reclaim what the device consumed
        hdr = self.alloc(HDR.size)
        self.mem[hdr:hdr + HDR.size] = raw[:HDR.size]
        bufs = [(hdr, HDR.size, False)]
        if data:
            body = self.alloc(len(data))
            self.mem[body:body + len(data)] = data
            bufs.append((body, len(data), False))
        self.tx.add(bufs)
        self.tx.kick()

    def collect(self, *, repost: bool = True) -> list[Packet]:
        """Packets the device put into receive buffers since the last call (buffers posted again)."""
        got = []
        used = self.rx.take_used()
        for head, written in used:
            hdr, data = self.rx_bufs.pop(head)
            raw = self.mem[hdr:hdr + HDR.size] + self.mem[data:data + max(0, written - HDR.size)]
            got.append(Packet.decode(raw))
        if repost and used:
            self.post_rx(len(used))
        self.received += got
        return got

    def close(self) -> None:
        self.backend.close()
        self.front.close()
        self.mem.close()
        os.close(self.fd)
        for ring in (self.rx, self.tx):
            for fd in (ring.kick_fd, ring.call_fd):
                try:
                    os.close(fd)
                except OSError:
                    pass


async def until(cond, what: str = "condition", timeout: float = 5.0):  # type: ignore[no-untyped-def]
    """Run the loop until ``cond()`` is truthy; its value. Not a timing assertion: a bound on hanging."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        value = cond()
        if value:
            return value
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)
