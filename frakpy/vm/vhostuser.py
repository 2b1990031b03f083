"""The backend half of QEMU's vhost-user protocol, and split virtqueues in shared guest memory.

There is no maintained Python vhost-user library, so this module implements what a device
backend run by frakpy needs (stdlib only, so it can run as its own small process):

- the message protocol on the unix socket QEMU connects: a 12-byte header (request, flags,
  payload size) and its payload, file descriptors in SCM_RIGHTS ancillary data; feature and
  protocol-feature negotiation (CONFIG, REPLY_ACK), SET_OWNER/RESET_OWNER, SET_MEM_TABLE, the
  SET_VRING_* family, GET_VRING_BASE (which stops a ring), GET_CONFIG/SET_CONFIG, GET_QUEUE_NUM;
- guest memory: every region of SET_MEM_TABLE mmap'ed from its fd (read-only when QEMU opened
  the file read-only, such as the DAX root image), with guest-physical and QEMU-virtual address
  translation;
- split virtqueues (descriptor table, available and used rings, VIRTIO 1.x section 2.7): taking
  descriptor chains, returning them, signalling the call eventfd.

No packed rings, indirect descriptors, event index, dirty logging (so no migration), IOMMU,
in-band notifications or memory hotplug messages: the features are simply not offered. A device
(``frakpy.vm.vsockdev``) subclasses ``Device`` and gets ``on_kick`` / ``on_stop`` calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import mmap
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("frakpy.vhostuser")

# -- protocol numbers (QEMU docs/interop/vhost-user.rst) --------------------------------------------
GET_FEATURES = 1
SET_FEATURES = 2
SET_OWNER = 3
RESET_OWNER = 4
SET_MEM_TABLE = 5
SET_LOG_BASE = 6
SET_LOG_FD = 7
SET_VRING_NUM = 8
SET_VRING_ADDR = 9
SET_VRING_BASE = 10
GET_VRING_BASE = 11
SET_VRING_KICK = 12
SET_VRING_CALL = 13
SET_VRING_ERR = 14
GET_PROTOCOL_FEATURES = 15
SET_PROTOCOL_FEATURES = 16
GET_QUEUE_NUM = 17
SET_VRING_ENABLE = 18
GET_CONFIG = 24
SET_CONFIG = 25
RESET_DEVICE = 34

NAMES = {v: k for k, v in dict(globals()).items()
         if isinstance(v, int) and k.startswith(("GET_", "SET_", "RESET_"))}

FLAG_VERSION = 0x1
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8

F_VERSION_1 = 1 << 32  # virtio 1.x device
F_PROTOCOL_FEATURES = 1 << 30  # vhost-user: GET/SET_PROTOCOL_FEATURES exist; rings start disabled
PF_REPLY_ACK = 1 << 3
PF_CONFIG = 1 << 9

VRING_FD_INVALID = 1 << 8  # SET_VRING_KICK/CALL/ERR without an fd (polling mode: not supported)
MAX_REGIONS = 8

HEADER = struct.Struct("<III")
U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")
VRING_ADDR = struct.Struct("<IIQQQQ")
MEM_HEADER = struct.Struct("<II")
MEM_REGION = struct.Struct("<QQQQ")
CONFIG_HEADER = struct.Struct("<III")

# -- split virtqueue layout (VIRTIO 1.x 2.7) ----------------------------------------------------------
DESC = struct.Struct("<QIHH")  # addr, len, flags, next
USED_ELEM = struct.Struct("<II")  # id, len
U16 = struct.Struct("<H")
DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
AVAIL_F_NO_INTERRUPT = 1


class ProtocolError(Exception):
    """The front-end (or a guest) broke the protocol; the message names what."""


# -- guest memory ---------------------------------------------------------------------------------------
@dataclass
class Region:
    gpa: int  # guest-physical start
    size: int
    uva: int  # where QEMU has it mapped (ring addresses are given in these)
    offset: int  # of the region in the mapping (mmap_offset)
    map: mmap.mmap
    writable: bool


class GuestMemory:
    """The regions of the last SET_MEM_TABLE, mapped into this process."""

    def __init__(self) -> None:
        self.regions: list[Region] = []

    def set_table(self, table: list[tuple[int, int, int, int]], fds: list[int]) -> None:
        """Map (gpa, size, uva, mmap_offset) regions from their fds (closed here in every case)."""
        try:
            if len(fds) != len(table):
                raise ProtocolError(f"SET_MEM_TABLE: {len(table)} regions but {len(fds)} fds")
            regions = []
            for (gpa, size, uva, offset), fd in zip(table, fds, strict=True):
                writable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY
                prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
                try:
                    m = mmap.mmap(fd, offset + size, flags=mmap.MAP_SHARED, prot=prot)
                except OSError as exc:
                    raise ProtocolError(f"SET_MEM_TABLE: cannot map region at {gpa:#x} ({size} bytes): {exc}") from exc
                regions.append(Region(gpa, size, uva, offset, m, writable))
        finally:
            for fd in fds:
                os.close(fd)
        self.clear()
        self.regions = regions

    def clear(self) -> None:
        for r in self.regions:
            with contextlib.suppress(BufferError):
                r.map.close()
        self.regions = []

    def gpa(self, addr: int, length: int, *, write: bool = False) -> tuple[mmap.mmap, int]:
        """(mapping, offset) of ``length`` bytes at guest-physical ``addr``; ProtocolError if unmapped."""
        for r in self.regions:
            if r.gpa <= addr and addr + length <= r.gpa + r.size:
                if write and not r.writable:
                    raise ProtocolError(f"guest buffer {addr:#x}+{length} is in read-only memory")
                return r.map, r.offset + addr - r.gpa
        raise ProtocolError(f"guest buffer {addr:#x}+{length} is outside guest memory")

    def uva(self, addr: int, length: int) -> tuple[mmap.mmap, int]:
        """(mapping, offset) of ``length`` bytes at QEMU's virtual address ``addr``."""
        for r in self.regions:
            if r.uva <= addr and addr + length <= r.uva + r.size and r.writable:
                return r.map, r.offset + addr - r.uva
        raise ProtocolError(f"ring address {addr:#x}+{length} is not in writable guest memory")


