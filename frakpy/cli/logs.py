"""Reading CRI container log files: ``<RFC3339Nano> <stdout|stderr> <P|F> <text>`` per line.

A ``P`` (partial) line continues on the next line of the same stream; ``F`` ends the message.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field


@dataclass
class LogEntry:
    timestamp: str
    stream: str
    text: str


@dataclass
class LogJoiner:
    """Feeds raw log lines and yields complete messages, joining partials per stream."""

    pending: dict[str, list[str]] = field(default_factory=dict)

    def feed(self, line: str) -> LogEntry | None:
        line = line.rstrip("\n")
        parts = line.split(" ", 3)
        if len(parts) < 3:
            return None  # not a CRI log line (truncated write or foreign file): skip it
        ts, stream, tag = parts[0], parts[1], parts[2]
        text = parts[3] if len(parts) == 4 else ""
        if tag not in ("P", "F"):
            # Older writers omit the tag: "<ts> <stream> <text>".
            text = line.split(" ", 2)[2] if len(parts) >= 3 else ""
            tag = "F"
        chunks = self.pending.setdefault(stream, [])
        chunks.append(text)
        if tag == "P":
            return None
        del self.pending[stream]
        return LogEntry(ts, stream, "".join(chunks))

    def flush(self) -> Iterator[LogEntry]:
        for stream, chunks in sorted(self.pending.items()):
            yield LogEntry("", stream, "".join(chunks))
        self.pending.clear()


def parse_lines(lines: Iterable[str]) -> list[LogEntry]:
    joiner = LogJoiner()
    entries = [e for e in map(joiner.feed, lines) if e is not None]
    entries.extend(joiner.flush())
    return entries
