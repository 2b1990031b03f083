"""The real guest-agent services, served in-process, driven by the real AgentClient."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from frakpy import errors
from frakpy.agent.client import AgentClient, HealthStatus
from frakpy.agent.transport import open_stream, parse_uri
from tests.fakes.agent import FAKE_BOOT_ID, FakeAgent

REPO = Path(__file__).resolve().parents[3]
SID = "4c1d8f2a9b7e6d5c4b3a29180716f5e4d3c2b1a0f9e8d7c6b5a4938271605f4e"


@pytest.fixture
async def client(agent: FakeAgent):  # type: ignore[no-untyped-def]
    c = await AgentClient.connect(agent.uri, timeout=5, sandbox_id=SID)
    yield c
    await c.close()


async def test_health_and_guest_details(client: AgentClient, agent: FakeAgent) -> None:
    assert await client.health() is HealthStatus.SERVING
    d = await client.guest_details()
    assert d.kernel_release == os.uname().release
    assert d.mem_total_bytes == 262144 * 1024
    assert d.boot_id == FAKE_BOOT_ID
    assert d.agent_version == "0.1.0"
    assert 0 < d.agent_start_uptime <= d.agent_ready_uptime <= d.uptime
    assert d.sandbox_id == ""


async def test_setup_sandbox_applies_everything(client: AgentClient, agent: FakeAgent) -> None:
    before = time.time_ns()
    res = await client.setup_sandbox(
        SID, hostname="web-0", dns_servers=["10.96.0.10", "fd00::a"], dns_searches=["ns.svc.cluster.local",
                                                                                    "svc.cluster.local"],
        dns_options=["ndots:5"], hosts={"10.0.0.5": ["web-0.web", "web-0"]})
    sys_ = agent.system
    assert res.clock_set and res.entropy_bits_credited == 64 * 8
    assert sys_.hostname == "web-0"
    assert before <= sys_.realtime_ns <= time.time_ns()
    assert len(sys_.entropy[0]) == 64
    assert sys_.etc["resolv.conf"] == ("nameserver 10.96.0.10\nnameserver fd00::a\n"
                                       "search ns.svc.cluster.local svc.cluster.local\noptions ndots:5\n")
    assert sys_.etc["hosts"].splitlines() == [
        "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback", "10.0.0.5\tweb-0.web web-0"]
    # entropy and clock come before everything else
    assert [c[0] for c in sys_.calls][:2] == ["add_entropy", "set_realtime_ns"]
    assert (await client.guest_details()).sandbox_id == SID
    # idempotent for the same sandbox, refused for another one
    await client.setup_sandbox(SID, realtime_ns=0, rng_seed=b"")
    with pytest.raises(errors.FailedPrecondition, match="already belongs to sandbox"):
        await client.setup_sandbox("other", realtime_ns=0, rng_seed=b"")


async def test_setup_sandbox_leaves_unset_parts_alone(client: AgentClient, agent: FakeAgent) -> None:
    res = await client.setup_sandbox(SID, realtime_ns=0, rng_seed=b"")
    assert not res.clock_set and res.entropy_bits_credited == 0
    assert agent.system.calls == []


@pytest.mark.parametrize("kwargs, match", [
    ({"hostname": "bad host"}, "not a valid host name"),
    ({"hostname": "x" * 65}, "longer than 64"),
    ({"dns_servers": ["not-an-ip"]}, "not an IP address"),
    ({"dns_servers": ["1.1.1.1"], "dns_searches": ["a b"]}, "whitespace"),
    ({"hosts": {"10.0.0.1": []}}, "needs names"),
    ({"rng_seed": b"x" * 5000}, "at most 4096"),
])
async def test_setup_sandbox_validates(client: AgentClient, agent: FakeAgent, kwargs, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(errors.InvalidArgument, match=match):
        await client.setup_sandbox(SID, **kwargs)
    assert agent.system.calls == []  # nothing applied when the request is invalid


async def test_setup_sandbox_os_errors_are_mapped(client: AgentClient, agent: FakeAgent) -> None:
    agent.system.fail["set_realtime_ns"] = PermissionError(1, "Operation not permitted")
    with pytest.raises(errors.FrakpyError, match="setting the realtime clock") as exc:
        await client.setup_sandbox(SID)
    assert "PERMISSION_DENIED" in str(exc.value)


async def test_shutdown_syncs_answers_then_powers_off(client: AgentClient, agent: FakeAgent) -> None:
    await client.shutdown()
    await asyncio.sleep(0.01)
    assert [c[0] for c in agent.system.calls] == ["sync", "power_off"]
    assert await client.health() is HealthStatus.NOT_SERVING


async def test_calls_log_at_debug_under_the_sandbox_logger(client: AgentClient, caplog) -> None:  # type: ignore[no-untyped-def]
    with caplog.at_level(logging.DEBUG, logger="frakpy.agent"):
        await client.health()
    names = {r.name for r in caplog.records}
    assert f"frakpy.agent.{SID[:12]}" in names
    assert any("Health" in r.getMessage() for r in caplog.records)


async def test_disconnect_maps_to_unavailable(client: AgentClient, agent: FakeAgent) -> None:
    await client.health()
    agent.drop_connections()
    with pytest.raises(errors.Unavailable):
        for _ in range(50):  # the drop may land between calls
            await client.health()
            await asyncio.sleep(0.01)
    assert client.closed


async def test_deadline_exceeded(tmp_path: Path) -> None:
    # a socket that accepts but never answers (like QEMU's chardev while the guest still boots)
    path = tmp_path / "silent.sock"
    listener = await asyncio.start_unix_server(lambda r, w: None, path=str(path))
    try:
        client = await AgentClient.connect(f"serial://{path}", timeout=2)
        with pytest.raises(errors.DeadlineExceeded):
            await client.health(timeout=0.1)
        await client.close()
    finally:
        listener.close()


async def test_unimplemented_maps_by_name(client: AgentClient) -> None:
    from frakpy.agent.protocol import agent_pb2 as pb

    with pytest.raises(errors.Unimplemented):
        await client._call("NoSuchMethod", pb.HealthRequest(), pb.HealthResponse, 2)


def test_parse_uri() -> None:
    assert parse_uri("serial:///run/vm/agent.sock") == ("serial", "/run/vm/agent.sock")
    assert parse_uri("vsock://42:1024") == ("vsock", (42, 1024))
    for bad in ("serial://relative/x", "vsock://2:1024", "vsock://abc", "tcp://x:1", "/plain/path"):
        with pytest.raises(errors.InvalidArgument):
            parse_uri(bad)


async def test_open_stream_missing_socket_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(errors.Unavailable, match="does not exist"):
        await open_stream(f"serial://{tmp_path}/nope.sock", timeout=1)


async def test_open_stream_without_vsock_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(socket, "AF_VSOCK", raising=False)
    with pytest.raises(errors.Unavailable, match="AF_VSOCK"):
        await open_stream("vsock://3:1024", timeout=1)


async def test_virtio_port_listener_sessions() -> None:
    """The port code path (custom transport on a raw fd) serves a session and survives its end."""
    from frakpy_guest.server import build_server
    from frakpy_guest.services import AgentState
    from frakpy_guest.vport import PortListener

    from tests.fakes.agent import FakeSystem

    guest, host = socket.socketpair()
    guest.setblocking(False)
    server = build_server(AgentState(FakeSystem()))
    listener = PortListener(guest.fileno(), server.serve, use_sigio=False, max_probe_delay=0.05)
    task = asyncio.create_task(listener.run())
    try:
        reader, writer = await asyncio.open_connection(sock=host)
        from frakpy.agent.protocol import ttrpc

        client = AgentClient(ttrpc.Client(reader, writer))
        assert await client.health(timeout=5) is HealthStatus.SERVING
        big = await asyncio.gather(*(client.guest_details(timeout=5) for _ in range(50)))
        assert all(d.boot_id == FAKE_BOOT_ID for d in big)
        await client.close()  # host goes away: the session ends, the listener keeps waiting
        for _ in range(100):
            if server.active_connections == 0:
                break
            await asyncio.sleep(0.01)
        assert server.active_connections == 0 and listener.sessions == 1 and not task.done()
    finally:
        task.cancel()
        guest.close()


def test_guest_agent_import_footprint() -> None:
    """What the guest imports before serving: no ssl, nothing heavy we do not need."""
    code = (
        "import sys; sys.modules['ssl'] = None; import asyncio, logging;"
        "import frakpy_guest.server, frakpy_guest.vport, frakpy_guest.system, frakpy_guest.init;"
        "from frakpy_guest.services import info, sandbox;"
        "print(' '.join(sorted(m for m in sys.modules if sys.modules[m] is not None)))"
    )
    import google.protobuf

    site = Path(google.protobuf.__file__).parents[2]  # the guest keeps protobuf next to the agent
    env = {"PYTHONPATH": os.pathsep.join(map(str, (REPO, REPO / "guest-agent", site))),
           "PATH": os.environ.get("PATH", "")}
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env,
                         check=True)
    mods = set(out.stdout.split())
    assert "frakpy.agent.protocol.agent_pb2" in mods
    for heavy in ("ssl", "dataclasses", "ipaddress", "tempfile", "json", "urllib", "frakpy.errors",
                  "frakpy_guest.netconf", "grpc", "ctypes"):
        assert heavy not in mods, heavy


def test_linux_system_writes_etc_through_symlinks(tmp_path: Path) -> None:
    from frakpy_guest.system import LinuxSystem

    etc, run = tmp_path / "etc", tmp_path / "run"
    etc.mkdir()
    (etc / "resolv.conf").symlink_to(run / "frakpy" / "resolv.conf")
    system = LinuxSystem(etc=str(etc), overlay_dir=str(run / "overlay"))
    system.write_etc_file("resolv.conf", "nameserver 1.1.1.1\n")
    assert (run / "frakpy" / "resolv.conf").read_text() == "nameserver 1.1.1.1\n"


def test_reaper_dispatches_exit_codes_and_keeps_unclaimed() -> None:
    from frakpy_guest.init import Reaper

    reaper = Reaper()
    got: dict[int, int] = {}
    early = os.fork()
    if early == 0:
        os._exit(7)
    watched = os.fork()
    if watched == 0:
        os._exit(3)
    reaper.watch(watched, lambda code: got.__setitem__(watched, code))
    deadline = time.monotonic() + 5
    while len(got) < 1 or early not in reaper._unclaimed:
        reaper.reap()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert got == {watched: 3}
    reaper.watch(early, lambda code: got.__setitem__(early, code))  # exited before anyone asked
    assert got[early] == 7


def test_kmsg_record_parsing() -> None:
    from frakpy_guest.services.info import parse_kmsg

    assert parse_kmsg(b"6,312,567012,-;Run /init as init process\n") == (567_012_000, b"Run /init as init process")
    assert parse_kmsg(b"7,400,2034567,-,caller=T1;frakpy-agent: clock probe\n SUBSYSTEM=x\n") == (
        2_034_567_000, b"frakpy-agent: clock probe")


def test_kernel_clock_without_kmsg_is_unknown(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from frakpy_guest.services.info import kernel_clock

    assert kernel_clock(str(tmp_path / "no-kmsg")) == (0, 0)


def test_clock_from_log_reads_the_lag_and_init() -> None:
    from frakpy_guest.services.info import clock_from_log

    records = [b"6,1,0,-;Linux version 6.1\n",
               b"6,129,493138,-;sched_clock: Marking stable (460178407, 24438396)->(786526434, -301909631)\n",
               b"6,140,567281,-;Run /init as init process\n"]
    assert clock_from_log(records) == (786526434 - 460178407, 567_281_000)
    assert clock_from_log(records[2:]) == (0, 567_281_000)  # no such line (e.g. KVM): no correction
    assert clock_from_log([b"garbage"]) == (0, 0)


def test_root_mount_is_the_first_filesystem_on_slash() -> None:
    from frakpy_guest.services.info import root_mount

    mounts = ("/dev/root / erofs ro,relatime,dax=always,user_xattr 0 0\n"
              "devtmpfs /dev devtmpfs rw,relatime,size=120760k 0 0\n"
              "tmpfs / tmpfs rw 0 0\n")
    assert root_mount(mounts) == "/dev/root erofs ro,relatime,dax=always,user_xattr"
    assert root_mount("proc /proc proc rw 0 0\n") == ""