# -- descriptor chains ----------------------------------------------------------------------------------
@dataclass
class Chain:
    """One available descriptor chain: the buffers the driver made readable and writable for us."""

    head: int
    readable: list[tuple[mmap.mmap, int, int]] = field(default_factory=list)  # (map, offset, length)
    writable: list[tuple[mmap.mmap, int, int]] = field(default_factory=list)

    @property
    def readable_len(self) -> int:
        return sum(n for _, _, n in self.readable)

    @property
    def writable_len(self) -> int:
        return sum(n for _, _, n in self.writable)

    def read(self, limit: int | None = None) -> bytes:
        parts = []
        left = self.readable_len if limit is None else limit
        for m, off, n in self.readable:
            if left <= 0:
                break
            take = min(n, left)
            parts.append(m[off:off + take])
            left -= take
        return b"".join(parts)

    def write(self, data: bytes) -> int:
        """Scatter ``data`` into the writable buffers; returns how much fitted."""
        done = 0
        for m, off, n in self.writable:
            if done >= len(data):
                break
            take = min(n, len(data) - done)
            m[off:off + take] = data[done:done + take]
            done += take
        return done


class Virtqueue:
    """A split virtqueue as the device sees it."""

    def __init__(self, index: int, mem: GuestMemory) -> None:
        self.index = index
        self.mem = mem
        self.num = 0
        self.addrs: tuple[int, int, int] | None = None  # desc, avail, used (QEMU virtual addresses)
        self.desc: tuple[mmap.mmap, int] | None = None
        self.avail: tuple[mmap.mmap, int] | None = None
        self.used: tuple[mmap.mmap, int] | None = None
        self.last_avail = 0
        self.used_idx = 0
        self.kick_fd: int | None = None
        self.call_fd: int | None = None
        self.err_fd: int | None = None
        self.enabled = False
        self.started = False  # kick fd received, not stopped by GET_VRING_BASE since

    @property
    def ready(self) -> bool:
        return self.started and self.enabled and self.desc is not None

    def map_rings(self) -> None:
        """Translate the ring addresses through the current memory table."""
        if self.addrs is None or not self.num:
            return
        desc, avail, used = self.addrs
        self.desc = self.mem.uva(desc, DESC.size * self.num)
        self.avail = self.mem.uva(avail, 4 + 2 * self.num)
        self.used = self.mem.uva(used, 4 + USED_ELEM.size * self.num)
        self.used_idx = self._u16(self.used, 2)

    @staticmethod
    def _u16(where: tuple[mmap.mmap, int], off: int) -> int:
        m, base = where
        return int(U16.unpack_from(m, base + off)[0])

    def has_available(self) -> bool:
        return self.ready and self.avail is not None and self._u16(self.avail, 2) != self.last_avail

    def pop(self) -> Chain | None:
        """The next available chain, or None; ProtocolError when the driver wrote a bad one."""
        if not self.has_available():
            return None
        assert self.avail is not None and self.desc is not None
        avail_idx = self._u16(self.avail, 2)
        if (avail_idx - self.last_avail) & 0xFFFF > self.num:
            raise ProtocolError(f"queue {self.index}: available index {avail_idx} runs {self.num}+ ahead")
        head = self._u16(self.avail, 4 + 2 * (self.last_avail % self.num))
        chain = Chain(head)
        i, seen = head, 0
        dm, dbase = self.desc
        while True:
            if i >= self.num or seen >= self.num:
                raise ProtocolError(f"queue {self.index}: descriptor chain from {head} is broken (index {i})")
            addr, length, flags, nxt = DESC.unpack_from(dm, dbase + DESC.size * i)
            if flags & DESC_F_INDIRECT:
                raise ProtocolError(f"queue {self.index}: indirect descriptor, a feature never offered")
            writable = bool(flags & DESC_F_WRITE)
            if not writable and chain.writable:
                raise ProtocolError(f"queue {self.index}: readable descriptor after a writable one")
            if length:
                m, off = self.mem.gpa(addr, length, write=writable)
                (chain.writable if writable else chain.readable).append((m, off, length))
            seen += 1
            if not flags & DESC_F_NEXT:
                break
            i = nxt
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        return chain

    def unpop(self) -> None:
        """Give back the chain just popped (it was not needed after all)."""
        self.last_avail = (self.last_avail - 1) & 0xFFFF

    def push(self, chain: Chain, written: int) -> None:
        """Return a chain to the driver, ``written`` bytes of it filled."""
        assert self.used is not None
        m, base = self.used
        USED_ELEM.pack_into(m, base + 4 + USED_ELEM.size * (self.used_idx % self.num), chain.head, written)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        U16.pack_into(m, base + 2, self.used_idx)  # after the element: x86 keeps stores in order

    def notify(self) -> None:
        """Signal the driver, unless it asked not to be interrupted."""
        if self.call_fd is None or self.avail is None:
            return
        if self._u16(self.avail, 0) & AVAIL_F_NO_INTERRUPT:
            return
        with contextlib.suppress(BlockingIOError):
            os.eventfd_write(self.call_fd, 1)

    def close_fds(self) -> None:
        for name in ("kick_fd", "call_fd", "err_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)


# -- the device interface -------------------------------------------------------------------------------
class Device:
    """What a vhost-user device implements; the backend owns memory and queues."""

    features = 0  # device-specific feature bits offered in addition to VERSION_1
    num_queues = 1

    def __init__(self) -> None:
        self.queues: list[Virtqueue] = []

    def config(self) -> bytes:
        """The device's configuration space (read by GET_CONFIG)."""
        return b""

    def on_kick(self, queue: Virtqueue) -> None:
        """The driver made buffers available on ``queue`` (or the ring was just started)."""

    def on_stop(self) -> None:
        """A ring was stopped or the device reset: whatever depends on the driver's state is gone."""


# -- the message loop -----------------------------------------------------------------------------------
class Backend:
    """Serves one vhost-user connection for ``device``; ``closed`` is set when QEMU hangs up."""

    def __init__(self, sock: socket.socket, device: Device) -> None:
        self.sock = sock
        self.device = device
        self.mem = GuestMemory()
        device.queues = [Virtqueue(i, self.mem) for i in range(device.num_queues)]
        self.queues = device.queues
        self.acked_features = 0
        self.protocol_features = 0
        self.closed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handlers: dict[int, Callable[[bytes, list[int]], bytes | None]] = {
            GET_FEATURES: self._get_features, SET_FEATURES: self._set_features,
            GET_PROTOCOL_FEATURES: self._get_protocol_features, SET_PROTOCOL_FEATURES: self._set_protocol_features,
            SET_OWNER: lambda p, f: None, RESET_OWNER: self._reset, RESET_DEVICE: self._reset,
            SET_MEM_TABLE: self._set_mem_table,
            SET_VRING_NUM: self._set_vring_num, SET_VRING_ADDR: self._set_vring_addr,
            SET_VRING_BASE: self._set_vring_base, GET_VRING_BASE: self._get_vring_base,
            SET_VRING_KICK: self._set_vring_kick, SET_VRING_CALL: self._set_vring_call,
            SET_VRING_ERR: self._set_vring_err, SET_VRING_ENABLE: self._set_vring_enable,
            GET_QUEUE_NUM: lambda p, f: U64.pack(self.device.num_queues),
            GET_CONFIG: self._get_config, SET_CONFIG: lambda p, f: None,
        }

    @property
    def offered_features(self) -> int:
        return F_VERSION_1 | F_PROTOCOL_FEATURES | self.device.features

    offered_protocol_features = PF_CONFIG | PF_REPLY_ACK

    # The socket stays blocking: QEMU writes each message whole and then waits for our answer,
    # so once it is readable the rest of the message is already there or about to be.
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.sock.setblocking(True)
        self.sock.settimeout(10.0)
        self._loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        if self._loop is not None and not self.closed.is_set():
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.sock.fileno())
            for q in self.queues:
                if q.kick_fd is not None:
                    with contextlib.suppress(Exception):
                        self._loop.remove_reader(q.kick_fd)
        self.device.on_stop()
        for q in self.queues:
            q.close_fds()
        self.mem.clear()
        self.sock.close()
        self.closed.set()

    def _readable(self) -> None:
        try:
            msg = read_message(self.sock)
            if msg is None:
                log.info("vhost-user front-end hung up")
                self.close()
                return
            self.handle(*msg)
        except (ProtocolError, OSError) as exc:
            log.error("vhost-user connection failed: %s", exc)
            self.close()

    def handle(self, request: int, flags: int, payload: bytes, fds: list[int]) -> None:
        """Act on one message and send its reply (if it has one)."""
        handler = self._handlers.get(request)
        name = NAMES.get(request, str(request))
        if handler is None:
            for fd in fds:
                os.close(fd)
            if flags & FLAG_NEED_REPLY:
                log.warning("vhost-user request %s is not supported; answering failure", name)
                self._send(request, U64.pack(1))
                return
            raise ProtocolError(f"vhost-user request {name} is not supported")
        log.debug("vhost-user %s (%d bytes, %d fds)", name, len(payload), len(fds))
        ok = True
        try:
            reply = handler(payload, fds)
        except ProtocolError as exc:
            if not (flags & FLAG_NEED_REPLY and self.protocol_features & PF_REPLY_ACK):
                raise
            log.error("vhost-user %s: %s", name, exc)
            reply, ok = None, False
        if reply is not None:
            self._send(request, reply)
        elif flags & FLAG_NEED_REPLY and self.protocol_features & PF_REPLY_ACK:
            self._send(request, U64.pack(0 if ok else 1))

    def _send(self, request: int, payload: bytes) -> None:
        self.sock.sendall(HEADER.pack(request, FLAG_VERSION | FLAG_REPLY, len(payload)) + payload)

    # -- handlers ---------------------------------------------------------------------------------------
    def _get_features(self, p: bytes, fds: list[int]) -> bytes:
        return U64.pack(self.offered_features)

    def _set_features(self, p: bytes, fds: list[int]) -> None:
        (features,) = _unpack(U64, p, "SET_FEATURES")
        unknown = features & ~self.offered_features & ~(1 << 26)  # 26: VHOST_F_LOG_ALL, never used here
        if unknown:
            raise ProtocolError(f"SET_FEATURES acks features never offered: {unknown:#x}")
        self.acked_features = features

    def _get_protocol_features(self, p: bytes, fds: list[int]) -> bytes:
        return U64.pack(self.offered_protocol_features)

    def _set_protocol_features(self, p: bytes, fds: list[int]) -> None:
        (features,) = _unpack(U64, p, "SET_PROTOCOL_FEATURES")
        self.protocol_features = features & self.offered_protocol_features

    def _reset(self, p: bytes, fds: list[int]) -> None:
        for q in self.queues:
            self._stop_queue(q)
            q.close_fds()
            q.enabled = False
        self.acked_features = 0
        self.device.on_stop()

    def _set_mem_table(self, p: bytes, fds: list[int]) -> None:
        try:
            n, _ = _unpack(MEM_HEADER, p[:MEM_HEADER.size], "SET_MEM_TABLE")
            if not 0 < n <= MAX_REGIONS or len(p) < MEM_HEADER.size + n * MEM_REGION.size:
                raise ProtocolError(f"SET_MEM_TABLE with {n} regions in {len(p)} bytes")
            table = [MEM_REGION.unpack_from(p, MEM_HEADER.size + i * MEM_REGION.size) for i in range(n)]
        except ProtocolError:
            for fd in fds:
                os.close(fd)
            raise
        self.mem.set_table(table, fds)  # the old mappings stay until the new ones exist
        for q in self.queues:
            q.desc = q.avail = q.used = None  # they pointed into the old mappings
            q.map_rings()
        log.info("guest memory: %s", ", ".join(f"{r.gpa:#x}+{r.size >> 20}M{'' if r.writable else ' ro'}"
                                                for r in self.mem.regions))

    def _queue(self, index: int) -> Virtqueue:
        if not 0 <= index < len(self.queues):
            raise ProtocolError(f"queue {index} does not exist (the device has {len(self.queues)})")
        return self.queues[index]

    def _set_vring_num(self, p: bytes, fds: list[int]) -> None:
        index, num = _unpack(VRING_STATE, p, "SET_VRING_NUM")
        if not num or num > 32768 or num & (num - 1):
            raise ProtocolError(f"SET_VRING_NUM: queue size {num} is not a power of 2 up to 32768")
        self._queue(index).num = num

    def _set_vring_addr(self, p: bytes, fds: list[int]) -> None:
        index, _flags, desc, used, avail, _log = _unpack(VRING_ADDR, p, "SET_VRING_ADDR")
        q = self._queue(index)
        q.addrs = (desc, avail, used)
        q.map_rings()

    def _set_vring_base(self, p: bytes, fds: list[int]) -> None:
        index, base = _unpack(VRING_STATE, p, "SET_VRING_BASE")
        self._queue(index).last_avail = base & 0xFFFF

    def _get_vring_base(self, p: bytes, fds: list[int]) -> bytes:
        index, _ = _unpack(VRING_STATE, p, "GET_VRING_BASE")
        q = self._queue(index)
        self._stop_queue(q)
        self.device.on_stop()
        return VRING_STATE.pack(index, q.last_avail)

    def _stop_queue(self, q: Virtqueue) -> None:
        if q.kick_fd is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(q.kick_fd)
        q.started = False

    def _file(self, p: bytes, fds: list[int], what: str) -> tuple[Virtqueue, int | None]:
        (value,) = _unpack(U64, p, what)
        q = self._queue(value & 0xFF)
        if value & VRING_FD_INVALID:
            for fd in fds:
                os.close(fd)
            return q, None
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise ProtocolError(f"{what}: expected one fd, got {len(fds)}")
        return q, fds[0]

    def _set_vring_kick(self, p: bytes, fds: list[int]) -> None:
        q, fd = self._file(p, fds, "SET_VRING_KICK")
        self._stop_queue(q)
        if q.kick_fd is not None:
            os.close(q.kick_fd)
        q.kick_fd = fd
        if fd is None:
            raise ProtocolError(f"SET_VRING_KICK: queue {q.index} without an eventfd (polling is not supported)")
        os.set_blocking(fd, False)
        q.started = True
        if not self.acked_features & F_PROTOCOL_FEATURES:
            q.enabled = True  # without protocol features a ring is enabled once started
        assert self._loop is not None
        self._loop.add_reader(fd, self._kicked, q)
        self._kicked(q)  # buffers made available before the kick fd existed

    def _kicked(self, q: Virtqueue) -> None:
        if q.kick_fd is not None:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(q.kick_fd)
        if q.ready:
            try:
                self.device.on_kick(q)
            except ProtocolError as exc:
                log.error("queue %d stopped: %s", q.index, exc)
                self._stop_queue(q)

    def _set_vring_call(self, p: bytes, fds: list[int]) -> None:
        q, fd = self._file(p, fds, "SET_VRING_CALL")
        if q.call_fd is not None:
            os.close(q.call_fd)
        q.call_fd = fd

    def _set_vring_err(self, p: bytes, fds: list[int]) -> None:
        q, fd = self._file(p, fds, "SET_VRING_ERR")
        if q.err_fd is not None:
            os.close(q.err_fd)
        q.err_fd = fd

    def _set_vring_enable(self, p: bytes, fds: list[int]) -> None:
        index, enable = _unpack(VRING_STATE, p, "SET_VRING_ENABLE")
        q = self._queue(index)
        q.enabled = bool(enable)
        if q.enabled:
            self._kicked(q)

    def _get_config(self, p: bytes, fds: list[int]) -> bytes:
        offset, size, flags = _unpack(CONFIG_HEADER, p[:CONFIG_HEADER.size], "GET_CONFIG")
        space = self.device.config()
        if offset + size > len(space):
            raise ProtocolError(f"GET_CONFIG of {size} bytes at {offset}: the config space has {len(space)}")
        return CONFIG_HEADER.pack(offset, size, flags) + space[offset:offset + size]


