"""The pure framing layer: header layout, incremental decoding, oversized frames."""

from __future__ import annotations

import pytest

from frakpy.agent.protocol import ttrpc


def test_header_layout_matches_ttrpc() -> None:
    frame = ttrpc.encode_frame(5, ttrpc.MSG_DATA, ttrpc.FLAG_REMOTE_CLOSED, b"abc")
    assert frame == b"\x00\x00\x00\x03" + b"\x00\x00\x00\x05" + b"\x03" + b"\x01" + b"abc"
    assert ttrpc.HEADER_SIZE == 10
    assert ttrpc.encode_header(0x01020304, 0xA0B0C0D1, 1, 6) == bytes.fromhex("01020304a0b0c0d10106")


def test_decoder_whole_and_multiple_frames() -> None:
    data = b"".join(ttrpc.encode_frame(i, ttrpc.MSG_REQUEST, 0, bytes([i]) * i) for i in (1, 3, 5))
    frames = ttrpc.FrameDecoder().feed(data)
    assert [(f.stream_id, f.type, f.payload) for f in frames] == [
        (1, 1, b"\x01"), (3, 1, b"\x03" * 3), (5, 1, b"\x05" * 5)]


def test_decoder_one_byte_chunks() -> None:
    data = b"".join(ttrpc.encode_frame(i, ttrpc.MSG_RESPONSE, 0, b"x" * (i * 7)) for i in (1, 3, 5, 7))
    data += ttrpc.encode_frame(9, ttrpc.MSG_DATA, ttrpc.FLAG_NO_DATA | ttrpc.FLAG_REMOTE_CLOSED)
    decoder = ttrpc.FrameDecoder()
    frames = []
    for i in range(len(data)):
        frames.extend(decoder.feed(data[i:i + 1]))
    assert [f.stream_id for f in frames] == [1, 3, 5, 7, 9]
    assert frames[2].payload == b"x" * 35
    assert frames[4].payload == b"" and frames[4].flags == 5
    assert decoder.pending == 0


def test_decoder_reports_mid_frame() -> None:
    decoder = ttrpc.FrameDecoder()
    assert decoder.feed(ttrpc.encode_frame(1, 1, 0, b"hello")[:12]) == []
    assert decoder.pending == 12


def test_large_frame_at_the_limit() -> None:
    payload = bytes(range(256)) * (ttrpc.DEFAULT_MAX_MESSAGE_SIZE // 256)
    assert len(payload) == ttrpc.DEFAULT_MAX_MESSAGE_SIZE
    data = ttrpc.encode_frame(1, 1, 0, payload)
    decoder = ttrpc.FrameDecoder()
    frames = []
    for off in range(0, len(data), 65537):
        frames.extend(decoder.feed(data[off:off + 65537]))
    assert len(frames) == 1 and frames[0].payload == payload


def test_encode_refuses_oversized() -> None:
    with pytest.raises(ttrpc.TTRPCError) as exc:
        ttrpc.encode_frame(1, 1, 0, b"x" * 101, max_message_size=100)
    assert exc.value.code == ttrpc.Code.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_oversized_frame_is_skipped_without_buffering(chunk: int) -> None:
    limit = 1000
    big = ttrpc.HEADER.pack(5000, 3, ttrpc.MSG_REQUEST, 0) + b"y" * 5000
    after = ttrpc.encode_frame(5, ttrpc.MSG_REQUEST, 0, b"ok")
    data = ttrpc.encode_frame(1, 1, 0, b"first") + big + after
    decoder = ttrpc.FrameDecoder(max_message_size=limit)
    frames = []
    for off in range(0, len(data), chunk):
        frames.extend(decoder.feed(data[off:off + chunk]))
        assert len(decoder._buf) <= max(chunk, ttrpc.HEADER_SIZE + limit)
    assert [(f.stream_id, f.oversized) for f in frames] == [(1, False), (3, True), (5, False)]
    assert frames[1].length == 5000 and frames[2].payload == b"ok"
    assert decoder.pending == 0
