"""Serving ttrpc on a virtio-serial port, including host disconnects and reconnects.

How the Linux virtio_console driver behaves on the guest side of a port whose host end is a
QEMU chardev socket:

* the port can be open only once, so we open it once and keep the fd for the agent's life;
* while no host client is connected, read() returns 0 (only once any buffered data is drained)
  and poll() reports POLLHUP|POLLIN -- an epoll registration would spin, so the fd is *not*
  registered with the event loop while the host is away;
* when the host connects the driver sends SIGIO to the fd's owner if O_ASYNC is set.

So one ``PortListener`` loops: wait for the host (O_ASYNC + SIGIO, plus a slow back-off probe as a
fallback, only while disconnected), then serve one ttrpc session on the fd through a minimal
asyncio transport until read() returns 0 again. A fresh session starts with a fresh frame
decoder, and the old session's pending replies are dropped; everything else keeps running.
While connected nothing wakes the agent except traffic.
"""

import asyncio
import fcntl
import logging
import os
import signal

log = logging.getLogger("frakpy_guest.vport")

SYSFS_PORTS = "/sys/class/virtio-ports"
READ_SIZE = 1 << 16
HIGH_WATER = 1 << 18
LOW_WATER = 1 << 16


def find_port(name: str = "agent", sysfs: str = SYSFS_PORTS) -> str | None:
    """``/dev/vportNpM`` of the virtio-serial port called ``name``, or None."""
    try:
        entries = sorted(os.listdir(sysfs))
    except OSError:
        return None
    for entry in entries:
        try:
            with open(os.path.join(sysfs, entry, "name")) as f:
                if f.read().strip() == name:
                    return os.path.join("/dev", entry)
        except OSError:
            continue
    return None


class PortTransport(asyncio.Transport):
    """Non-blocking reads/writes on a character-device fd it does not own (never closes it)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, protocol: asyncio.Protocol) -> None:
        super().__init__(extra={"fd": fd})
        self._loop = loop
        self._fd = fd
        self._protocol = protocol
        self._buf = bytearray()
        self._closing = False
        self._reading = False
        self._read_paused = False
        self._write_paused = False
        self.closed: asyncio.Future[None] = loop.create_future()
        protocol.connection_made(self)
        self._add_reader()

    def _add_reader(self) -> None:
        if not self._closing and not self._read_paused and not self._reading:
            self._loop.add_reader(self._fd, self._read_ready)
            self._reading = True

    def _remove_reader(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def _read_ready(self) -> None:
        try:
            data = os.read(self._fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._close(exc)
            return
        if not data:
            log.info("host disconnected from the agent port")
            self._remove_reader()
            self._protocol.eof_received()
            self._close(None)
            return
        self._protocol.data_received(data)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        if not self._buf:
            try:
                n = os.write(self._fd, data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                self._close(exc)
                return
            if n == len(data):
                return
            data = memoryview(data)[n:]
            self._loop.add_writer(self._fd, self._write_ready)
        self._buf += data
        if not self._write_paused and len(self._buf) > HIGH_WATER:
            self._write_paused = True
            self._protocol.pause_writing()

    def _write_ready(self) -> None:
        try:
            n = os.write(self._fd, self._buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._close(exc)
            return
        del self._buf[:n]
        if not self._buf:
            self._loop.remove_writer(self._fd)
        if self._write_paused and len(self._buf) <= LOW_WATER:
            self._write_paused = False
            self._protocol.resume_writing()

    def _close(self, exc: Exception | None) -> None:
        if self._closing:
            return
        self._closing = True
        self._remove_reader()
        if self._buf:
            self._loop.remove_writer(self._fd)
            self._buf.clear()  # replies for a host that left are dropped
        self._loop.call_soon(self._connection_lost, exc)

    def _connection_lost(self, exc: Exception | None) -> None:
        try:
            self._protocol.connection_lost(exc)
        finally:
            if not self.closed.done():
                self.closed.set_result(None)

    def close(self) -> None:
        self._close(None)

    def abort(self) -> None:
        self._close(None)

    def is_closing(self) -> bool:
        return self._closing

    def pause_reading(self) -> None:
        self._read_paused = True
        self._remove_reader()

    def resume_reading(self) -> None:
        self._read_paused = False
        self._add_reader()

    def is_reading(self) -> bool:
        return self._reading

    def get_write_buffer_size(self) -> int:
        return len(self._buf)

    def can_write_eof(self) -> bool:
        return False


class PortListener:
    """Serves ttrpc sessions on one already-open port fd, one host connection after another."""

    def __init__(self, fd: int, serve, *, use_sigio: bool = True,  # type: ignore[no-untyped-def]
                 max_probe_delay: float = 8.0) -> None:
        self.fd = fd
        self.serve = serve
        self.use_sigio = use_sigio
        self.max_probe_delay = max_probe_delay
        self.sessions = 0
        self._wake = asyncio.Event()

    @classmethod
    def open(cls, path: str, serve, **kw):  # type: ignore[no-untyped-def]
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        return cls(fd, serve, **kw)

    def _set_async(self, on: bool) -> None:
        if not self.use_sigio:
            return
        try:
            flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
            fcntl.fcntl(self.fd, fcntl.F_SETFL, (flags | os.O_ASYNC) if on else (flags & ~os.O_ASYNC))
        except OSError as exc:
            log.warning("O_ASYNC on the agent port: %s (falling back to slow probing)", exc)
            self.use_sigio = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        if self.use_sigio:
            try:
                fcntl.fcntl(self.fd, fcntl.F_SETOWN, os.getpid())
                from frakpy_guest.init import on_signal

                on_signal(loop, signal.SIGIO, self._wake.set)
            except (OSError, RuntimeError, ValueError) as exc:
                log.warning("SIGIO unavailable: %s (falling back to slow probing)", exc)
                self.use_sigio = False
        while True:
            first = await self._wait_for_host()
            self.sessions += 1
            log.debug("host connected to the agent port (session %d)", self.sessions)
            reader = asyncio.StreamReader()
            protocol = asyncio.StreamReaderProtocol(reader)
            transport = PortTransport(loop, self.fd, protocol)
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            if first:
                reader.feed_data(first)
            try:
                await self.serve(reader, writer)
            except Exception:
                log.exception("agent port session failed")
            transport.close()
            await transport.closed

    async def _wait_for_host(self) -> bytes:
        """Return once a host is connected, with any bytes it already sent."""
        self._set_async(True)
        delay = 0.05
        try:
            while True:
                self._wake.clear()
                try:
                    data = os.read(self.fd, READ_SIZE)
                except (BlockingIOError, InterruptedError):
                    return b""  # connected, nothing sent yet
                if data:
                    return data
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except TimeoutError:
                    delay = min(delay * 2, self.max_probe_delay)
        finally:
            self._set_async(False)
