"""Independent checks of the wire format, with clients we did not write.

WebSocket: the third-party ``websockets`` library speaks RFC 6455 and we frame Kubernetes'
channel protocol by hand on top, so these tests pin the bytes (channel prefix, status JSON,
port-forward port prefixes) without going through frakpy's client.

SPDY/3.1: no maintained third-party SPDY client exists for Python, so the SPDY side is checked
against the protocol's fixed facts instead (the SPDY/3 dictionary, frame layouts) and by a raw
frame-level exchange below; interop with Kubernetes' Go client (spdystream) rests on those facts.
"""

from __future__ import annotations

import asyncio
import json
import struct
import zlib

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from frakpy.streaming import ExecRequest, PortForwardRequest, StreamingServer
from frakpy.streaming.spdy import (
    DICTIONARY,
    FLAG_FIN,
    HeaderCodec,
    control_frame,
    data_frame,
)

T = 10.0


def ws_url(http_url: str) -> str:
    return "ws://" + http_url.removeprefix("http://")


async def test_websockets_library_exec_echo(server: StreamingServer) -> None:
    url = server.exec_url(ExecRequest("c1", ("echo", "third", "party")))
    frames: list[bytes] = []
    async with asyncio.timeout(T), connect(ws_url(url) + "?command=echo&stdout=1&stderr=1",
                                            subprotocols=[Subprotocol("v4.channel.k8s.io")]) as ws:
        assert ws.subprotocol == "v4.channel.k8s.io"
        try:
            async for msg in ws:
                assert isinstance(msg, bytes)
                frames.append(msg)
        except ConnectionClosed:
            pass
    assert frames[0] == b"\x01"  # the kubelet's "connected" marker: an empty stdout message
    stdout = b"".join(f[1:] for f in frames if f[0] == 1)
    status = b"".join(f[1:] for f in frames if f[0] == 3)
    assert stdout == b"third party\n"
    assert json.loads(status) == {"metadata": {}, "status": "Success"}


async def test_websockets_library_exec_base64_and_stdin_v5(server: StreamingServer) -> None:
    url = server.exec_url(ExecRequest("c1", ("cat",), stdin=True))
    async with asyncio.timeout(T), connect(ws_url(url), subprotocols=[Subprotocol("v5.channel.k8s.io")]) as ws:
        await ws.send(b"\x00abc")
        await ws.send(bytes([255, 0]))  # v5 CLOSE signal for stdin
        got = [m async for m in ws]
    assert b"".join(m[1:] for m in got if isinstance(m, bytes) and m[0] == 1) == b"abc"
    assert json.loads(b"".join(m[1:] for m in got if isinstance(m, bytes) and m[0] == 3))["status"] == "Success"

    url = server.exec_url(ExecRequest("c1", ("fail", "4")))
    async with asyncio.timeout(T), connect(ws_url(url), subprotocols=[Subprotocol("base64.channel.k8s.io")]) as ws:
        texts = [m async for m in ws]
    assert all(isinstance(m, str) for m in texts)
    assert "2b29wcwo=" in texts  # '2' + base64("oops\n") on stderr
    assert any(m.startswith("3") and "non-zero exit code" in __import__("base64").b64decode(m[1:]).decode()
               for m in texts if isinstance(m, str))


async def test_websockets_library_port_forward(server: StreamingServer) -> None:
    url = server.port_forward_url(PortForwardRequest("pod1"))
    async with asyncio.timeout(T), connect(ws_url(url) + "?port=8080",
                                            subprotocols=[Subprotocol("v4.channel.k8s.io")]) as ws:
        first = {await ws.recv(), await ws.recv()}
        assert first == {b"\x00" + struct.pack("<H", 8080), b"\x01" + struct.pack("<H", 8080)}
        await ws.send(b"\x00ping")
        echoed = b""
        while echoed != b"port=8080\nping":
            msg = await ws.recv()
            assert isinstance(msg, bytes) and msg[0] == 0
            echoed += msg[1:]


