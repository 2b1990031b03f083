"""One QEMU process: render its argv, spawn it detached, adopt it after a restart, stop it.

QEMU runs in its own session (``setsid``) and writes a pidfile, so it outlives frakpyd.
Its QMP and agent sockets are bound by us and handed over as listening fds, so we can
connect the moment QEMU is spawned, without polling for a socket file to appear; after a
daemon restart the same paths still lead to QEMU's listeners. Exit is watched with a
pidfd (works for adopted processes that are not our children), never by polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import jinja2

from frakpy.errors import FailedPrecondition, FrakpyError, Unavailable
from frakpy.vm.qmp import QMP
from frakpy.vm.spec import VMSpec

_TEMPLATE_DIR = Path(__file__).parent
_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_TEMPLATE_DIR),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=False,
    autoescape=False,
)

PR_SET_THP_DISABLE = 41


# glibc malloc for QEMU: one arena (its vCPU thread would otherwise keep a second heap of ~3 MiB
# per VM) and freed memory returned sooner. Measured on idle template clones: ~0.5 MiB less PSS.
QEMU_MALLOC_TUNABLES = ("glibc.malloc.arena_max=1:glibc.malloc.trim_threshold=65536:"
                        "glibc.malloc.mmap_threshold=65536:glibc.malloc.top_pad=0")


def qemu_env(lib_dir: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    theirs = env.get("GLIBC_TUNABLES")
    env["GLIBC_TUNABLES"] = f"{QEMU_MALLOC_TUNABLES}:{theirs}" if theirs else QEMU_MALLOC_TUNABLES
    if lib_dir is not None:
        theirs = env.get("LD_LIBRARY_PATH")
        env["LD_LIBRARY_PATH"] = f"{lib_dir}:{theirs}" if theirs else str(lib_dir)
    return env


def disable_thp_for_children() -> None:
    """Turn off transparent huge pages for this process and everything it spawns.

    The flag is inherited across fork and exec, so setting it once in the daemon covers every
    QEMU without a preexec hook (which is unsafe in a threaded process). Saves ~8 MiB per idle VM.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)


def render_argv(spec: VMSpec) -> list[str]:
    text = _env.get_template("qemu.argv.j2").render(spec=spec)
    return [line for line in text.splitlines() if line != ""]


def _listen(path: Path) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(4)
    os.chmod(path, 0o600)
    return sock


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def is_our_qemu(pid: int, vm_id: str) -> bool:
    """True when ``pid`` is the QEMU we started for ``vm_id`` (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"frakpy-{vm_id[:12]}".encode() in cmdline and pid_alive(pid)


class QemuVM:
    """A running (or adopted) QEMU with its QMP connection and exit watch."""

    def __init__(self, spec: VMSpec, log: logging.Logger) -> None:
        self.spec = spec
        self.log = log
        self.pid: int | None = None
        self.qmp = QMP(spec.vm_id, log)
        self.exited = asyncio.Event()
        self.spawned_at = 0.0  # time.monotonic() at spawn
        self._popen: subprocess.Popen[bytes] | None = None
        self._pidfd: int | None = None

    # -- start -------------------------------------------------------------------------------
    async def start(self, extra_fds: tuple[int, ...] = ()) -> None:
        """Spawn QEMU and connect QMP; raises with QEMU's own error text when it fails."""
        spec = self.spec
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        qmp_sock = _listen(spec.qmp_path)
        agent_sock = _listen(spec.agent_path)
        try:
            spec.qmp_fd, spec.agent_fd = qmp_sock.fileno(), agent_sock.fileno()
            argv = render_argv(spec)
            spec.argv_path.write_text("\n".join(argv) + "\n")
            stderr_path = spec.run_dir / "qemu.stderr"
            # Popen returns as soon as QEMU is exec'd; its exit is watched with a pidfd below.
            with open(stderr_path, "wb") as errf:  # noqa: ASYNC230
                self.spawned_at = time.monotonic()
                self._popen = subprocess.Popen(  # noqa: ASYNC220
                    argv,
                    env=qemu_env(spec.qemu_lib_dir),
                    stdin=subprocess.DEVNULL,
                    stdout=errf,
                    stderr=errf,
                    pass_fds=(qmp_sock.fileno(), agent_sock.fileno(), *extra_fds),
                    start_new_session=True,
                    close_fds=True,
                )
        except FileNotFoundError as exc:
            raise FailedPrecondition(f"QEMU binary {spec.qemu_binary!r} not found: install qemu-system-x86") from exc
        finally:
            qmp_sock.close()
            agent_sock.close()
        self.pid = self._popen.pid
        self._watch_exit()
        self.log.debug("qemu spawned pid=%s argv=%s", self.pid, spec.argv_path)
        connect = asyncio.ensure_future(self.qmp.connect(spec.qmp_path))
        died = asyncio.ensure_future(self.exited.wait())
        done, _ = await asyncio.wait({connect, died}, return_when=asyncio.FIRST_COMPLETED)
        if connect not in done or connect.exception() is not None:
            connect.cancel()
            died.cancel()
            with contextlib.suppress(BaseException):
                await connect
            await self.kill()
            raise Unavailable(f"QEMU failed to start: {self.stderr_tail() or 'no error output'}")
        died.cancel()

    def stderr_tail(self, limit: int = 2000) -> str:
        try:
            return (self.spec.run_dir / "qemu.stderr").read_text(errors="replace")[-limit:].strip()
        except OSError:
            return ""

    def console_tail(self, limit: int = 1500) -> str:
        try:
            return self.spec.console_path.read_text(errors="replace")[-limit:].strip()
        except OSError:
            return ""

    # -- adopt after a daemon restart ---------------------------------------------------------
    async def adopt(self, pid: int) -> None:
        """Take over a QEMU started by an earlier frakpyd: watch it and reconnect QMP."""
        if not is_our_qemu(pid, self.spec.vm_id):
            raise Unavailable(f"QEMU pid {pid} of VM {self.spec.vm_id[:12]} is gone")
        self.pid = pid
        self._watch_exit()
        await self.qmp.connect(self.spec.qmp_path)

    def _watch_exit(self) -> None:
        assert self.pid is not None
        loop = asyncio.get_running_loop()
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            self._on_exit()
            return
        loop.add_reader(self._pidfd, self._on_exit)

    def _on_exit(self) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self._popen is not None:
            with contextlib.suppress(Exception):
                self._popen.wait(timeout=1)
        if not self.exited.is_set():
            self.log.info("qemu pid=%s exited", self.pid)
        self.exited.set()

    # -- stop ---------------------------------------------------------------------------------
    async def wait_exit(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.exited.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def quit(self, timeout: float = 3.0) -> bool:
        """Ask QEMU to exit over QMP; True once it has."""
        if self.exited.is_set():
            return True
        with contextlib.suppress(FrakpyError, OSError):
            await self.qmp.quit()
        return await self.wait_exit(timeout)

    async def kill(self) -> None:
        if self.pid is not None and not self.exited.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            if not await self.wait_exit(5.0):
                self.log.error("qemu pid=%s did not die after SIGKILL", self.pid)
        await self.qmp.disconnect()

    async def close(self) -> None:
        """Forget the process without stopping it (daemon shutdown)."""
        await self.qmp.disconnect()
        if self._pidfd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
