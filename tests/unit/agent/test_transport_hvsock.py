"""Agent URIs for the userspace vsock device (hvsock://) and the CONNECT handshake from the client side."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from frakpy import errors
from frakpy.agent.transport import open_stream, parse_uri


def test_parse_hvsock_uri() -> None:
    assert parse_uri("hvsock:///run/frakpy/sandboxes/x/vsock.sock:1024") == (
        "hvsock", ("/run/frakpy/sandboxes/x/vsock.sock", 1024))
    assert parse_uri("vsock://3:4294967294") == ("vsock", (3, 4294967294))
    for bad in ("hvsock://relative/x.sock:1", "hvsock:///abs/x.sock", "hvsock:///abs/x.sock:0",
                "hvsock:///abs/x.sock:4294967295", "hvsock:///abs/x.sock:port", "vsock://3:4294967295"):
        with pytest.raises(errors.InvalidArgument, match="agent URI"):
            parse_uri(bad)


class FakeDevice:
    """A unix server answering CONNECT lines from a script of answers (one per connection)."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = answers
        self.requests: list[bytes] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests.append(await reader.readline())
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        writer.write(answer)
        await writer.drain()
        if answer.startswith(b"OK "):
            writer.write(await reader.readexactly(4))  # echo one message
            await writer.drain()
        writer.close()


async def _with_device(tmp_path: Path, answers: list[bytes]):  # type: ignore[no-untyped-def]
    dev = FakeDevice(answers)
    path = tmp_path / "vsock.sock"
    server = await asyncio.start_unix_server(dev.serve, str(path))
    return dev, server, f"hvsock://{path}:1024"


async def test_refusals_are_retried_until_the_guest_accepts(tmp_path: Path) -> None:
    dev, server, uri = await _with_device(tmp_path, [b"ERR ECONNREFUSED not yet\n", b"", b"OK 1073741824\n"])
    try:
        reader, writer = await open_stream(uri, timeout=10)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        writer.close()
        assert dev.requests == [b"CONNECT 1024\n"] * 3
    finally:
        server.close()


async def test_bad_request_is_unavailable_at_once(tmp_path: Path) -> None:
    dev, server, uri = await _with_device(tmp_path, [b"ERR EINVAL port 'x' is not a number\n"])
    try:
        with pytest.raises(errors.Unavailable, match="refused CONNECT 1024: ERR EINVAL"):
            await open_stream(uri, timeout=10)
        assert len(dev.requests) == 1
    finally:
        server.close()


async def test_deadline_names_the_last_refusal(tmp_path: Path) -> None:
    _dev, server, uri = await _with_device(tmp_path, [b"ERR ECONNREFUSED the guest refused port 1024\n"])
    try:
        with pytest.raises(errors.DeadlineExceeded, match="guest refused port 1024"):
            await open_stream(uri, timeout=0.3)
    finally:
        server.close()


async def test_missing_or_dead_device_socket(tmp_path: Path) -> None:
    with pytest.raises(errors.Unavailable, match="does not exist"):
        await open_stream(f"hvsock://{tmp_path}/nope.sock:1024", timeout=2)
    import socket
    dead = tmp_path / "dead.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(dead))  # bound, never listening: what a crashed backend leaves
    try:
        with pytest.raises(errors.Unavailable, match="backend process is gone"):
            await open_stream(f"hvsock://{dead}:1024", timeout=2)
    finally:
        s.close()
