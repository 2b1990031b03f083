"""Container state of the agent: images, containers, their processes, output and exit events.

Imported on the first container/storage RPC only (never at agent start). All guest paths go
through ``Runtime.p()`` so tests can root them in a temporary directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from typing import Any

from frakpy.agent.protocol import guestpaths as gp
from frakpy.agent.protocol.ttrpc import Code, TTRPCError
from frakpy_guest import crun as crun_mod
from frakpy_guest import iobuf, procs

MS_NOSUID, MS_NODEV, MS_RDONLY = 0x2, 0x4, 0x1
EXIT_GRACE = 2.0  # after an exit, how long output pipes may stay open (daemonised children)
CONSOLE_TIMEOUT = 30.0

CREATED, RUNNING, EXITED = "created", "running", "exited"


def err(code: int, message: str) -> TTRPCError:
    return TTRPCError(code, message)


def check_id(kind: str, ident: str) -> None:
    if not ident or ident in (".", "..") or "/" in ident or len(ident) > 128 or not ident.isprintable() \
            or any(c.isspace() for c in ident):
        raise err(Code.INVALID_ARGUMENT, f"{kind} {ident!r} is empty or malformed")


class Proc:
    """A container init (exec_id "") or exec process: pid, stdio, output buffer, exit."""

    def __init__(self, container_id: str, exec_id: str, capacity: int) -> None:
        self.container_id = container_id
        self.exec_id = exec_id
        self.buffer = iobuf.OutputBuffer(capacity or iobuf.DEFAULT_CAPACITY)
        self.pid = 0
        self.exit_code: int | None = None
        self.exited_at_ns = 0
        self.oom_killed = False
        self.stdin_fd: int | None = None
        self.tty_fd: int | None = None
        self.pumps: list[iobuf.Pump] = []
        self.exited = asyncio.Event()
        self._grace: asyncio.TimerHandle | None = None

    def pump(self, fd: int, stream: int) -> None:
        self.pumps.append(iobuf.Pump(fd, stream, self.buffer, self._pump_done))

    def _pump_done(self) -> None:
        if self.exited.is_set() and all(p.done for p in self.pumps):
            self.buffer.close()

    def mark_exited(self, code: int, oom: bool = False) -> None:
        self.exit_code = procs.exit_code(code)
        self.exited_at_ns = time.time_ns()
        self.oom_killed = oom
        self.exited.set()
        if not self.pumps or all(p.done for p in self.pumps):
            self.buffer.close()
        else:
            self._grace = asyncio.get_running_loop().call_later(EXIT_GRACE, self._end_lingering)

    def _end_lingering(self) -> None:
        """Pipes still open after the exit belong to leftover children: stop waiting for them,
        except while a pump is paused by flow control (its data is still wanted)."""
        self._grace = None
        paused = False
        for p in self.pumps:
            if p.paused:
                paused = True
            elif not p.done:
                p.finish()
        if paused:
            self._grace = asyncio.get_running_loop().call_later(EXIT_GRACE, self._end_lingering)
        self._pump_done()

    def close(self) -> None:
        """Drop every fd; readers end after what was buffered."""
        if self._grace is not None:
            self._grace.cancel()
        for p in self.pumps:
            p.finish()
        procs.close_quietly(self.stdin_fd, self.tty_fd)
        self.stdin_fd = self.tty_fd = None
        self.buffer.close()

    async def write_stdin(self, data: bytes) -> int:
        fd = self.tty_fd if self.tty_fd is not None else self.stdin_fd
        if fd is None:
            raise err(Code.FAILED_PRECONDITION, f"{self.describe()} has no stdin (closed or not requested)")
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        written = 0
        while written < len(view):
            try:
                written += os.write(fd, view[written:])
            except BlockingIOError:
                ready = loop.create_future()
                loop.add_writer(fd, lambda r=ready: r.done() or r.set_result(None))
                try:
                    await ready
                finally:
                    loop.remove_writer(fd)
            except BrokenPipeError as exc:
                raise err(Code.FAILED_PRECONDITION, f"{self.describe()}: stdin closed by the process") from exc
        return written

    def close_stdin(self) -> None:
        if self.tty_fd is not None:
            try:
                os.write(self.tty_fd, b"\x04")  # EOF for a canonical-mode tty
            except OSError:
                pass
        elif self.stdin_fd is not None:
            procs.close_quietly(self.stdin_fd)
            self.stdin_fd = None

    def describe(self) -> str:
        return f"container {self.container_id}" + (f" exec {self.exec_id}" if self.exec_id else "")


class Container:
    def __init__(self, cid: str, bundle: str, capacity: int) -> None:
        self.id = cid
        self.bundle = bundle
        self.init = Proc(cid, "", capacity)
        self.execs: dict[str, Proc] = {}
        self.spec: dict[str, Any] = {}
        self.image_id = ""
        self.status = "creating"
        self.created_at_ns = 0
        self.started_at_ns = 0
        self.cgroup_dir = ""
        self.oom_base = 0
        self.mounts: list[str] = []  # to unmount on delete, innermost first
        self.lock = asyncio.Lock()
        self.deleted = False

    @property
    def upper(self) -> str:
        return os.path.join(self.bundle, "upper")

    def proc(self, exec_id: str) -> Proc:
        if not exec_id:
            return self.init
        found = self.execs.get(exec_id)
        if found is None:
            raise err(Code.NOT_FOUND, f"container {self.id} has no exec process {exec_id!r}")
        return found


class EventLog:
    """Exit events with sequence numbers, kept until acknowledged or their container is deleted."""

    def __init__(self) -> None:
        self.seq = 0
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    def add(self, **event: Any) -> None:
        self.seq += 1
        event["seq"] = self.seq
        self.events.append(event)
        self._changed.set()
        self._changed = asyncio.Event()

    def ack(self, up_to: int) -> None:
        self.events = [e for e in self.events if e["seq"] > up_to]

    def drop_container(self, cid: str) -> None:
        self.events = [e for e in self.events if e["container_id"] != cid]

    async def stream(self, after: int):  # type: ignore[no-untyped-def]
        while True:
            changed = self._changed
            for e in list(self.events):
                if e["seq"] > after:
                    yield e
                    after = e["seq"]
            await changed.wait()


class Runtime:
    def __init__(self, state, *, root: str = "", crun_binary: str = crun_mod.DEFAULT_BINARY) -> None:  # type: ignore[no-untyped-def]
        self.state = state
        self.system = state.system
        self.root = root
        self.crun_binary = crun_binary
        self.containers: dict[str, Container] = {}
        self.images: dict[str, dict[str, Any]] = {}
        self.shares: dict[str, str] = {}
        self.events = EventLog()
        self.holder_pid = 0
        self._holder_lock = asyncio.Lock()
        self._image_lock = asyncio.Lock()
        self._crun: crun_mod.Crun | None = None
        self._n = 0

    def p(self, guest_path: str) -> str:
        return self.root + guest_path

    @property
    def reaper(self):  # type: ignore[no-untyped-def]
        return procs.get_reaper(self.state)

    @property
    def crun(self) -> crun_mod.Crun:
        if self._crun is None:
            self._crun = crun_mod.Crun(self.reaper, binary=self.crun_binary,
                                       state_root=self.p(crun_mod.DEFAULT_STATE_ROOT),
                                       scratch=self.p(gp.ROOT + "/crun"))
        return self._crun

    def get(self, cid: str) -> Container:
        c = self.containers.get(cid)
        if c is None or c.deleted:
            raise err(Code.NOT_FOUND, f"container {cid} not found in this pod VM")
        return c

    def next_n(self) -> int:
        self._n += 1
        return self._n

    # --- sandbox-wide pieces ---------------------------------------------------------------

    async def ensure_holder(self) -> int:
        async with self._holder_lock:
            if not self.holder_pid:
                self.holder_pid = await self.system.start_ns_holder(self.reaper)
                # the holder never exits while the VM lives; note it if it does
                self.reaper.watch(self.holder_pid, lambda code: setattr(self, "holder_pid", 0))
            return self.holder_pid

    def ensure_sandbox_files(self) -> None:
        """The bind-mount sources every spec names (hostname, hosts, resolv.conf, shm)."""
        sdir = self.p(gp.SANDBOX_DIR)
        os.makedirs(sdir, exist_ok=True)
        for name in ("hostname", "hosts", "resolv.conf"):
            path = os.path.join(sdir, name)
            if os.path.exists(path):
                continue
            if name == "hostname":
                content = socket.gethostname() + "\n"
            else:
                try:
                    content = self.system.read_text(self.p("/etc/" + name))
                except OSError:
                    content = "127.0.0.1\tlocalhost\n" if name == "hosts" else ""
            with open(path, "w") as f:
                f.write(content)
        shm = self.p(gp.sandbox_shm())
        if not os.path.isdir(shm):
            os.makedirs(shm, exist_ok=True)
            os.chmod(shm, 0o1777)

    # --- exits -----------------------------------------------------------------------------

    def read_oom_kills(self, c: Container) -> int:
        from frakpy_guest.services.stats import parse_flat

        try:
            with open(os.path.join(c.cgroup_dir, "memory.events")) as f:
                return parse_flat(f.read()).get("oom_kill", 0)
        except OSError:
            return 0

    def on_init_exit(self, c: Container, code: int) -> None:
        if c.deleted:
            return
        oom = self.read_oom_kills(c) > c.oom_base
        c.status = EXITED
        c.init.mark_exited(code, oom)
        self.events.add(container_id=c.id, exec_id="", pid=c.init.pid, exit_code=c.init.exit_code,
                        exited_at_ns=c.init.exited_at_ns, oom_killed=oom)

    def on_exec_exit(self, c: Container, proc: Proc, code: int) -> None:
        proc.mark_exited(code)
        if not c.deleted and proc.exec_id in c.execs:
            self.events.add(container_id=c.id, exec_id=proc.exec_id, pid=proc.pid,
                            exit_code=proc.exit_code, exited_at_ns=proc.exited_at_ns, oom_killed=False)

    # --- stdio -----------------------------------------------------------------------------

    def console_socket(self) -> tuple[socket.socket, str]:
        path = f"/tmp/frakpy-console-{os.getpid()}-{self.next_n()}.sock"  # short: sun_path limit
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        sock.listen(1)
        sock.setblocking(False)
        return sock, path


async def receive_pty(listener: socket.socket) -> int:
    """Accept crun's connection on the console socket and take the pty master (SCM_RIGHTS)."""
    loop = asyncio.get_running_loop()
    conn, _ = await loop.sock_accept(listener)
    try:
        while True:
            try:
                _msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 4)
            except BlockingIOError:
                ready = loop.create_future()
                loop.add_reader(conn.fileno(), lambda r=ready: r.done() or r.set_result(None))
                try:
                    await ready
                finally:
                    loop.remove_reader(conn.fileno())
                continue
            if not fds:
                raise OSError("crun closed the console socket without sending a terminal")
            for extra in fds[1:]:
                os.close(extra)
            return fds[0]
    finally:
        conn.close()


