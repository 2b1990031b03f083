"""The HTTP/1.1 part of the streaming protocols: one request, then an Upgrade (or an error).

Requests and responses are parsed with ``h11``; the few responses the server writes (101 for
SPDY, 4xx/5xx errors) are a handful of header lines, composed here. WebSocket handshakes are left
to ``wsproto``.
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import h11

MAX_BODY = 64 * 1024


class StreamingError(Exception):
    """A streaming request failed before or during the upgrade (HTTP status, when known)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class HTTPRequest:
    method: str
    target: str
    headers: list[tuple[str, str]]  # names lower-case, in order
    path: str = ""
    query: dict[str, list[str]] = field(default_factory=dict)

    def header(self, name: str) -> str:
        for k, v in self.headers:
            if k == name:
                return v
        return ""

    def header_list(self, name: str) -> list[str]:
        """All values of a header, across repeated lines and comma-separated lists."""
        out: list[str] = []
        for k, v in self.headers:
            if k == name:
                out.extend(p.strip() for p in v.split(",") if p.strip())
        return out

    def upgrade(self) -> str:
        if "upgrade" not in [t.lower() for t in self.header_list("connection")]:
            return ""
        return self.header("upgrade").strip().lower()


async def read_request(reader: asyncio.StreamReader, timeout: float) -> tuple[HTTPRequest, bytes] | None:
    """Read one request (and its body, discarded); returns it with the bytes received after it."""
    conn = h11.Connection(h11.SERVER)
    req: HTTPRequest | None = None
    body = 0

    async def more() -> None:
        conn.receive_data(await reader.read(65536))

    async with asyncio.timeout(timeout):
        while True:
            try:
                ev = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise StreamingError(f"bad HTTP request: {exc}", 400) from exc
            if ev is h11.NEED_DATA:
                await more()
            elif isinstance(ev, h11.Request):
                target = ev.target.decode("latin-1")
                parts = urlsplit(target)
                req = HTTPRequest(
                    method=ev.method.decode("latin-1").upper(),
                    target=target,
                    headers=[(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in ev.headers],
                    path=parts.path,
                    query=parse_qs(parts.query, keep_blank_values=True),
                )
            elif isinstance(ev, h11.Data):
                body += len(ev.data)
                if body > MAX_BODY:
                    raise StreamingError("request body too large", 413)
            elif isinstance(ev, h11.EndOfMessage) or ev is h11.PAUSED:
                assert req is not None
                data, _closed = conn.trailing_data
                return req, bytes(data)
            elif isinstance(ev, h11.ConnectionClosed):
                return None


_REASONS = {101: "Switching Protocols", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 413: "Payload Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}


def response_bytes(status: int, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}"]
    if status != 101:
        headers = [*headers, ("Content-Type", "text/plain; charset=utf-8"),
                   ("Content-Length", str(len(body))), ("Connection", "close")]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def write_error(writer: asyncio.StreamWriter, status: int, message: str,
                      headers: list[tuple[str, str]] | None = None) -> None:
    try:
        writer.write(response_bytes(status, headers or [], (message + "\n").encode()))
        await writer.drain()
    except (ConnectionError, RuntimeError):
        pass


# -- client side ---------------------------------------------------------------------------------

@dataclass
class Target:
    scheme: str
    host: str
    port: int
    path_qs: str
    host_header: str


def parse_url(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "ws", "wss"):
        raise StreamingError(f"unsupported URL scheme in {url!r}")
    secure = parts.scheme in ("https", "wss")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if secure else 80)
    path_qs = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target("https" if secure else "http", host, port, path_qs, parts.netloc)


async def open_connection(t: Target, ssl: _ssl.SSLContext | bool | None,
                          timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    ctx: _ssl.SSLContext | None = None
    if t.scheme == "https":
        ctx = ssl if isinstance(ssl, _ssl.SSLContext) else _ssl.create_default_context()
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.open_connection(t.host, t.port, ssl=ctx, server_hostname=t.host if ctx else None)
    except (OSError, TimeoutError) as exc:
        raise StreamingError(f"cannot connect to {t.host}:{t.port}: {exc}") from exc


async def client_upgrade(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, t: Target,
                         headers: list[tuple[str, str]], timeout: float) -> tuple[list[tuple[str, str]], bytes]:
    """Send an Upgrade request (POST, as kubectl does for SPDY); return the 101's headers
    (lower-case names) and the bytes that followed it. Any other status raises StreamingError."""
    conn = h11.Connection(h11.CLIENT)
    req = h11.Request(method="POST", target=t.path_qs,
                      headers=[("Host", t.host_header), ("Content-Length", "0"), *headers])
    writer.write(conn.send(req) + (conn.send(h11.EndOfMessage()) or b""))
    status = 0
    body = bytearray()
    async with asyncio.timeout(timeout):
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data and status == 0:
                    raise StreamingError("connection closed before the upgrade response")
            elif isinstance(ev, h11.InformationalResponse) and ev.status_code == 101:
                data, _closed = conn.trailing_data
                return ([(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in ev.headers], bytes(data))
            elif isinstance(ev, h11.Response):
                status = ev.status_code
            elif isinstance(ev, h11.Data):
                body += ev.data[: max(0, 4096 - len(body))]
            elif isinstance(ev, h11.EndOfMessage | h11.ConnectionClosed):
                raise StreamingError(f"upgrade refused: HTTP {status}: {body.decode(errors='replace').strip()}",
                                     status)
