"""An in-process guest agent for tests: the real ``frakpy_guest`` services over a unix socket.

PID-1 side effects (clock, RNG, hostname, /etc, power-off) go to a ``FakeSystem`` that records
them, so this runs unprivileged::

    async with FakeAgent(tmp_path, sandbox_hint="abc") as agent:
        client = await AgentClient.connect(agent.uri, timeout=2)
        ...
        assert agent.system.etc["hosts"].startswith("127.0.0.1")

``agent.uri`` is a ``serial://`` URI, exactly what frakpyd gets for QEMU's chardev socket.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path
from typing import Any

_GUEST = Path(__file__).resolve().parents[2] / "guest-agent"
if str(_GUEST) not in sys.path:
    sys.path.insert(0, str(_GUEST))

from frakpy_guest.server import build_server  # noqa: E402
from frakpy_guest.services import AgentState  # noqa: E402
from frakpy_guest.system import System  # noqa: E402

FAKE_BOOT_ID = "3f1c2a4e-5b6d-4e7f-8a9b-0c1d2e3f4a5b"
FAKE_MEMINFO = "MemTotal:         262144 kB\nMemFree:          200000 kB\n"


class FakeSystem(System):
    """Records every side effect instead of performing it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.hostname: str | None = None
        self.realtime_ns: int | None = None
        self.entropy: list[bytes] = []
        self.etc: dict[str, str] = {}
        self.synced = 0
        self.powered_off = False
        self.files = {"/proc/meminfo": FAKE_MEMINFO, "/proc/sys/kernel/random/boot_id": FAKE_BOOT_ID + "\n"}
        self.fail: dict[str, OSError] = {}  # method name -> error to raise
        self.mounts: list[tuple[str, str, str | None, int, str | None]] = []
        self.unmounted: list[str] = []
        self.sysctls: dict[str, str] = {}

    def _record(self, name: str, arg: Any) -> None:
        self.calls.append((name, arg))
        if name in self.fail:
            raise self.fail[name]

    def read_text(self, path: str) -> str:
        if path in self.files:
            return self.files[path]
        with open(path) as f:  # e.g. files under a FakeAgent's guest root
            return f.read()

    def set_hostname(self, name: str) -> None:
        self._record("set_hostname", name)
        self.hostname = name

    def set_realtime_ns(self, ns: int) -> None:
        self._record("set_realtime_ns", ns)
        self.realtime_ns = ns

    def add_entropy(self, seed: bytes) -> int:
        self._record("add_entropy", seed)
        self.entropy.append(seed)
        return 8 * len(seed)

    def write_etc_file(self, name: str, content: str) -> None:
        self._record("write_etc_file", name)
        self.etc[name] = content

    def sync(self) -> None:
        self._record("sync", None)
        self.synced += 1

    def power_off(self) -> None:
        self._record("power_off", None)
        self.powered_off = True

    def mount(self, source: str, target: str, fstype: str | None, flags: int = 0,
              data: str | None = None) -> None:
        """Recorded; an overlay is emulated by copying its lower dir into the target."""
        self._record("mount", (source, target, fstype, flags, data))
        self.mounts.append((source, target, fstype, flags, data))
        if fstype == "overlay" and data:
            opts = dict(kv.split("=", 1) for kv in data.split(",") if "=" in kv)
            shutil.copytree(opts["lowerdir"], target, symlinks=True, dirs_exist_ok=True)

    def umount(self, target: str) -> None:
        self._record("umount", target)
        self.unmounted.append(target)

    def write_sysctl(self, name: str, value: str) -> None:
        self._record("write_sysctl", (name, value))
        self.sysctls[name] = value

    async def start_ns_holder(self, reaper) -> int:  # type: ignore[no-untyped-def]
        self._record("start_ns_holder", None)
        return os.getpid()


class FakeAgent:
    """Serves the agent API on ``<directory>/agent.sock`` until ``stop()``."""

    def __init__(self, directory: str | Path, *, system: FakeSystem | None = None,
                 containers: bool = False) -> None:
        self.path = Path(directory) / "agent.sock"
        self.system = system or FakeSystem()
        self.state = AgentState(self.system)
        self.root = Path(directory) / "guest"
        if containers:
            self.crun_path = write_fake_crun(Path(directory) / "crun")
            self.state.runtime_options = {"root": str(self.root), "crun_binary": str(self.crun_path)}
        self.server = build_server(self.state)
        self._listener: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    @property
    def uri(self) -> str:
        return f"serial://{self.path}"

    async def start(self) -> FakeAgent:
        self._listener = await asyncio.start_unix_server(self._serve, path=str(self.path))
        self.state.ready_uptime_ns = self.state.start_uptime_ns + 1
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            await self.server.serve(reader, writer)
        finally:
            self._writers.discard(writer)

    def drop_connections(self) -> None:
        """Cut every host connection, like a VM dying under its clients."""
        for writer in list(self._writers):
            writer.transport.abort()

    async def stop(self) -> None:
        """Stop listening and cut existing connections."""
        if self._listener is not None:
            self._listener.close()
            self.drop_connections()
            await self._listener.wait_closed()
            self._listener = None

    async def __aenter__(self) -> FakeAgent:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        runtime = self.state.runtime
        if runtime is not None:  # kill what the fake crun started
            for c in list(runtime.containers.values()):
                for proc in [c.init, *c.execs.values()]:
                    if proc.pid and not proc.exited.is_set():
                        try:
                            os.kill(proc.pid, 9)
                        except ProcessLookupError:
                            pass
                    proc.close()

    def crun_calls(self) -> list[list[str]]:
        """The argument lists the fake crun was called with (after the global options)."""
        import json

        log = self.root / "run" / "crun" / "calls.jsonl"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]