class Stdio:
    """The fds a process is started with, and the agent's ends of them."""

    def __init__(self, *, stdin: bool, tty: bool, runtime: Runtime) -> None:
        self.tty = tty
        self.child: dict[str, int | None] = {"stdin": None, "stdout": None, "stderr": None}
        self.ours: dict[str, int] = {}
        self.listener: socket.socket | None = None
        self.socket_path: str | None = None
        if tty:
            self.listener, self.socket_path = runtime.console_socket()
            return
        if stdin:
            r, w = procs.pipe()
            self.child["stdin"], self.ours["stdin"] = r, w
        for name in ("stdout", "stderr"):
            r, w = procs.pipe()
            self.child[name], self.ours[name] = w, r

    def close_child_ends(self) -> None:
        procs.close_quietly(*self.child.values())
        self.child = {"stdin": None, "stdout": None, "stderr": None}
        if self.listener is not None:
            self.listener.close()
            self.listener = None
            if self.socket_path:
                try:
                    os.unlink(self.socket_path)
                except FileNotFoundError:
                    pass

    def close_all(self) -> None:
        self.close_child_ends()
        procs.close_quietly(*self.ours.values())
        self.ours = {}

    def attach(self, proc: Proc, tty_fd: int | None) -> None:
        """Hand our ends to ``proc``: pumps for output, stdin kept for WriteStdin."""
        if tty_fd is not None:
            os.set_blocking(tty_fd, False)
            proc.tty_fd = os.dup(tty_fd)
            os.set_blocking(proc.tty_fd, False)
            proc.pump(tty_fd, iobuf.STDOUT)
        if "stdin" in self.ours:
            proc.stdin_fd = self.ours.pop("stdin")
            os.set_blocking(proc.stdin_fd, False)
        for name, stream in (("stdout", iobuf.STDOUT), ("stderr", iobuf.STDERR)):
            if name in self.ours:
                proc.pump(self.ours.pop(name), stream)


