"""CRI log format: full lines, held partial lines, the 16 KiB cap, reopen."""

from __future__ import annotations

from pathlib import Path

from frakpy.container.logs import CriLogWriter, rfc3339nano

T = 1_700_000_000_123_456_789


def lines(path: Path) -> list[tuple[str, str, str]]:
    out = []
    for line in path.read_bytes().decode().splitlines():
        ts, stream, tag, text = line.split(" ", 3)
        assert ts.endswith("Z") and len(ts) == len("2023-11-14T22:13:20.123456789Z")
        out.append((stream, tag, text))
    return out


def test_timestamp_format() -> None:
    assert rfc3339nano(T) == "2023-11-14T22:13:20.123456789Z"
    assert rfc3339nano(1_000_000_000) == "1970-01-01T00:00:01.000000000Z"


def test_full_lines_and_streams(tmp_path: Path) -> None:
    w = CriLogWriter(tmp_path / "c/0.log")
    w.write("stdout", b"a\nb\n", time_ns=T, offset=0)
    w.write("stderr", b"err\n", time_ns=T, offset=4)
    w.close()
    assert lines(tmp_path / "c/0.log") == [("stdout", "F", "a"), ("stdout", "F", "b"), ("stderr", "F", "err")]


def test_partial_line_is_joined_and_tracked(tmp_path: Path) -> None:
    w = CriLogWriter(tmp_path / "0.log")
    w.write("stdout", b"hel", time_ns=T, offset=0)
    assert w.pending_offset() == 0
    w.write("stderr", b"x\n", time_ns=T, offset=3)
    assert w.pending_offset() == 0
    w.write("stdout", b"lo\nwor", time_ns=T, offset=5)
    assert w.pending_offset() == 8  # "wor" starts at 5 + 3
    w.write("stdout", b"ld", time_ns=T, offset=11)
    assert w.pending_offset() == 8
    assert lines(tmp_path / "0.log") == [("stderr", "F", "x"), ("stdout", "F", "hello")]
    w.close()  # end of output: the held line becomes a full one
    assert lines(tmp_path / "0.log")[-1] == ("stdout", "F", "world")


def test_long_line_is_split_with_partial_tags(tmp_path: Path) -> None:
    w = CriLogWriter(tmp_path / "0.log", max_partial=10)
    w.write("stdout", b"x" * 25, time_ns=T, offset=0)
    assert lines(tmp_path / "0.log") == [("stdout", "P", "x" * 10), ("stdout", "P", "x" * 10)]
    assert w.pending_offset() == 20
    w.write("stdout", b"yy\n", time_ns=T, offset=25)
    assert w.pending_offset() is None
    w.close()
    assert lines(tmp_path / "0.log")[-1] == ("stdout", "F", "xxxxxyy")


def test_reopen_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    w = CriLogWriter(path)
    w.write("stdout", b"one\n", time_ns=T)
    path.rename(tmp_path / "0.log.1")
    w.reopen()
    w.write("stdout", b"two\n", time_ns=T)
    w.close()
    assert lines(tmp_path / "0.log.1") == [("stdout", "F", "one")]
    assert lines(path) == [("stdout", "F", "two")]
