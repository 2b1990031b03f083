"""Byte streams to a guest agent: QEMU's virtio-serial chardev socket, AF_VSOCK, or hybrid vsock.

URIs:
    serial:///abs/path/agent.sock   unix socket of the QEMU chardev backing the "agent" port
    vsock://<cid>:<port>            AF_VSOCK (the host's vhost_vsock)
    hvsock:///abs/path.sock:<port>  frakpy's userspace vsock device (frakpy.vm.vsockdev): a unix
                                    socket where ``CONNECT <port>`` opens a stream to the guest

A vsock connection is refused until the agent listens, so both vsock kinds retry refusals until
the deadline (a VM that is still booting); a missing socket or backend fails at once.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from urllib.parse import urlsplit

from frakpy.errors import DeadlineExceeded, InvalidArgument, Unavailable

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
RETRY_S = 0.05
MAX_PORT = 0xFFFFFFFE  # 0xFFFFFFFF is VMADDR_PORT_ANY
_RETRYABLE = {errno.ECONNRESET, errno.ECONNREFUSED, errno.ETIMEDOUT, errno.ENODEV}


class _Refused(Exception):
    """The guest did not accept (yet): worth another try before the deadline."""


def parse_uri(uri: str) -> tuple[str, str | tuple[int, int] | tuple[str, int]]:
    """("serial", path), ("vsock", (cid, port)) or ("hvsock", (path, port)); InvalidArgument otherwise."""
    parts = urlsplit(uri)
    if parts.scheme == "serial":
        if parts.netloc or not parts.path.startswith("/"):
            raise InvalidArgument(f"agent URI {uri!r}: expected serial:///absolute/path/agent.sock")
        return "serial", parts.path
    if parts.scheme == "vsock":
        try:
            cid_text, port_text = parts.netloc.split(":")
            cid, port = int(cid_text), int(port_text)
        except ValueError:
            raise InvalidArgument(f"agent URI {uri!r}: expected vsock://<cid>:<port>") from None
        if cid < 3 or not 0 < port <= MAX_PORT:
            raise InvalidArgument(f"agent URI {uri!r}: guest CIDs start at 3 and ports are 1..{MAX_PORT}")
        return "vsock", (cid, port)
    if parts.scheme == "hvsock":
        path, _, port_text = parts.path.rpartition(":")
        if parts.netloc or not path.startswith("/") or not port_text.isdigit():
            raise InvalidArgument(f"agent URI {uri!r}: expected hvsock:///absolute/path/vsock.sock:<port>")
        port = int(port_text)
        if not 0 < port <= MAX_PORT:
            raise InvalidArgument(f"agent URI {uri!r}: vsock ports are 1..{MAX_PORT}")
        return "hvsock", (path, port)
    raise InvalidArgument(f"agent URI {uri!r}: unsupported scheme (use serial://, vsock:// or hvsock://)")


async def open_stream(uri: str, timeout: float) -> Stream:  # noqa: ASYNC109 - one deadline for connect
    kind, address = parse_uri(uri)
    deadline = time.monotonic() + timeout
    last = ""
    try:
        async with asyncio.timeout(timeout):
            if kind == "serial":
                assert isinstance(address, str)
                return await _open_unix(address)
            while True:
                assert isinstance(address, tuple)
                where, port = address
                assert isinstance(port, int)
                try:
                    if isinstance(where, int):
                        return await _open_vsock(where, port)
                    return await _open_hvsock(where, port)
                except _Refused as exc:
                    last = str(exc)
                    await asyncio.sleep(min(RETRY_S, max(0.0, deadline - time.monotonic())))
    except TimeoutError:
        why = f" (last: {last})" if last else ""
        raise DeadlineExceeded(f"connecting to the agent at {uri} took longer than {timeout:g}s{why}") from None


async def _open_unix(path: str) -> Stream:
    try:
        return await asyncio.open_unix_connection(path)
    except FileNotFoundError:
        raise Unavailable(f"agent socket {path} does not exist (is the VM running?)") from None
    except OSError as exc:
        raise Unavailable(f"cannot connect to agent socket {path}: {exc}") from exc


async def _open_vsock(cid: int, port: int) -> Stream:
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        raise Unavailable("this Python/host has no AF_VSOCK support; use a serial:// agent URI")
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise Unavailable(f"host has no vsock ({exc}); load the vhost_vsock module or use serial://") from exc
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (cid, port))
        return await asyncio.open_connection(sock=sock)
    except OSError as exc:
        sock.close()
        if exc.errno in _RETRYABLE:
            raise _Refused(f"vsock {cid}:{port}: {exc.strerror}") from exc
        raise Unavailable(f"cannot connect to agent at vsock {cid}:{port}: {exc}") from exc
    except BaseException:
        sock.close()
        raise


async def _open_hvsock(path: str, port: int) -> Stream:
    """Connect through the userspace vsock device: ``CONNECT <port>`` → ``OK <host port>`` or ``ERR ...``."""
    reader, writer = await _open_unix_backend(path)
    try:
        writer.write(f"CONNECT {port}\n".encode())
        await writer.drain()
        line = await reader.readline()
    except OSError as exc:
        writer.close()
        raise _Refused(f"vsock device at {path}: {exc}") from exc
    text = line.decode("ascii", "replace").strip()
    if text.startswith("OK "):
        return reader, writer
    writer.close()
    if not text:  # the device dropped the request (the guest's vsock driver reset)
        raise _Refused(f"vsock device at {path} closed the connection to port {port}")
    code, _, why = text.removeprefix("ERR ").partition(" ")
    if code == "ECONNREFUSED":
        raise _Refused(f"port {port}: {why}")
    raise Unavailable(f"vsock device at {path} refused CONNECT {port}: {text}")


async def _open_unix_backend(path: str) -> Stream:
    try:
        return await asyncio.open_unix_connection(path)
    except FileNotFoundError:
        raise Unavailable(f"vsock device socket {path} does not exist (is the VM running?)") from None
    except ConnectionRefusedError:
        raise Unavailable(f"vsock device socket {path}: nothing listens (its backend process is gone)") from None
    except OSError as exc:
        raise Unavailable(f"cannot connect to vsock device socket {path}: {exc}") from exc