async def run_with_stdio(stdio: Stdio, start) -> tuple[int, int | None]:  # type: ignore[no-untyped-def]
    """Run ``start(stdio)`` (crun create/exec) while receiving the pty if there is one."""
    pty_task = asyncio.ensure_future(receive_pty(stdio.listener)) if stdio.listener is not None else None
    try:
        pid = await start()
        tty_fd = None
        if pty_task is not None:
            tty_fd = await asyncio.wait_for(pty_task, CONSOLE_TIMEOUT)
        return pid, tty_fd
    except BaseException:
        if pty_task is not None and not pty_task.done():
            pty_task.cancel()
        raise
    finally:
        stdio.close_child_ends()


def crun_error(exc: crun_mod.CrunError, what: str) -> TTRPCError:
    code = Code.NOT_FOUND if exc.not_found else Code.INTERNAL
    return err(code, f"{what}: {exc}")


def get(state) -> Runtime:  # type: ignore[no-untyped-def]
    rt = getattr(state, "runtime", None)
    if rt is None:
        opts = getattr(state, "runtime_options", None) or {}
        rt = state.runtime = Runtime(state, **opts)
    return rt


def signal_number(sig: int) -> int:
    if not 0 < sig < signal.NSIG:
        raise err(Code.INVALID_ARGUMENT, f"signal {sig} is out of range")
    return sig


def write_json(path: str, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f)
