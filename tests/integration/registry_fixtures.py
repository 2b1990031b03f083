"""Real registries for image tests: distribution 2.8 (Debian ``docker-registry``) on 127.0.0.1.

Each :class:`Registry` runs its own process with its own config, storage dir and free port, and
always stops in ``close()``. Variants: anonymous, htpasswd (Basic), token auth against
:class:`TokenServer` (a real Docker token server: RS256 JWTs with an ``x5c`` header, signed by a
self-signed certificate the registry trusts via ``rootcertbundle``), and TLS with a self-signed
certificate. :class:`TamperProxy` sits in front of a registry to corrupt or cut blobs and to log
requests.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import http.server
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

REGISTRY_BIN = shutil.which("docker-registry") or shutil.which("registry")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_cert(directory: Path, name: str = "cert") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost (also usable as CA); returns (cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"frakpy test {name}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class Registry:
    def __init__(
        self,
        workdir: Path,
        *,
        htpasswd: dict[str, str] | None = None,
        token: TokenServer | None = None,
        tls: bool = False,
    ) -> None:
        assert REGISTRY_BIN, "docker-registry is not installed"
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.tls = tls
        self.ca_file: Path | None = None
        lines = [
            "version: 0.1",
            "log: {level: error, accesslog: {disabled: true}}",
            f"storage: {{filesystem: {{rootdirectory: {self.dir / 'data'}}}, delete: {{enabled: true}}}}",
            "http:",
            f"  addr: {self.host}",
            "  secret: frakpy-test-secret",
        ]
        if tls:
            cert, key = make_cert(self.dir, "registry")
            self.ca_file = cert
            lines.append(f"  tls: {{certificate: {cert}, key: {key}}}")
        if htpasswd:
            pw_file = self.dir / "htpasswd"
            pw_file.write_text(
                "".join(
                    subprocess.run(
                        ["htpasswd", "-Bbn", user, pw], check=True, capture_output=True, text=True
                    ).stdout.strip()
                    + "\n"
                    for user, pw in htpasswd.items()
                )
            )
            lines.append(f"auth: {{htpasswd: {{realm: frakpy-test, path: {pw_file}}}}}")
        if token:
            lines.append(
                f"auth: {{token: {{realm: '{token.url}/token', service: {token.service}, "
                f"issuer: {token.issuer}, rootcertbundle: {token.cert}}}}}"
            )
        self.config = self.dir / "config.yml"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = open(self.dir / "registry.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(self.config)], stdout=self.log, stderr=subprocess.STDOUT
        )
        self._wait()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def _wait(self) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"registry exited: {(self.dir / 'registry.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("registry did not start listening within 15 s")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class TokenServer:
    """A Docker v2 token server in a thread: grants pull/push to known users, pull to anonymous."""

    service = "frakpy-test-registry"
    issuer = "frakpy-test-issuer"

    def __init__(
        self,
        workdir: Path,
        users: dict[str, str],
        *,
        anonymous_pull: bool = False,
        refresh_tokens: dict[str, str] | None = None,
    ) -> None:
        from cryptography.hazmat.primitives import serialization

        workdir.mkdir(parents=True, exist_ok=True)
        self.cert, key_path = make_cert(workdir, "token-signer")
        self.key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        from cryptography import x509

        der = x509.load_pem_x509_certificate(self.cert.read_bytes()).public_bytes(serialization.Encoding.DER)
        self.x5c = base64.b64encode(der).decode()
        self.users = users
        self.anonymous_pull = anonymous_pull
        self.refresh_tokens = refresh_tokens or {}
        self.requests: list[dict[str, str]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                user = None
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    name, _, pw = base64.b64decode(header[6:]).decode().partition(":")
                    if server.users.get(name) != pw:
                        return self._reply(401, {"details": "bad credentials"})
                    user = name
                self._grant(user, query)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                if form.get("grant_type") != "refresh_token" or form.get("refresh_token") not in server.refresh_tokens:
                    return self._reply(401, {"details": "bad refresh token"})
                self._grant(server.refresh_tokens[form["refresh_token"]], form)

            def _grant(self, user: str | None, query: dict[str, str]) -> None:
                server.requests.append({"user": user or "", **query})
                access = []
                for scope in query.get("scope", "").split(" "):
                    if scope.count(":") < 2:
                        continue
                    kind, rest = scope.split(":", 1)
                    name, actions = rest.rsplit(":", 1)
                    if user:
                        granted = actions.split(",")
                    elif server.anonymous_pull:
                        granted = [a for a in actions.split(",") if a == "pull"]
                    else:
                        granted = []
                    access.append({"type": kind, "name": name, "actions": granted})
                token = server.sign(user or "", access)
                self._reply(200, {"token": token, "access_token": token, "expires_in": 300})

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def sign(self, subject: str, access: list[dict[str, object]]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr,call-arg]
        return f"{signing_input}.{b64(signature)}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class TamperProxy:
    """An HTTP reverse proxy (asyncio) in front of a registry that can corrupt or cut one blob.

    ``corrupt``: digests whose body gets one byte flipped. ``cut``: digests whose body stops halfway
    (connection closed). ``log``: request paths seen, with their Range header if any. ``sent``: body
    bytes written per blob digest. Range requests are passed on (the registry answers 206), and
    only whole-blob (200) answers are corrupted or cut. Bodies are buffered; fine for test images.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.corrupt: set[str] = set()
        self.cut: set[str] = set()
        self.log: list[str] = []
        self.sent: dict[str, int] = {}
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self._server: asyncio.base_events.Server | None = None
        self._client = httpx.AsyncClient(timeout=30)

    async def start(self) -> TamperProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self._client.aclose()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, target, _ = line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    h = (await reader.readline()).decode().rstrip("\r\n")
                    if not h:
                        break
                    k, _, v = h.partition(":")
                    headers[k.strip()] = v.strip()
                length = int(headers.get("Content-Length", "0") or 0)
                body = await reader.readexactly(length) if length else b""
                rng = next((v for k, v in headers.items() if k.lower() == "range"), "")
                self.log.append(f"{method} {target}" + (f" Range: {rng}" if rng else ""))
                fwd = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length", "connection")}
                resp = await self._client.request(method, self.upstream + target, headers=fwd, content=body)
                data = resp.content
                digest = target.split("?")[0].rsplit("/", 1)[-1]
                if "/blobs/" in target and method == "GET" and resp.status_code == 200:
                    if digest in self.corrupt and data:
                        data = bytes([data[0] ^ 0xFF]) + data[1:]
                out = [f"HTTP/1.1 {resp.status_code} {resp.reason_phrase}"]
                for k, v in resp.headers.multi_items():
                    if k.lower() not in (
                        "content-length",
                        "transfer-encoding",
                        "connection",
                        "content-encoding",
                    ):
                        out.append(f"{k}: {v}")
                out.append(f"Content-Length: {len(data)}")
                writer.write(("\r\n".join(out) + "\r\n\r\n").encode())
                blob_get = "/blobs/" in target and method == "GET"
                if blob_get and digest in self.cut and resp.status_code == 200:
                    writer.write(data[: len(data) // 2])
                    self.sent[digest] = self.sent.get(digest, 0) + len(data) // 2
                    await writer.drain()
                    writer.close()
                    return
                if method != "HEAD":
                    writer.write(data)
                    if blob_get:
                        self.sent[digest] = self.sent.get(digest, 0) + len(data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()


def blob_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def requirements_missing() -> str | None:
    """Why the registry integration tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (unpacks images with their owners and builds EROFS images)"
    if not REGISTRY_BIN:
        return "needs docker-registry (apt-get install docker-registry)"
    for tool in ("mkfs.erofs", "fsck.erofs"):
        if not shutil.which(tool):
            return f"needs {tool} (apt-get install erofs-utils)"
    if not shutil.which("htpasswd"):
        return "needs htpasswd (apt-get install apache2-utils)"
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return "needs the cryptography package (pip install cryptography)"
    return None
