"""A virtio-vsock device in userspace: the vhost-user-vsock backend of one pod VM.

For hosts without ``/dev/vhost-vsock``. QEMU runs ``vhost-user-vsock-{pci,device}`` and hands the
rx and tx virtqueues to this process over vhost-user (``frakpy.vm.vhostuser``; there is no
maintained Python vhost-user library); the event queue stays in QEMU. The guest sees an ordinary
virtio socket device with CID ``--guest-cid``; the host side is "hybrid vsock", as Firecracker and
Cloud Hypervisor do it: a unix socket (``--listen-fd``, bound by frakpyd in the sandbox's run dir)
where a client writes ``CONNECT <guest port>\\n`` and, once the guest accepted, reads
``OK <host port>\\n``; after that the unix connection is the stream. Refusals and bad requests are
answered ``ERR <errno name> <reason>\\n`` and closed (ECONNREFUSED: nothing listens on that
guest port yet, worth retrying; EINVAL: a bad request; ETIMEDOUT: no request in time). A guest
connecting to host port P reaches the unix socket ``<socket path>_P`` when one exists (refused
otherwise).

What is implemented of the virtio-vsock stream protocol (VIRTIO 1.2, 5.10): the 44-byte header,
REQUEST/RESPONSE/RST/SHUTDOWN/RW/CREDIT_UPDATE/CREDIT_REQUEST, credit both ways (the guest is never
sent more than its ``buf_alloc - (tx_cnt - fwd_cnt)``; our own ``buf_alloc`` is re-advertised as
data drains to the host client), half-close in either direction, RST on errors, a clean close
(SHUTDOWN both ways answered by RST). SEQPACKET is not offered.

One process per VM, started by frakpyd before QEMU in its own session (it survives a daemon
restart like QEMU does); it exits when QEMU hangs up the vhost-user socket. Run as
``python -m frakpy.vm.vsockdev --vhost-fd N --listen-fd M --guest-cid C --socket PATH``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import os
import signal
import socket
import struct
import sys
from dataclasses import dataclass

from frakpy.vm.vhostuser import Backend, Device, ProtocolError, Virtqueue

log = logging.getLogger("frakpy.vsockdev")

HDR = struct.Struct("<QQIIIHHIII")  # src_cid dst_cid src_port dst_port len type op flags buf_alloc fwd_cnt
HOST_CID = 2
TYPE_STREAM = 1
OP_REQUEST, OP_RESPONSE, OP_RST, OP_SHUTDOWN, OP_RW, OP_CREDIT_UPDATE, OP_CREDIT_REQUEST = range(1, 8)
OP_NAMES = {1: "REQUEST", 2: "RESPONSE", 3: "RST", 4: "SHUTDOWN", 5: "RW", 6: "CREDIT_UPDATE", 7: "CREDIT_REQUEST"}
SHUT_RCV, SHUT_SEND = 1, 2
RX, TX = 0, 1

BUF_ALLOC = 256 << 10  # what each connection may have in flight towards the host client
MAX_PAYLOAD = 64 << 10
LOCAL_PORT_BASE = 1 << 30  # host ports of host-initiated connections
HANDSHAKE_TIMEOUT = 10.0
MAX_LINE = 64
U32 = 0xFFFFFFFF


@dataclass
class Packet:
    src_cid: int
    dst_cid: int
    src_port: int
    dst_port: int
    op: int
    flags: int = 0
    buf_alloc: int = 0
    fwd_cnt: int = 0
    data: bytes = b""
    type: int = TYPE_STREAM
    conn: Conn | None = None  # control packets: credit fields are filled in when sent

    def encode(self) -> bytes:
        return HDR.pack(self.src_cid, self.dst_cid, self.src_port, self.dst_port, len(self.data), self.type,
                        self.op, self.flags, self.buf_alloc, self.fwd_cnt) + self.data

    @classmethod
    def decode(cls, raw: bytes) -> Packet:
        if len(raw) < HDR.size:
            raise ProtocolError(f"vsock packet of {len(raw)} bytes is shorter than its header")
        src_cid, dst_cid, src_port, dst_port, length, type_, op, flags, buf_alloc, fwd_cnt = HDR.unpack_from(raw)
        if length > len(raw) - HDR.size:
            raise ProtocolError(f"vsock packet says {length} bytes of data but carries {len(raw) - HDR.size}")
        return cls(src_cid, dst_cid, src_port, dst_port, op, flags, buf_alloc, fwd_cnt,
                   bytes(raw[HDR.size:HDR.size + length]), type_)


class Conn:
    """One stream between a host unix connection and a guest port."""

    def __init__(self, local_port: int, peer_port: int, sock: socket.socket, *, established: bool) -> None:
        self.local_port = local_port  # the host side's vsock port
        self.peer_port = peer_port  # the guest's
        self.sock = sock
        self.state = "established" if established else "connecting"
        self.request_sent = False
        # towards the guest
        self.peer_buf_alloc = 0
        self.peer_fwd_cnt = 0
        self.tx_cnt = 0
        self.credit_requested = False
        self.host_eof = False  # the host client sent EOF; SHUTDOWN(SEND) queued
        self.pending_in = b""  # host bytes read before the guest accepted
        self.readable = False  # the host socket may have data (reader fired, not drained yet)
        # towards the host
        self.rx_cnt = 0
        self.fwd_cnt = 0
        self.fwd_reported = 0
        self.out = bytearray()
        self.out_extra = 0  # leading bytes of out that are ours (the OK line), not the guest's
        self.guest_shut = 0
        self.reading = False
        self.writing = False
        self.closed = False

    @property
    def key(self) -> tuple[int, int]:
        return self.local_port, self.peer_port

    def peer_credit(self) -> int:
        return max(0, self.peer_buf_alloc - ((self.tx_cnt - self.peer_fwd_cnt) & U32))


class VsockDevice(Device):
    """The device model: packets on the rx/tx queues ⇄ host unix connections."""

    num_queues = 2  # rx, tx: QEMU keeps the event queue

    def __init__(self, guest_cid: int, uds_path: str = "") -> None:
        super().__init__()
        if guest_cid < 3 or guest_cid > U32:
            raise ValueError(f"guest CID {guest_cid}: guest CIDs are 3 to 2^32-1")
        self.guest_cid = guest_cid
        self.uds_path = uds_path
        self.conns: dict[tuple[int, int], Conn] = {}
        self.control: collections.deque[Packet] = collections.deque()
        self.draining: set[Conn] = set()
        self._next_port = LOCAL_PORT_BASE
        self._rr = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats = collections.Counter[str]()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def config(self) -> bytes:
        return struct.pack("<Q", self.guest_cid)

    # -- vhost-user callbacks -------------------------------------------------------------------
    def on_kick(self, queue: Virtqueue) -> None:
        if queue.index == TX:
            self._process_tx(queue)
        self._pump_rx()

    def on_stop(self) -> None:
        """The driver's rings went away (reset, shutdown): every connection is over."""
        for c in list(self.conns.values()) + list(self.draining):
            self._close_host(c)
        self.conns.clear()
        self.draining.clear()
        self.control.clear()

    # -- host-initiated connections -------------------------------------------------------------
    def connect(self, sock: socket.socket, port: int, early: bytes = b"") -> Conn:
        """Start a connection from host client ``sock`` to guest ``port``; OK/ERR is written later."""
        local = self._alloc_port(port)
        sock.setblocking(False)
        c = Conn(local, port, sock, established=False)
        c.pending_in = early
        self.conns[c.key] = c
        self._queue(c, OP_REQUEST)
        self._pump_rx()
        return c

    def _alloc_port(self, peer_port: int) -> int:
        for _ in range(1 << 16):
            port = self._next_port
            self._next_port = LOCAL_PORT_BASE if self._next_port >= U32 else self._next_port + 1
            if (port, peer_port) not in self.conns:
                return port
        raise RuntimeError("no free host vsock port")

    # -- guest → host ---------------------------------------------------------------------------
    def _process_tx(self, q: Virtqueue) -> None:
        done = False
        while True:
            chain = q.pop()
            if chain is None:
                break
            raw = chain.read()
            q.push(chain, 0)
            done = True
            try:
                pkt = Packet.decode(raw)
            except ProtocolError as exc:
                log.warning("dropping a malformed packet from the guest: %s", exc)
                self.stats["malformed"] += 1
                continue
            self._handle(pkt)
        if done:
            q.notify()

    def _handle(self, pkt: Packet) -> None:
        self.stats[OP_NAMES.get(pkt.op, "unknown")] += 1
        if pkt.src_cid != self.guest_cid or pkt.dst_cid != HOST_CID:
            log.warning("dropping a packet from CID %d to CID %d", pkt.src_cid, pkt.dst_cid)
            return
        if pkt.type != TYPE_STREAM:
            if pkt.op != OP_RST:
                self._reply_rst(pkt)
            return
        c = self.conns.get((pkt.dst_port, pkt.src_port))
        if c is None:
            if pkt.op == OP_REQUEST:
                self._accept_from_guest(pkt)
            elif pkt.op != OP_RST:
                self._reply_rst(pkt)
            return
        grew = pkt.buf_alloc > c.peer_buf_alloc or pkt.fwd_cnt != c.peer_fwd_cnt
        c.peer_buf_alloc, c.peer_fwd_cnt = pkt.buf_alloc, pkt.fwd_cnt
        if grew:
            c.credit_requested = False
        if pkt.op == OP_RESPONSE:
            if c.state != "connecting":
                self._reset(c, "unexpected RESPONSE")
                return
            c.state = "established"
            ok = f"OK {c.local_port}\n".encode()
            c.out[:0] = ok
            c.out_extra = len(ok)
            if c.pending_in:
                c.readable = True
            self._flush(c)
        elif pkt.op == OP_RST:
            if c.state == "connecting":
                self._refuse(c, f"ECONNREFUSED the guest refused the connection to port {c.peer_port}")
            else:
                self._drop(c)
        elif pkt.op == OP_SHUTDOWN:
            c.guest_shut |= pkt.flags & (SHUT_RCV | SHUT_SEND)
            if c.guest_shut == SHUT_RCV | SHUT_SEND:
                self._finish(c)
            else:
                self._flush(c)
        elif pkt.op == OP_RW:
            if c.state != "established" or c.guest_shut & SHUT_SEND:
                self._reset(c, "data on a connection that is not open")
                return
            c.rx_cnt = (c.rx_cnt + len(pkt.data)) & U32
            if (c.rx_cnt - c.fwd_cnt) & U32 > BUF_ALLOC:
                self._reset(c, f"the guest sent beyond our buffer of {BUF_ALLOC} bytes")
                return
            c.out += pkt.data
            self._flush(c)
        elif pkt.op == OP_CREDIT_REQUEST:
            self._queue(c, OP_CREDIT_UPDATE)
        elif pkt.op == OP_CREDIT_UPDATE:
            pass  # the credit fields, read above
        else:
            self._reset(c, f"unexpected op {pkt.op}")

    def _accept_from_guest(self, pkt: Packet) -> None:
        """A guest connection to host port P: to the unix socket <path>_P, if someone listens there."""
        path = f"{self.uds_path}_{pkt.dst_port}" if self.uds_path else ""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if not path:
                raise FileNotFoundError("no host socket path")
            sock.setblocking(False)
            sock.connect(path)
        except OSError as exc:
            sock.close()
            log.debug("guest connection to host port %d refused: %s", pkt.dst_port, exc)
            self._reply_rst(pkt)
            return
        c = Conn(pkt.dst_port, pkt.src_port, sock, established=True)
        c.peer_buf_alloc, c.peer_fwd_cnt = pkt.buf_alloc, pkt.fwd_cnt
        self.conns[c.key] = c
        self._queue(c, OP_RESPONSE)

    def _flush(self, c: Conn) -> None:
        """Write what the guest sent to the host client, as far as it takes it."""
        while c.out and not c.closed:
            try:
                n = c.sock.send(c.out)
            except BlockingIOError:
                break
            except OSError as exc:
                log.debug("host side of port %d is gone: %s", c.peer_port, exc)
                if self.conns.get(c.key) is c:
                    self._reset(c, "")
                else:
                    self._close_host(c)
                return
            del c.out[:n]
            ours = min(n, c.out_extra)
            c.out_extra -= ours
            c.fwd_cnt = (c.fwd_cnt + n - ours) & U32
        if c.closed:
            return
        self._want_write(c, bool(c.out))
        if (c.fwd_cnt - c.fwd_reported) & U32 >= BUF_ALLOC // 4 and self.conns.get(c.key) is c:
            self._queue(c, OP_CREDIT_UPDATE)
            self._pump_rx()
        if not c.out and c.guest_shut & SHUT_SEND:
            with contextlib.suppress(OSError):
                c.sock.shutdown(socket.SHUT_WR)
            if c in self.draining:
                self.draining.discard(c)
                self._close_host(c)

    def _finish(self, c: Conn) -> None:
        """The guest shut both directions: answer with RST, deliver what is left, then close."""
        self.conns.pop(c.key, None)
        self._queue(c, OP_RST, detach=True)
        if c.out:
            self.draining.add(c)
            self._stop_reading(c)
            self._flush(c)
        else:
            self._close_host(c)
        self._pump_rx()

    # -- host → guest ---------------------------------------------------------------------------
    def _queue(self, c: Conn, op: int, flags: int = 0, *, detach: bool = False) -> None:
        if op == OP_CREDIT_UPDATE and any(p.conn is c and p.op == op for p in self.control):
            return
        if op == OP_REQUEST:
            c.request_sent = True
        self.control.append(Packet(HOST_CID, self.guest_cid, c.local_port, c.peer_port, op, flags,
                                   conn=None if detach else c))

    def _reply_rst(self, pkt: Packet) -> None:
        self.control.append(Packet(HOST_CID, self.guest_cid, pkt.dst_port, pkt.src_port, OP_RST, type=pkt.type))
        self._pump_rx()

    def _pump_rx(self) -> None:
        """Fill the guest's receive buffers: control packets first, then data the peers have credit for."""
        rx = self.queues[RX] if self.queues else None
        if rx is None or not rx.ready:
            self._update_readers()
            return
        sent = False
        while self.control or self._any_sender():
            chain = rx.pop()
            if chain is None:
                break
            room = min(chain.writable_len - HDR.size, MAX_PAYLOAD)
            if room < 0:
                raise ProtocolError(f"receive buffer of {chain.writable_len} bytes cannot hold a header")
            pkt = self.control.popleft() if self.control else self._data_packet(room)
            if pkt is None:
                rx.unpop()
                break
            self._stamp(pkt)
            rx.push(chain, chain.write(pkt.encode()))
            sent = True
        if sent:
            rx.notify()
        self._update_readers()

    def _stamp(self, pkt: Packet) -> None:
        c = pkt.conn
        pkt.buf_alloc = BUF_ALLOC
        if c is not None:
            pkt.fwd_cnt = c.fwd_cnt
            c.fwd_reported = c.fwd_cnt

    def _senders(self) -> list[Conn]:
        return [c for c in self.conns.values()
                if c.state == "established" and not c.host_eof and (c.readable or c.pending_in)
                and not c.guest_shut & SHUT_RCV]

    def _any_sender(self) -> bool:
        """Someone has data the guest has room for, or needs to ask the guest for credit."""
        return any(c.peer_credit() > 0 or not c.credit_requested for c in self._senders())

    def _data_packet(self, room: int) -> Packet | None:
        senders = self._senders()
        if not senders:
            return None
        self._rr = (self._rr + 1) % len(senders)
        for c in senders[self._rr:] + senders[:self._rr]:
            credit = c.peer_credit()
            if credit <= 0:
                if not c.credit_requested:
                    c.credit_requested = True
                    return self._packet(c, OP_CREDIT_REQUEST)
                continue
            n = min(room, credit)
            if c.pending_in:
                data, c.pending_in = c.pending_in[:n], c.pending_in[n:]
            else:
                try:
                    data = c.sock.recv(n)
                except BlockingIOError:
                    c.readable = False
                    continue
                except OSError:
                    data = b""
            if not data:
                c.host_eof = True
                c.readable = False
                return self._packet(c, OP_SHUTDOWN, SHUT_SEND)
            c.tx_cnt = (c.tx_cnt + len(data)) & U32
            pkt = self._packet(c, OP_RW)
            pkt.data = data
            return pkt
        return None

    def _packet(self, c: Conn, op: int, flags: int = 0) -> Packet:
        return Packet(HOST_CID, self.guest_cid, c.local_port, c.peer_port, op, flags, conn=c)

    # -- socket readiness -----------------------------------------------------------------------
    def _update_readers(self) -> None:
        for c in self.conns.values():
            if c.state == "connecting":
                want = not c.pending_in  # only to notice the client giving up
            else:
                want = not c.host_eof and not c.readable and not c.pending_in and not c.guest_shut & SHUT_RCV
            if want and not c.reading:
                self.loop.add_reader(c.sock.fileno(), self._on_readable, c)
                c.reading = True
            elif not want and c.reading:
                self._stop_reading(c)

    def _stop_reading(self, c: Conn) -> None:
        if c.reading:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(c.sock.fileno())
            c.reading = False

    def _on_readable(self, c: Conn) -> None:
        self._stop_reading(c)
        if c.state == "connecting":
            try:
                peek = c.sock.recv(MAX_LINE, socket.MSG_PEEK)
            except BlockingIOError:
                return
            except OSError:
                peek = b""
            if not peek:  # the client gave up waiting
                self._abandon(c)
                return
            c.pending_in = c.sock.recv(MAX_PAYLOAD)
            return
        c.readable = True
        self._pump_rx()

    def _want_write(self, c: Conn, want: bool) -> None:
        if want and not c.writing:
            self.loop.add_writer(c.sock.fileno(), self._flush, c)
            c.writing = True
        elif not want and c.writing:
            with contextlib.suppress(Exception):
                self.loop.remove_writer(c.sock.fileno())
            c.writing = False

    # -- endings --------------------------------------------------------------------------------
    def _abandon(self, c: Conn) -> None:
        """A connecting client left: withdraw the REQUEST, or reset it if the guest already has it."""
        queued = [p for p in self.control if p.conn is c and p.op == OP_REQUEST]
        for p in queued:
            self.control.remove(p)
        self.conns.pop(c.key, None)
        if not queued:
            self._queue(c, OP_RST, detach=True)
        self._close_host(c)
        self._pump_rx()

    def _refuse(self, c: Conn, why: str) -> None:
        self.conns.pop(c.key, None)
        with contextlib.suppress(OSError):
            c.sock.send(f"ERR {why}\n".encode())
        self._close_host(c)

    def _reset(self, c: Conn, why: str) -> None:
        if why:
            log.warning("resetting the connection to guest port %d: %s", c.peer_port, why)
        self.conns.pop(c.key, None)
        self._queue(c, OP_RST, detach=True)
        self._close_host(c)
        self._pump_rx()

    def _drop(self, c: Conn) -> None:
        """The guest reset the connection: the host client gets what arrived, then the end."""
        self.conns.pop(c.key, None)
        if c.out:
            c.guest_shut = SHUT_RCV | SHUT_SEND
            self.draining.add(c)
            self._stop_reading(c)
            self._flush(c)
        else:
            self._close_host(c)

    def _close_host(self, c: Conn) -> None:
        if c.closed:
            return
        c.closed = True
        self._stop_reading(c)
        self._want_write(c, False)
        self.control = collections.deque(p for p in self.control if p.conn is not c)
        self.draining.discard(c)
        c.sock.close()


