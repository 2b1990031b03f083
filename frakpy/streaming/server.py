"""The streaming server: the URLs CRI Exec/Attach/PortForward return, and what answers them.

``exec_url``/``attach_url``/``port_forward_url`` store the CRI request under a single-use token
(``tokens.TokenStore``) and return ``{base_url}/{exec|attach|portforward}/{token}``. A connection
presenting the token is upgraded to SPDY/3.1 (``Upgrade: SPDY/3.1``, version negotiated with
``X-Stream-Protocol-Version``) or WebSocket (``Upgrade: websocket``, version = subprotocol) and
served by ``remotecommand`` or ``portforward`` against the ``StreamingBackend``. Unknown, reused
and expired tokens get 404. TLS when both ``tls_cert`` and ``tls_key`` are configured.

Hand-written on asyncio with ``h11`` (HTTP/1.1 parsing) and ``wsproto`` (WebSocket); SPDY is ours
(``spdy.py``), as no maintained Python library implements it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
from collections.abc import Callable

from frakpy.config import StreamingConfig
from frakpy.errors import InvalidArgument
from frakpy.streaming import portforward, remotecommand
from frakpy.streaming._http import HTTPRequest, StreamingError, read_request, response_bytes, write_error
from frakpy.streaming.backend import AttachRequest, ExecRequest, PortForwardRequest, StreamingBackend
from frakpy.streaming.spdy import SpdyConnection, SpdyStream
from frakpy.streaming.tokens import TokenStore
from frakpy.streaming.websocket import ChannelSocket, server_handshake

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 30.0
Request = ExecRequest | AttachRequest | PortForwardRequest


class StreamingServer:
    def __init__(self, cfg: StreamingConfig, backend: StreamingBackend) -> None:
        self.cfg = cfg
        self.backend = backend
        self.tokens: TokenStore[Request] = TokenStore(cfg.token_ttl_s)
        self._server: asyncio.Server | None = None
        self._ssl: ssl.SSLContext | None = None
        self._port = 0
        self._handlers: set[asyncio.Task[None]] = set()
        self._live: dict[int, Callable[[], int]] = {}

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        if bool(self.cfg.tls_cert) != bool(self.cfg.tls_key):
            raise InvalidArgument("streaming.tls_cert and streaming.tls_key must be set together "
                                  "(both empty serves plain HTTP)")
        if self.cfg.tls_cert:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                ctx.load_cert_chain(self.cfg.tls_cert, self.cfg.tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise InvalidArgument(f"streaming TLS certificate {self.cfg.tls_cert} / key {self.cfg.tls_key}: "
                                      f"{exc}") from exc
            self._ssl = ctx
        self._server = await asyncio.start_server(self._on_client, self.cfg.address or None, self.cfg.port,
                                                  ssl=self._ssl)
        self._port = self._server.sockets[0].getsockname()[1]
        log.info("streaming server listening on %s", self.base_url)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
            self._server = None

    @property
    def base_url(self) -> str:
        host = self.cfg.address or "127.0.0.1"
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            if ip.is_unspecified:  # a wildcard bind: the node itself is reachable on loopback
                ip = ipaddress.ip_address("::1" if ip.version == 6 else "127.0.0.1")
            host = f"[{ip}]" if ip.version == 6 else str(ip)
        scheme = "https" if self._ssl is not None else "http"
        return f"{scheme}://{host}:{self._port or self.cfg.port}"

    def exec_url(self, req: ExecRequest) -> str:
        return f"{self.base_url}/exec/{self.tokens.issue('exec', req)}"

    def attach_url(self, req: AttachRequest) -> str:
        return f"{self.base_url}/attach/{self.tokens.issue('attach', req)}"

    def port_forward_url(self, req: PortForwardRequest) -> str:
        return f"{self.base_url}/portforward/{self.tokens.issue('portforward', req)}"

    @property
    def active_connections(self) -> int:
        return len(self._handlers)

    def buffered_bytes(self) -> int:
        """Bytes the server holds for live sessions: socket send buffers (user space) plus SPDY
        receive buffers. Bounded by design (flow control); tests watch it."""
        return sum(f() for f in list(self._live.values()))

    # -- connections ---------------------------------------------------------------------------
    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001 - one connection's bug must not take the server down
            log.exception("streaming connection failed")
        finally:
            self._handlers.discard(task)
            self._live.pop(id(task), None)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            got = await read_request(reader, REQUEST_TIMEOUT_S)
        except StreamingError as exc:
            await write_error(writer, exc.status or 400, str(exc))
            return
        except (TimeoutError, ConnectionError, OSError):
            return
        if got is None:
            return
        req, leftover = got
        parts = req.path.strip("/").split("/")
        if len(parts) != 2 or parts[0] not in ("exec", "attach", "portforward"):
            await write_error(writer, 404, "not found")
            return
        if req.method not in ("GET", "POST"):
            await write_error(writer, 405, f"method {req.method} not allowed")
            return
        kind, token = parts
        stored = self.tokens.consume(kind, token)
        if stored is None:
            await write_error(writer, 404, "unknown, used or expired streaming token")
            return
        upgrade = req.upgrade()
        if upgrade == "websocket":
            await self._serve_websocket(kind, stored, req, leftover, reader, writer)
        elif upgrade == "spdy/3.1":
            await self._serve_spdy(kind, stored, req, leftover, reader, writer)
        else:
            await write_error(writer, 400, "upgrade request required: SPDY/3.1 or websocket")

    def _track(self, f: Callable[[], int]) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._live[id(task)] = f

    async def _serve_spdy(self, kind: str, stored: Request, req: HTTPRequest, leftover: bytes,
                          reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        supported = portforward.SPDY_PROTOCOLS if kind == "portforward" else remotecommand.SPDY_PROTOCOLS
        offered = req.header_list("x-stream-protocol-version")
        chosen = ""
        if offered:
            chosen = next((p for p in supported if p in offered), "")
            if not chosen:
                await write_error(writer, 403, f"unable to upgrade: unable to negotiate protocol: client supports "
                                  f"{offered}, server supports {supported}",
                                  [("X-Accepted-Stream-Protocol-Versions", p) for p in supported])
                return
        headers = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]
        if chosen:
            headers.append(("X-Stream-Protocol-Version", chosen))
        writer.write(response_bytes(101, headers))

        if isinstance(stored, PortForwardRequest):
            pf = portforward.SpdyPortForward(stored, self.backend)
            conn = SpdyConnection(reader, writer, server=True, on_stream=pf.on_stream, initial_data=leftover)
            self._track(lambda: conn.write_buffer_size() + sum(s.buffered for s in list(conn.streams.values())))
            conn.start()
            await pf.run(conn)
            return

        streams: dict[str, SpdyStream] = {}
        arrived = asyncio.Event()
        conn = SpdyConnection(reader, writer, server=True, initial_data=leftover,
                              on_stream=remotecommand.spdy_stream_acceptor(streams, arrived, stored))
        conn.start()
        try:
            expected = remotecommand.expected_spdy_streams(stored, chosen)
            if not await remotecommand.collect_spdy_streams(streams, arrived, expected, conn.closed):
                log.info("%s: client did not create its streams; closing", kind)
                return
            channels = remotecommand.SpdyChannels(conn, streams, chosen, stored.tty)
            self._track(channels.buffered)
            await remotecommand.serve(kind, stored, self.backend, channels)
        finally:
            await conn.abort()

    async def _serve_websocket(self, kind: str, stored: Request, req: HTTPRequest, leftover: bytes,
                               reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ports: list[int] = []
        if isinstance(stored, PortForwardRequest):
            if stored.ports:
                ports = list(stored.ports)
            else:
                try:
                    ports = portforward.parse_ports(req.query.get("port", []) + req.query.get("ports", []))
                except ValueError as exc:
                    await write_error(writer, 400, f"bad port query parameter: {exc}")
                    return
                if not ports:
                    await write_error(writer, 400, 'query parameter "port" is required')
                    return
        choose = portforward.WS_PROTOCOLS if kind == "portforward" else remotecommand.WS_PROTOCOLS
        try:
            ws, protocol, response = server_handshake(req.headers, req.target, choose)
        except StreamingError as exc:
            await write_error(writer, exc.status or 400, str(exc))
            return
        writer.write(response)
        sock = ChannelSocket(ws, reader, writer, protocol, leftover)
        self._track(sock.write_buffer_size)
        if isinstance(stored, PortForwardRequest):
            await portforward.serve_websocket(sock, stored, ports, self.backend)
            return
        channels = remotecommand.WebSocketChannels(sock, stored)
        try:
            await channels.start()
            await remotecommand.serve(kind, stored, self.backend, channels)
        except (ConnectionError, OSError):
            await channels.abort()
        finally:
            if not sock.closed.is_set():
                await channels.abort()
