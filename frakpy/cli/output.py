"""Rendering for the CLI: crictl-style tables, JSON and YAML of CRI messages."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message

TRUNC_ID = 13  # crictl shows the first 13 characters of ids unless --no-trunc


def message_to_dict(msg: Message) -> dict[str, Any]:
    """camelCase JSON form of a CRI message, default values included (like crictl)."""
    return json_format.MessageToDict(  # type: ignore[no-any-return]
        msg, preserving_proto_field_name=False, always_print_fields_with_no_presence=True
    )


def dump(data: Any, fmt: str = "json", out: TextIO | None = None) -> None:
    out = out or sys.stdout
    if fmt == "yaml":
        import yaml

        out.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    else:
        out.write(json.dumps(data, indent=2) + "\n")


def parse_info(info: dict[str, str]) -> dict[str, Any]:
    """Verbose ``info`` maps carry JSON strings; decode them where possible."""
    decoded: dict[str, Any] = {}
    for key in sorted(info):
        try:
            decoded[key] = json.loads(info[key])
        except ValueError:
            decoded[key] = info[key]
    return decoded


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], out: TextIO | None = None) -> None:
    """Left-aligned columns separated by at least three spaces (as crictl's tabwriter)."""
    out = out or sys.stdout
    rows = [list(map(str, r)) for r in rows]
    widths = [len(h) for h in headers]
    for r in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, r, strict=True)]
    for r in [list(headers), *rows]:
        line = "   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))
        out.write(line.rstrip() + "\n")


def short_id(ident: str, no_trunc: bool = False) -> str:
    if no_trunc:
        return ident
    if ident.startswith("sha256:"):
        ident = ident[len("sha256:") :]
    return ident[:TRUNC_ID]


def _now() -> float:
    return time.time()


def ago(nanos: int, now: float | None = None) -> str:
    """'5 seconds ago', 'About a minute ago', '3 hours ago' from a unix timestamp in ns."""
    if not nanos:
        return "Unknown"
    secs = max(0.0, (now if now is not None else _now()) - nanos / 1e9)
    return f"{human_duration(secs)} ago"


def human_duration(secs: float) -> str:
    s = int(secs)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(s / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    days = s // 86400
    if days < 14:
        return f"{days} days"
    if days < 60:
        return f"{days // 7} weeks"
    if days < 730:
        return f"{days // 30} months"
    return f"{days // 365} years"


def human_size(n: int, precision: int = 3) -> str:
    """Decimal units with three significant digits, as crictl prints image sizes
    (go-units ``HumanSizeWithPrecision(size, 3)``: ``4.26MB``, ``70MB``)."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if size < 1000 or unit == "PB":
            return f"{size:.{precision}g}{unit}"
        size /= 1000
    raise AssertionError("unreachable")