def _unpack(s: struct.Struct, payload: bytes, what: str) -> tuple[int, ...]:
    if len(payload) < s.size:
        raise ProtocolError(f"{what}: payload of {len(payload)} bytes, expected {s.size}")
    return s.unpack_from(payload)


def read_message(sock: socket.socket) -> tuple[int, int, bytes, list[int]] | None:
    """One message (request, flags, payload, fds) from a blocking socket; None at EOF."""
    head, fds, _flags, _addr = socket.recv_fds(sock, HEADER.size, MAX_REGIONS, socket.MSG_WAITALL)
    if not head:
        for fd in fds:
            os.close(fd)
        return None
    try:
        if len(head) < HEADER.size:
            raise ProtocolError(f"vhost-user header cut short ({len(head)} bytes)")
        request, flags, size = HEADER.unpack(head)
        if flags & 0x3 != FLAG_VERSION:
            raise ProtocolError(f"vhost-user message version {flags & 0x3}, expected 1")
        if size > 4096:
            raise ProtocolError(f"vhost-user payload of {size} bytes is too large")
        payload = b""
        while len(payload) < size:
            chunk = sock.recv(size - len(payload))
            if not chunk:
                raise ProtocolError("vhost-user message cut short")
            payload += chunk
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return request, flags, payload, list(fds)


def encode_message(request: int, payload: bytes = b"", flags: int = FLAG_VERSION) -> bytes:
    """A front-end's message (tests and probes)."""
    return HEADER.pack(request, flags, len(payload)) + payload
