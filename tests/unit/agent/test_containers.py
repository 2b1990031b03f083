"""Container RPCs end to end: real agent services + AgentClient, FakeSystem and a fake crun."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from frakpy import errors
from frakpy.agent.client import AgentClient, ContainerStatus, Stream
from frakpy.agent.protocol import guestpaths as gp
from tests.fakes.agent import FakeAgent

IMAGE = "img1"


@pytest.fixture
async def agent(tmp_path: Path):  # type: ignore[no-untyped-def]
    async with FakeAgent(tmp_path, containers=True) as fake:
        yield fake


def fake_disk(agent: FakeAgent, name: str, serial: str) -> None:
    dev = agent.root / "sys" / "block" / name / "device"
    dev.mkdir(parents=True, exist_ok=True)
    raw = serial.encode()
    (dev / "vpd_pg80").write_bytes(bytes([0, 0x80, 0, len(raw)]) + raw)
    (agent.root / "dev").mkdir(exist_ok=True)
    (agent.root / "dev" / name).touch()


async def mount_image(agent: FakeAgent, client: AgentClient) -> Path:
    fake_disk(agent, "sdb", "frakpy-img1")
    m = await client.mount_image(IMAGE, "frakpy-img1")
    path = agent.root / m.path.lstrip("/")
    (path / "etc").mkdir(parents=True, exist_ok=True)
    (path / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\nnginx:x:101:102::/:/bin/false\n")
    (path / "etc" / "group").write_text("root:x:0:\nnginx:x:102:\nwww:x:33:nginx\n")
    return path


def spec(args: list[str], **extra: object) -> dict:  # type: ignore[type-arg]
    s = {"ociVersion": "1.0.2", "process": {"args": args, "env": ["PATH=/usr/bin:/bin"], "cwd": "/",
                                            "user": {"uid": 0, "gid": 0}},
         "root": {"path": "rootfs"}, "annotations": {},
         "linux": {"namespaces": [{"type": "mount"}], "cgroupsPath": "/frakpy/sb/c1"}}
    s.update(extra)  # type: ignore[arg-type]
    return s


async def read_all(client: AgentClient, cid: str, **kw) -> list:  # type: ignore[no-untyped-def, type-arg]
    return [c async for c in client.read_output(cid, **kw)]


async def test_mount_image_waits_for_the_disk_and_is_idempotent(agent: FakeAgent, client: AgentClient) -> None:
    task = asyncio.ensure_future(client.mount_image("k", "late-serial", wait=5))
    await asyncio.sleep(0.3)
    assert not task.done()
    fake_disk(agent, "sdc", "late-serial")
    m = await task
    assert m.path == gp.image_mount("k") and m.device.endswith("/dev/sdc") and not m.already_mounted
    assert agent.system.mounts[-1][2:4] == ("erofs", 1)  # read-only
    assert (await client.mount_image("k", "late-serial")).already_mounted
    with pytest.raises(errors.DeadlineExceeded, match="no disk with serial"):
        await client.mount_image("other", "missing", wait=0.3)


async def test_create_start_exit_event_and_output(agent: FakeAgent, client: AgentClient) -> None:
    await mount_image(agent, client)
    events = client.events()
    pid = await client.create_container("c1", spec(["sh", "-c", "echo out; echo err >&2; exit 3"]),
                                        image_mount_id=IMAGE)
    assert pid > 0
    st = await client.container_state("c1")
    assert st.status is ContainerStatus.CREATED and st.pid == pid
    bundle = agent.root / gp.container_dir("c1").lstrip("/")
    config = json.loads((bundle / "config.json").read_text())
    assert config["root"]["path"] == gp.container_rootfs("c1")
    assert (bundle / "termination-log").exists()
    assert (agent.root / gp.SANDBOX_DIR.lstrip("/") / "hosts").exists()
    overlay = [m for m in agent.system.mounts if m[2] == "overlay"][0]
    assert "lowerdir=" + str(agent.root / gp.image_mount(IMAGE).lstrip("/")) in overlay[4]
    with pytest.raises(errors.FailedPrecondition, match="in use"):
        await client.unmount_image(IMAGE)

    await client.start_container("c1")
    ev = await asyncio.wait_for(events.__anext__(), 5)
    assert (ev.container_id, ev.exec_id, ev.exit_code, ev.pid) == ("c1", "", 3, pid)
    chunks = await asyncio.wait_for(read_all(client, "c1"), 5)
    by_stream = {s: b"".join(c.data for c in chunks if c.stream is s) for s in Stream}
    assert by_stream == {Stream.STDOUT: b"out\n", Stream.STDERR: b"err\n"}
    assert [c.offset for c in chunks] == sorted(c.offset for c in chunks)
    st = await client.container_state("c1")
    assert st.status is ContainerStatus.EXITED and st.exit_code == 3 and st.finished_at_ns >= st.started_at_ns > 0
    # resume from an offset: only what follows
    again = await read_all(client, "c1", from_offset=2)
    assert b"".join(c.data for c in again) and again[0].offset == 2
    await events.aclose()

    await client.delete_container("c1")
    await client.delete_container("c1")  # idempotent
    assert not bundle.exists()
    assert str(bundle / "rootfs") in agent.system.unmounted and str(bundle) in agent.system.unmounted
    with pytest.raises(errors.NotFound):
        await client.container_state("c1")
    await client.unmount_image(IMAGE)
    calls = [c[0] for c in agent.crun_calls()]
    assert calls == ["create", "start", "delete", "delete"][:len(calls)] or calls.count("create") == 1


async def test_events_replay_after_reconnect_until_acked(agent: FakeAgent, client: AgentClient) -> None:
    await mount_image(agent, client)
    for cid in ("a", "b"):
        await client.create_container(cid, spec(["true"]), image_mount_id=IMAGE)
        await client.start_container(cid)
        await client.wait_process(cid, timeout=5)
    await client.close()
    agent.drop_connections()

    c2 = await AgentClient.connect(agent.uri, timeout=5)
    stream = c2.events()
    got = [await asyncio.wait_for(stream.__anext__(), 5) for _ in range(2)]
    await stream.aclose()
    assert [e.container_id for e in got] == ["a", "b"] and got[0].seq < got[1].seq
    await c2.ack_events(got[0].seq)
    stream = c2.events()
    first = await asyncio.wait_for(stream.__anext__(), 5)
    assert first.container_id == "b"
    await stream.aclose()
    await c2.delete_container("b")  # deleting drops its events
    stream = c2.events()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(stream.__anext__(), 0.3)
    await c2.close()


async def test_output_flow_control_bounds_memory(agent: FakeAgent, client: AgentClient) -> None:
    await mount_image(agent, client)
    total = 1 << 20
    await client.create_container("big", spec(["sh", "-c", f"head -c {total} /dev/zero; echo done >&2"]),
                                  image_mount_id=IMAGE, log_buffer_bytes=8192)
    await client.start_container("big")
    rt = agent.state.runtime
    buf = rt.containers["big"].init.buffer
    await asyncio.sleep(0.5)
    assert buf.end - buf.acked <= 8192 and buf.retained <= 8192 + 65536
    assert not rt.containers["big"].init.exited.is_set()  # the writer is blocked, not dropped

    received = 0
    async for chunk in client.read_output("big"):
        assert chunk.offset == received  # nothing skipped
        received = chunk.end
        assert buf.retained <= 8192 + 65536
        await client.ack_output("big", chunk.end)
    assert received == total + len(b"done\n")
    assert (await client.wait_process("big", timeout=5)).exit_code == 0


async def test_exec_sync_output_exit_code_timeout_and_limit(agent: FakeAgent, client: AgentClient) -> None:
    await mount_image(agent, client)
    await client.create_container("c", spec(["sleep", "30"]), image_mount_id=IMAGE)
    with pytest.raises(errors.FailedPrecondition, match="not running"):
        await client.exec_sync("c", ["true"])
    await client.start_container("c")
    r = await client.exec_sync("c", ["sh", "-c", "echo hi; echo oops >&2; exit 7"])
    assert (r.stdout, r.stderr, r.exit_code, r.timed_out, r.truncated) == (b"hi\n", b"oops\n", 7, False, False)
    r = await client.exec_sync("c", ["sh", "-c", "head -c 100000 /dev/zero"], output_limit_bytes=1000)
    assert len(r.stdout) == 1000 and r.truncated and r.exit_code == 0
    r = await client.exec_sync("c", ["sleep", "30"], timeout_s=1)
    assert r.timed_out and r.exit_code == 128 + 9
    process = json.loads((agent.root / "run/crun").joinpath("calls.jsonl").read_text().splitlines()[-1])
    assert process[0] == "exec" and "--detach" in process
    await client.signal_container("c", 9)
    assert (await client.wait_process("c", timeout=5)).exit_code == 128 + 9


async def test_exec_start_stdin_and_wait(agent: FakeAgent, client: AgentClient) -> None:
    await mount_image(agent, client)
    await client.create_container("c", spec(["sleep", "30"]), image_mount_id=IMAGE)
    await client.start_container("c")
    events = client.events()
    await client.exec_start("c", "e1", {"args": ["sh", "-c", "read x; echo got $x; exit 4"]}, stdin=True)
    assert await client.write_stdin("c", b"hello\n", exec_id="e1", close=True) == 6
    out = b"".join([c.data async for c in client.read_output("c", exec_id="e1", auto_ack=True)])
    assert out == b"got hello\n"
    assert (await client.wait_process("c", exec_id="e1", timeout=5)).exit_code == 4
    ev = await asyncio.wait_for(events.__anext__(), 5)
    assert (ev.container_id, ev.exec_id, ev.exit_code) == ("c", "e1", 4)
    await events.aclose()
    with pytest.raises(errors.AlreadyExists):
        await client.exec_start("c", "e1", {"args": ["true"]})
    await client.delete_process("c", "e1")
    with pytest.raises(errors.NotFound):
        await client.wait_process("c", exec_id="e1", timeout=5)


async def test_exec_with_tty(agent: FakeAgent, client: AgentClient) -> None:
    await mount_image(agent, client)
    await client.create_container("c", spec(["sleep", "30"]), image_mount_id=IMAGE)
    await client.start_container("c")
    await client.exec_start("c", "t", {"args": ["sh", "-c", "test -t 1 && echo tty; stty size"]}, tty=True)
    await client.resize_tty("c", 100, 40, exec_id="t")
    out = b"".join([c.data async for c in client.read_output("c", exec_id="t", auto_ack=True)])
    assert out.startswith(b"tty")


async def test_user_annotation_placeholders_and_sysctls(agent: FakeAgent, client: AgentClient) -> None:
    await mount_image(agent, client)
    await client.create_container("first", spec(["sleep", "30"]), image_mount_id=IMAGE)
    s = spec(["true"], annotations={
        gp.ANN_USER: json.dumps({"user": "nginx", "group": "", "supplemental_groups": [5000]}),
        gp.ANN_VM_SYSCTLS: json.dumps({"net.core.somaxconn": "1024"}), "keep": "me"})
    s["linux"]["namespaces"] = [{"type": "mount"}, {"type": "ipc", "path": "@sandbox"},
                                {"type": "pid", "path": "@container:first"}]
    await client.create_container("second", s, image_mount_id=IMAGE)
    config = json.loads((agent.root / gp.container_dir("second").lstrip("/") / "config.json").read_text())
    assert config["process"]["user"] == {"uid": 101, "gid": 102, "additionalGids": [102, 33, 5000]}
    assert config["annotations"] == {"keep": "me"}
    first_pid = agent.state.runtime.containers["first"].init.pid
    holder = agent.state.runtime.holder_pid
    assert config["linux"]["namespaces"][1:] == [{"type": "ipc", "path": f"/proc/{holder}/ns/ipc"},
                                                 {"type": "pid", "path": f"/proc/{first_pid}/ns/pid"}]
    assert agent.system.sysctls == {"net.core.somaxconn": "1024"}
    bad = spec(["true"], annotations={gp.ANN_USER: json.dumps({"user": "nobody-here"})})
    with pytest.raises(errors.InvalidArgument, match="not found"):
        await client.create_container("third", bad, image_mount_id=IMAGE)
    missing = spec(["true"])
    missing["linux"]["namespaces"] = [{"type": "pid", "path": "@container:ghost"}]
    with pytest.raises(errors.FailedPrecondition, match="ghost"):
        await client.create_container("fourth", missing, image_mount_id=IMAGE)
    with pytest.raises(errors.FailedPrecondition, match="MountImage"):
        await client.create_container("fifth", spec(["true"]), image_mount_id="nope")
    with pytest.raises(errors.AlreadyExists):
        await client.create_container("first", spec(["true"]), image_mount_id=IMAGE)


async def test_container_stats_from_a_fake_cgroup(agent: FakeAgent, client: AgentClient) -> None:
    await mount_image(agent, client)
    await client.create_container("c1", spec(["sleep", "30"]), image_mount_id=IMAGE)
    cg = agent.root / "sys/fs/cgroup/frakpy/sb/c1"
    cg.mkdir(parents=True)
    (cg / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
    (cg / "memory.current").write_text("10000000\n")
    (cg / "memory.max").write_text("max\n")
    (cg / "memory.stat").write_text("anon 4000000\nfile 6000000\ninactive_file 2000000\npgfault 77\npgmajfault 3\n")
    (cg / "memory.events").write_text("low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n")
    upper = agent.root / gp.container_dir("c1").lstrip("/") / "upper"
    (upper / "data").write_bytes(b"x" * 10000)
    st = await client.container_stats("c1")
    assert st.cpu_usage_ns == 1_500_000 and st.memory_usage_bytes == 10_000_000
    assert st.memory_working_set_bytes == 8_000_000 and st.memory_rss_bytes == 4_000_000
    assert (st.page_faults, st.major_page_faults, st.oom_kills) == (77, 3, 1)
    assert st.writable_layer_inodes == 1 and st.writable_layer_bytes >= 10000
    # an oom_kill rise since create is reported with the exit
    await client.start_container("c1")
    await client.signal_container("c1", 9)
    ex = await client.wait_process("c1", timeout=5)
    assert ex.oom_killed and (await client.container_state("c1")).oom_killed


async def test_sandbox_stats(agent: FakeAgent, client: AgentClient) -> None:
    agent.system.files["/proc/meminfo"] = "MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 600 kB\n"
    agent.system.files["/proc/stat"] = "cpu  100 2 30 5000 7 1 1 0 0 0\ncpu0 1 1 1 1\n"
    agent.system.files["/proc/net/dev"] = (
        "Inter-|   Receive\n face |bytes\n"
        "    lo: 10 1 0 0 0 0 0 0 10 1 0 0 0 0 0 0\n"
        "  eth0: 500 5 1 0 0 0 0 0 700 7 2 0 0 0 0 0\n")
    st = await client.sandbox_stats()
    assert st.memory_total_bytes == 1024000 and st.memory_working_set_bytes == 400 * 1024
    assert st.cpu_usage_ns == (100 + 2 + 30 + 1 + 1 + 0) * 10_000_000
    assert [(i.name, i.rx_bytes, i.rx_errors, i.tx_bytes, i.tx_errors) for i in st.interfaces] == [
        ("eth0", 500, 1, 700, 2)]


async def test_update_resources_and_unknown_ids(agent: FakeAgent, client: AgentClient) -> None:
    await mount_image(agent, client)
    await client.create_container("c1", spec(["sleep", "30"]), image_mount_id=IMAGE)
    await client.start_container("c1")
    await client.update_container_resources("c1", {"memory": {"limit": 1 << 26}})
    assert [c for c in agent.crun_calls() if c[0] == "update"]
    for call in (client.start_container("zz"), client.container_stats("zz"), client.exec_sync("zz", ["x"]),
                 client.signal_container("zz", 15)):
        with pytest.raises(errors.NotFound):
            await call


async def test_share_mount(agent: FakeAgent, client: AgentClient) -> None:
    assert await client.mount_share("vols") == gp.SHARES_DIR
    assert await client.mount_share("vols") == gp.SHARES_DIR
    assert agent.system.mounts == [("vols", str(agent.root) + gp.SHARES_DIR, "9p", 0,
                                    "trans=virtio,version=9p2000.L,msize=512000,cache=mmap")]


def test_container_machinery_is_not_imported_at_start() -> None:
    import subprocess
    import sys

    code = ("import sys; sys.modules['ssl'] = None;"
            "from frakpy_guest.server import build_server; from frakpy_guest.services import AgentState;"
            "build_server(AgentState(None));"
            "print(' '.join(sorted(m for m in sys.modules if sys.modules[m] is not None)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[3],
                         env={"PYTHONPATH": ".:guest-agent", "PATH": "/usr/bin:/bin"})
    mods = set(out.stdout.split())
    for lazy in ("frakpy_guest.runtime", "frakpy_guest.crun", "frakpy_guest.iobuf", "json",
                 "frakpy_guest.services.container"):
        assert lazy not in mods, lazy