def test_spdy_dictionary_is_the_spdy3_one() -> None:
    assert len(DICTIONARY) == 1423
    assert DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert DICTIONARY[704:714] == b"\x00\x00\x07warning"
    assert DICTIONARY.endswith(b"charset=iso-8859-1,utf-,*,enq=0.")
    zlib.compressobj(zdict=DICTIONARY)


def test_header_block_roundtrip_and_shared_context() -> None:
    tx, rx = HeaderCodec(), HeaderCodec()
    first = tx.encode([("streamType", "stdout"), ("port", "80")])
    second = tx.encode([("streamType", "stdout"), ("port", "80")])
    assert len(second) < len(first)  # the second block reuses the first's context
    assert rx.decode(first) == {"streamtype": ["stdout"], "port": ["80"]}
    assert rx.decode(second) == {"streamtype": ["stdout"], "port": ["80"]}
    # a fresh inflater needs the dictionary: the stream starts with a zlib FDICT header
    assert first[1] & 0x20
    assert struct.unpack(">I", first[2:6])[0] == zlib.adler32(DICTIONARY)


def test_frame_layouts() -> None:
    assert control_frame(6, 0, b"\x00\x00\x00\x01") == b"\x80\x03\x00\x06\x00\x00\x00\x04\x00\x00\x00\x01"
    assert data_frame(5, FLAG_FIN, b"ab") == b"\x00\x00\x00\x05\x01\x00\x00\x02ab"


async def test_raw_spdy_exchange(server: StreamingServer) -> None:
    """Drive the server with hand-made frames, as a Go spdystream client would send them
    (no SETTINGS, no WINDOW_UPDATE), including a PING that must be echoed."""
    url = server.exec_url(ExecRequest("c1", ("echo", "raw")))
    path = url.removeprefix(server.base_url)
    host, port = server.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                 "X-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"X-Stream-Protocol-Version: v4.channel.k8s.io" in head
    tx, rx = HeaderCodec(), HeaderCodec()
    for sid, kind in ((1, "error"), (3, "stdout"), (5, "stderr")):
        block = tx.encode([("streamtype", kind)])
        writer.write(control_frame(1, 0, struct.pack(">IIBB", sid, 0, 0, 0) + block))
    writer.write(control_frame(6, 0, struct.pack(">I", 1)))  # PING id 1 (client ids are odd)
    data: dict[int, bytes] = {1: b"", 3: b"", 5: b""}
    fins: set[int] = set()
    replies: set[int] = set()
    pinged = False
    async with asyncio.timeout(T):
        while fins != {1, 3, 5}:
            hdr = await reader.readexactly(8)
            length = int.from_bytes(hdr[5:8], "big")
            payload = await reader.readexactly(length)
            if hdr[0] & 0x80:
                ftype = int.from_bytes(hdr[2:4], "big")
                if ftype == 2:  # SYN_REPLY
                    (sid,) = struct.unpack(">I", payload[:4])
                    rx.decode(payload[4:])
                    replies.add(sid)
                elif ftype == 6:
                    pinged = payload == struct.pack(">I", 1)
            else:
                sid = int.from_bytes(hdr[:4], "big")
                assert sid in replies  # data only after the stream's SYN_REPLY
                data[sid] += payload
                if hdr[4] & FLAG_FIN:
                    fins.add(sid)
    writer.close()
    assert pinged
    assert data[3] == b"raw\n"
    assert json.loads(data[1]) == {"metadata": {}, "status": "Success"}


@pytest.mark.parametrize("bad", [b"GARBAGE\r\n\r\n", b"GET /exec HTTP/1.1\r\nHost: x\r\n\r\n"])
async def test_junk_requests_get_an_http_error(server: StreamingServer, bad: bytes) -> None:
    host, port = server.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(bad)
    reply = await asyncio.wait_for(reader.read(), T)
    writer.close()
    assert reply.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 404 "))
