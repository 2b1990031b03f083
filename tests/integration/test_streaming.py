"""Exec, attach and port-forward through a real frakpyd: CRI returns a URL of its streaming
server, our client (and the third-party ``websockets`` library) drive it into a pod VM."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from frakpy.cri.client import CRIError
from frakpy.cri.proto import api_pb2 as pb
from frakpy.streaming._http import StreamingError
from frakpy.streaming.client import PortForward, PortForwardError, RemoteCommand, exec_stream

from . import daemon_fixture as dfx
from .conftest import vm_requirements
from .registry_fixtures import requirements_missing

_missing = vm_requirements() or requirements_missing()
pytestmark = pytest.mark.skipif(_missing is not None, reason=_missing or "")

TOKEN_TTL_S = 3.0
WEB = ("mkdir -p /tmp/w1 /tmp/w2 && echo one > /tmp/w1/index.html && echo two > /tmp/w2/index.html && "
       "httpd -p 127.0.0.1:8080 -h /tmp/w1 && exec httpd -f -p 8081 -h /tmp/w2")


class Env:
    def __init__(self, d: dfx.Daemon, image: str, work: Path) -> None:
        self.d, self.image, self.work = d, image, work
        self.c = d.client()
        self.sb_cfg = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name="streams", namespace="test", uid="uid-streams"),
            hostname="streams", log_directory=str(work / "logs"))
        self.pod = self.c.call(self.c.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=self.sb_cfg)).pod_sandbox_id

    def run(self, name: str, command: list[str], **kw: Any) -> str:
        cfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=self.image),
                                 command=command, log_path=f"{name}/0.log", **kw)
        cid = self.c.call(self.c.runtime.CreateContainer, pb.CreateContainerRequest(
            pod_sandbox_id=self.pod, config=cfg, sandbox_config=self.sb_cfg)).container_id
        self.c.call(self.c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
        return cid

    def exec_url(self, cid: str, cmd: list[str], *, tty: bool = False, stdin: bool = False) -> str:
        return self.c.call(self.c.runtime.Exec, pb.ExecRequest(
            container_id=cid, cmd=cmd, tty=tty, stdin=stdin, stdout=True, stderr=not tty)).url

    def attach_url(self, cid: str, *, tty: bool = False, stdin: bool = True) -> str:
        return self.c.call(self.c.runtime.Attach, pb.AttachRequest(
            container_id=cid, tty=tty, stdin=stdin, stdout=True, stderr=not tty)).url

    def pf_url(self, ports: list[int] | None = None) -> str:
        return self.c.call(self.c.runtime.PortForward, pb.PortForwardRequest(
            pod_sandbox_id=self.pod, port=ports or [])).url


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    work = tmp_path_factory.mktemp("streaming")
    with dfx.daemon_with_image(work, f"[streaming]\ntoken_ttl_s = {TOKEN_TTL_S}\n") as (d, image, _base):
        e = Env(d, image, work)
        e.sleeper = e.run("sleeper", ["sleep", "3600"])  # type: ignore[attr-defined]
        e.web = e.run("web", ["sh", "-c", WEB])  # type: ignore[attr-defined]
        e.cat = e.run("cat", ["cat"], stdin=True)  # type: ignore[attr-defined]
        e.shell = e.run("shell", ["sh"], stdin=True, tty=True)  # type: ignore[attr-defined]
        try:
            yield e
        finally:
            e.c.close()


def arun(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 60))


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
def test_exec_echo(env: Env, transport: str) -> None:
    r = arun(exec_stream(env.exec_url(env.sleeper, ["echo", "hello", "world"]), transport=transport))
    assert (r.stdout, r.stderr, r.exit_code) == (b"hello world\n", b"", 0)
    r = arun(exec_stream(env.exec_url(env.sleeper, ["sh", "-c", "echo out; echo err >&2; exit 3"]),
                         transport=transport))
    assert (r.stdout, r.stderr, r.exit_code) == (b"out\n", b"err\n", 3)
    assert r.status and r.status["reason"] == "NonZeroExitCode"


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
def test_exec_stdin(env: Env, transport: str) -> None:
    data = b"".join(b"line %d\n" % i for i in range(20000))  # ~200 KB: several windows
    r = arun(exec_stream(env.exec_url(env.sleeper, ["cat"], stdin=True), transport=transport, stdin=data))
    assert r.exit_code == 0 and r.stdout == data


def test_exec_tty_and_resize(env: Env) -> None:
    async def main() -> bytes:
        url = env.exec_url(env.sleeper, ["sh", "-c", "read x; stty size; exit 4"], tty=True, stdin=True)
        async with RemoteCommand.connect(url, stdin=True, tty=True) as rc:
            await rc.resize(123, 45)
            await asyncio.sleep(0.3)
            await rc.send(b"go\n")
            r = await rc.wait()
            assert r.exit_code == 4
            return r.stdout

    out = arun(main())
    assert b"45 123" in out, out


def test_exec_errors(env: Env) -> None:
    c = env.c
    with pytest.raises(CRIError) as exc:
        c.call(c.runtime.Exec, pb.ExecRequest(container_id="nope", cmd=["ls"], stdout=True))
    assert exc.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(CRIError) as exc:
        c.call(c.runtime.Exec, pb.ExecRequest(container_id=env.sleeper, cmd=["ls"]))
    assert exc.value.code == grpc.StatusCode.INVALID_ARGUMENT and "one of stdin" in exc.value.details
    with pytest.raises(CRIError) as exc:
        c.call(c.runtime.Attach, pb.AttachRequest(container_id=env.sleeper, stdin=True, stdout=True))
    assert exc.value.code == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(CRIError) as exc:
        c.call(c.runtime.PortForward, pb.PortForwardRequest(pod_sandbox_id="nope", port=[80]))
    assert exc.value.code == grpc.StatusCode.NOT_FOUND
    r = arun(exec_stream(env.exec_url(env.sleeper, ["/no/such/binary"])))
    assert r.exit_code != 0 and r.status is not None


def test_exec_killed_when_the_client_goes_away(env: Env) -> None:
    async def main() -> None:
        url = env.exec_url(env.sleeper, ["sh", "-c", "echo started; exec sleep 1000"])
        async with RemoteCommand.connect(url) as rc:
            assert await rc.read() == (1, b"started\n")
        # the session closed: the process is killed and forgotten in the guest
        for _ in range(50):
            r = env.c.call(env.c.runtime.ExecSync, pb.ExecSyncRequest(
                container_id=env.sleeper, cmd=["sh", "-c", "ps | grep -c '[s]leep 1000' || true"], timeout=10))
            if r.stdout.strip() == b"0":
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"sleep 1000 still running: {r.stdout!r}")

    arun(main())


def test_attach_output_and_stdin(env: Env) -> None:
    async def main() -> None:
        async with RemoteCommand.connect(env.attach_url(env.cat), stdin=True) as rc:
            await rc.send(b"ping\n")
            got = b""
            while b"ping\n" not in got:
                item = await rc.read()
                assert item is not None
                got += item[1]
        async with RemoteCommand.connect(env.attach_url(env.cat), stdin=True, transport="websocket") as rc:
            await rc.send(b"pong\n")
            assert await rc.read() == (1, b"pong\n")

    arun(main())
    assert env.c.call(env.c.runtime.ContainerStatus, pb.ContainerStatusRequest(
        container_id=env.cat)).status.state == pb.CONTAINER_RUNNING  # no stdin_once: attach left it running


def test_attach_tty_shell(env: Env) -> None:
    async def main() -> bytes:
        async with RemoteCommand.connect(env.attach_url(env.shell, tty=True), stdin=True, tty=True) as rc:
            await rc.resize(100, 33)
            await rc.send(b"stty size; echo done-$((40+2))\n")
            got = b""
            while b"done-42" not in got:
                item = await rc.read()
                assert item is not None
                got += item[1]
            return got

    assert b"33 100" in arun(main())


async def http_get(pf: PortForward, port: int) -> bytes:
    s = await pf.open(port)
    await s.write(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    await s.close_write()
    body = b""
    while data := await s.read():
        body += data
    await s.close()
    return body


def test_port_forward_http_two_ports_many_requests(env: Env) -> None:
    async def main() -> None:
        async with PortForward.connect(env.pf_url()) as pf:
            for _ in range(3):
                r = await http_get(pf, 8080)
                assert r.startswith(b"HTTP/1.") and b" 200 " in r.split(b"\r\n")[0] and r.endswith(b"one\n"), r
            many = await asyncio.gather(*(http_get(pf, 8080 + i % 2) for i in range(8)))
            assert [r.endswith(b"two\n" if i % 2 else b"one\n") for i, r in enumerate(many)] == [True] * 8
            with pytest.raises(PortForwardError, match="8082.*connection refused"):
                await http_get(pf, 8082)
            assert (await http_get(pf, 8081)).endswith(b"two\n")  # the session survives an error

    arun(main())


def test_port_forward_websocket(env: Env) -> None:
    async def main() -> None:
        async with PortForward.connect(env.pf_url([8080, 8081]), transport="websocket", ports=[8080, 8081]) as pf:
            a, b = await asyncio.gather(http_get(pf, 8080), http_get(pf, 8081))
            assert a.endswith(b"one\n") and b.endswith(b"two\n")

    arun(main())


def wait_listening(env: Env, port: int, timeout: float = 20.0) -> None:
    """Until something listens on ``port`` in the pod (from /proc/net/tcp*: without connecting)."""
    deadline = time.monotonic() + timeout
    while True:
        r = env.c.call(env.c.runtime.ExecSync, pb.ExecSyncRequest(
            container_id=env.sleeper, cmd=["grep", "-qE", f":{port:04X} 0+:0000 0A",
                                                 "/proc/net/tcp", "/proc/net/tcp6"], timeout=10))
        if r.exit_code == 0:
            return
        assert time.monotonic() < deadline, f"nothing listens on port {port}"
        time.sleep(0.1)


def test_port_forward_bulk_data(env: Env) -> None:
    """Several MB each way through busybox nc in the pod: nothing lost, flow control holds.
    (nc ends the connection once either side reaches EOF, as does the forwarder: the upload
    keeps nc's stdin open with a fifo, the download never half-closes.)"""
    size = 8 << 20

    async def main() -> None:
        up = ["sh", "-c", "mkfifo /tmp/f9000; exec 3<>/tmp/f9000; nc -l -p 9000 <&3 > /tmp/up; wc -c < /tmp/up"]
        async with RemoteCommand.connect(env.exec_url(env.sleeper, up)) as rc:
            await asyncio.to_thread(wait_listening, env, 9000)
            async with PortForward.connect(env.pf_url()) as pf:
                s = await pf.open(9000)
                payload = bytes(range(256)) * (size // 256)
                for i in range(0, size, 1 << 16):
                    await s.write(payload[i:i + (1 << 16)])
                await s.close_write()
                assert await s.read() == b""
                await s.close()
            r = await rc.wait()
            assert r.stdout.strip() == str(size).encode()
        down = ["sh", "-c", f"head -c {size} /dev/zero | nc -l -p 9001"]
        async with RemoteCommand.connect(env.exec_url(env.sleeper, down)) as rc:
            await asyncio.to_thread(wait_listening, env, 9001)
            async with PortForward.connect(env.pf_url()) as pf:
                s = await pf.open(9001)
                n = 0
                while data := await s.read():
                    n += len(data)
                assert n == size
            assert (await rc.wait()).exit_code == 0

    arun(main())


def test_token_single_use_and_expiry(env: Env) -> None:
    async def main() -> None:
        url = env.exec_url(env.sleeper, ["true"])
        assert (await exec_stream(url)).exit_code == 0
        with pytest.raises(StreamingError) as exc:
            await exec_stream(url)
        assert exc.value.status == 404
        stale = env.exec_url(env.sleeper, ["true"])
        await asyncio.sleep(TOKEN_TTL_S + 0.5)
        with pytest.raises(StreamingError) as exc:
            await exec_stream(stale)
        assert exc.value.status == 404

    arun(main())


def test_exec_with_websockets_library(env: Env) -> None:
    """A third-party client: the `websockets` library speaking v5.channel.k8s.io."""
    from websockets.asyncio.client import connect

    url = env.exec_url(env.sleeper, ["echo", "from-websockets"]).replace("http://", "ws://", 1)

    async def main() -> tuple[bytes, dict[str, Any]]:
        out, status = b"", b""
        async with connect(url, subprotocols=["v5.channel.k8s.io"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "v5.channel.k8s.io"
            async for msg in ws:
                assert isinstance(msg, bytes)
                if msg[0] == 1:
                    out += msg[1:]
                elif msg[0] == 3:
                    status += msg[1:]
        return out, json.loads(status)

    out, status = arun(main())
    assert out == b"from-websockets\n" and status["status"] == "Success"


def test_exec_url_points_at_the_streaming_server(env: Env) -> None:
    t0 = time.monotonic()
    url = env.exec_url(env.sleeper, ["true"])
    assert url.startswith("http://127.0.0.1:") and "/exec/" in url and time.monotonic() - t0 < 5