def write_fake_crun(path: Path) -> Path:
    path.write_text(f"#!{sys.executable}\n" + FAKE_CRUN)
    path.chmod(0o755)
    return path


# A stand-in for crun 1.8: same command line, state kept under --root, no isolation at all:
# the container process runs on the host with the stdio crun was given (or a pty sent to
# --console-socket). "create" double-forks the init, which waits on a fifo until "start".
FAKE_CRUN = r"""
import json, os, signal, socket, sys, time

argv = sys.argv[1:]
opts = {}
while argv and argv[0].startswith("--"):
    k, _, v = argv.pop(0)[2:].partition("=")
    opts[k] = v
root = opts["root"]
os.makedirs(root, exist_ok=True)
with open(os.path.join(root, "calls.jsonl"), "a") as f:
    f.write(json.dumps(argv) + "\n")
cmd, args = argv[0], argv[1:]
flags, pos = {}, []
for a in args:
    if a.startswith("--"):
        k, _, v = a[2:].partition("=")
        flags[k] = v or True
    else:
        pos.append(a)


def fail(msg):
    with open(opts["log"], "a") as f:
        f.write(json.dumps({"msg": msg, "level": "error"}) + "\n")
    sys.exit(1)


def state_dir(cid):
    return os.path.join(root, cid)


def load(cid):
    try:
        with open(os.path.join(state_dir(cid), "state.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        fail(f"error opening file `{state_dir(cid)}/status`: No such file or directory")


def save(cid, st):
    with open(os.path.join(state_dir(cid), "state.json"), "w") as f:
        json.dump(st, f)


def alive(pid):
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def launch(process, wait_fifo=None):
    # returns the pid of a grandchild running process["args"] (orphaned once we exit)
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(r)
        os.setsid()
        pty_slave = None
        if process.get("terminal"):
            master, pty_slave = os.openpty()
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(flags["console-socket"])
            socket.send_fds(s, [b"pty"], [master])
            s.close()
            os.close(master)
        pid = os.fork()
        if pid:
            os.write(w, str(pid).encode())
            os._exit(0)
        if pty_slave is not None:
            for fd in (0, 1, 2):
                os.dup2(pty_slave, fd)
        if wait_fifo:
            with open(wait_fifo) as f:
                f.read(1)
        env = dict(e.split("=", 1) for e in process.get("env", []))
        env.setdefault("PATH", "/usr/bin:/bin")
        try:
            os.chdir(process.get("cwd") or "/")
        except OSError:
            pass
        os.execvpe(process["args"][0], process["args"], env)
    os.close(w)
    pid = int(os.read(r, 32))
    os.waitpid(child, 0)
    return pid


if cmd == "create":
    cid = pos[0]
    bundle = flags["bundle"]
    with open(os.path.join(bundle, "config.json")) as f:
        spec = json.load(f)
    os.makedirs(state_dir(cid))
    fifo = os.path.join(state_dir(cid), "exec.fifo")
    os.mkfifo(fifo)
    pid = launch(spec["process"], wait_fifo=fifo)
    save(cid, {"id": cid, "pid": pid, "status": "created", "bundle": bundle})
    with open(flags["pid-file"], "w") as f:
        f.write(str(pid))
elif cmd == "start":
    st = load(pos[0])
    with open(os.path.join(state_dir(pos[0]), "exec.fifo"), "w") as f:
        f.write("1")
    st["status"] = "running"
    save(pos[0], st)
elif cmd == "kill":
    st = load(pos[0])
    if not alive(st["pid"]):
        fail("container not running")
    os.kill(st["pid"], int(pos[1]) if len(pos) > 1 else 15)
elif cmd == "delete":
    d = state_dir(pos[0])
    if os.path.exists(d):
        st = load(pos[0])
        if alive(st["pid"]):
            if not flags.get("force"):
                fail("container is running")
            os.kill(st["pid"], 9)
        for name in os.listdir(d):
            os.unlink(os.path.join(d, name))
        os.rmdir(d)
elif cmd == "state":
    st = load(pos[0])
    st["status"] = st["status"] if alive(st["pid"]) else "stopped"
    print(json.dumps(st))
elif cmd == "exec":
    st = load(pos[0])
    if not alive(st["pid"]):
        fail("the container is not running")
    with open(flags["process"]) as f:
        process = json.load(f)
    pid = launch(process)
    with open(flags["pid-file"], "w") as f:
        f.write(str(pid))
elif cmd == "update":
    load(pos[0])
    with open(flags["resources"]) as f:
        json.load(f)
else:
    fail(f"unknown command {cmd}")
"""
