"""Byte streams to a guest agent: QEMU's virtio-serial chardev socket, or AF_VSOCK.

URIs:
    serial:///abs/path/agent.sock   unix socket of the QEMU chardev backing the "agent" port
    vsock://<cid>:<port>            AF_VSOCK (needs vhost_vsock on the host)
"""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import urlsplit

from frakpy.errors import DeadlineExceeded, InvalidArgument, Unavailable

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def parse_uri(uri: str) -> tuple[str, str | tuple[int, int]]:
    """("serial", path) or ("vsock", (cid, port)); InvalidArgument for anything else."""
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
        if cid < 3 or not 0 < port < 2**32:
            raise InvalidArgument(f"agent URI {uri!r}: guest CIDs start at 3 and ports are 32-bit")
        return "vsock", (cid, port)
    raise InvalidArgument(f"agent URI {uri!r}: unsupported scheme (use serial:// or vsock://)")


async def open_stream(uri: str, timeout: float) -> Stream:  # noqa: ASYNC109 - one deadline for connect
    kind, address = parse_uri(uri)
    try:
        async with asyncio.timeout(timeout):
            if kind == "serial":
                assert isinstance(address, str)
                return await _open_unix(address)
            assert isinstance(address, tuple)
            return await _open_vsock(*address)
    except TimeoutError:
        raise DeadlineExceeded(f"connecting to the agent at {uri} took longer than {timeout:g}s") from None


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
        raise Unavailable(f"cannot connect to agent at vsock {cid}:{port}: {exc}") from exc
    except BaseException:
        sock.close()
        raise