# -- the host side: CONNECT <port> ----------------------------------------------------------------
def parse_connect(line: bytes) -> int:
    """The port of a ``CONNECT <port>`` line; ValueError naming the problem."""
    words = line.decode("ascii", "replace").split()
    if len(words) != 2 or words[0] != "CONNECT":
        raise ValueError(f"expected 'CONNECT <port>', got {line[:MAX_LINE]!r}")
    try:
        port = int(words[1], 10)
    except ValueError:
        raise ValueError(f"port {words[1]!r} is not a number") from None
    if not 0 < port <= U32 - 1:
        raise ValueError(f"port {port} is outside 1..{U32 - 1}")
    return port


async def _read_line(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\n" not in buf:
        if len(buf) > MAX_LINE:
            raise ValueError("request line too long")
        chunk = await loop.sock_recv(sock, MAX_LINE)
        if not chunk:
            raise ValueError("the client closed before its request")
        buf += chunk
    line, _, rest = buf.partition(b"\n")
    if len(line) > MAX_LINE:
        raise ValueError("request line too long")
    return line, rest


async def handshake(device: VsockDevice, sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    try:
        line, rest = await asyncio.wait_for(_read_line(loop, sock), HANDSHAKE_TIMEOUT)
        port = parse_connect(line)
    except TimeoutError:
        _answer_error(sock, f"ETIMEDOUT no CONNECT line within {HANDSHAKE_TIMEOUT:g}s")
        return
    except (ValueError, OSError) as exc:
        _answer_error(sock, f"EINVAL {exc}")
        return
    device.connect(sock, port, rest)


def _answer_error(sock: socket.socket, line: str) -> None:
    with contextlib.suppress(OSError):
        sock.send(f"ERR {line}\n".encode())
    sock.close()


async def serve_host(device: VsockDevice, listener: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    listener.setblocking(False)
    tasks: set[asyncio.Task[None]] = set()
    while True:
        sock, _ = await loop.sock_accept(listener)
        t = asyncio.ensure_future(handshake(device, sock))
        tasks.add(t)
        t.add_done_callback(tasks.discard)


# -- the process ----------------------------------------------------------------------------------
async def run(vhost: socket.socket, listener: socket.socket, guest_cid: int, path: str) -> None:
    device = VsockDevice(guest_cid, path)
    backend = Backend(vhost, device)
    backend.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    host = asyncio.ensure_future(serve_host(device, listener))
    waits = {asyncio.ensure_future(backend.closed.wait()), asyncio.ensure_future(stop.wait())}
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for w in waits:
        w.cancel()
    host.cancel()
    with contextlib.suppress(BaseException):
        await host
    if not backend.closed.is_set():
        backend.close()
    listener.close()
    log.info("vsock backend for CID %d exits (%s)", guest_cid, dict(device.stats))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m frakpy.vm.vsockdev", description=__doc__.split("\n\n")[0])
    ap.add_argument("--vhost-fd", type=int, required=True, help="connected vhost-user socket (QEMU's the other end)")
    ap.add_argument("--listen-fd", type=int, required=True, help="listening unix socket for CONNECT clients")
    ap.add_argument("--guest-cid", type=int, default=3)
    ap.add_argument("--socket", default="", help="path of the listening socket (removed at exit; <path>_P for "
                                                 "guest connections to host port P)")
    ap.add_argument("--name", default="", help="a label for ps (the sandbox)")
    ap.add_argument("--debug", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s vsockdev %(levelname)s %(message)s")
    vhost = socket.socket(fileno=args.vhost_fd)
    listener = socket.socket(fileno=args.listen_fd)
    try:
        asyncio.run(run(vhost, listener, args.guest_cid, args.socket))
    finally:
        if args.socket:
            with contextlib.suppress(OSError):
                os.unlink(args.socket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
