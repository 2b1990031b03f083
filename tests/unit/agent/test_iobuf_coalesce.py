"""The guest's output buffer hands out buffered chunks of one stream merged, when asked."""

from __future__ import annotations

import asyncio

from frakpy_guest import iobuf


def test_coalesced_merges_runs_of_one_stream_up_to_the_limit() -> None:
    chunks = [iobuf.Chunk(0, 1, 10, b"aa"), iobuf.Chunk(2, 1, 11, b"bb"), iobuf.Chunk(4, 2, 12, b"E"),
              iobuf.Chunk(5, 1, 13, b"cc"), iobuf.Chunk(7, 1, 14, b"dd"), iobuf.Chunk(9, 1, 15, b"ee")]
    out = iobuf._coalesced(chunks, limit=4)
    assert [(c.offset, c.stream, c.time_ns, c.data) for c in out] == [
        (0, 1, 10, b"aabb"), (4, 2, 12, b"E"), (5, 1, 13, b"ccdd"), (9, 1, 15, b"ee")]


def test_read_with_coalesce_delivers_every_byte_once() -> None:
    async def main() -> bytes:
        buf = iobuf.OutputBuffer(1 << 20)
        for i in range(50):
            buf.append(iobuf.STDOUT, bytes([65 + i % 26]) * 1000)
        buf.close()
        got = []
        async for c in buf.read(0, auto_ack=True, coalesce=16 << 10):
            assert len(c.data) <= 16 << 10
            got.append(c.data)
        assert len(got) == 4  # 50 000 bytes in 16 KiB pieces
        return b"".join(got)

    data = asyncio.run(main())
    assert data == b"".join(bytes([65 + i % 26]) * 1000 for i in range(50))
