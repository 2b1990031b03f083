"""PID-1 duties: early mounts, cgroup v2, console, loopback, reaping orphans, power-off.

Runs before asyncio is imported, so it uses only builtins plus ctypes (for mount(2) and
reboot(2), which the standard library does not wrap). Nothing here runs when the agent is
started as an ordinary process (tests, debugging on a host).
"""

import os
import sys

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_RELATIME = 1 << 21
MS_BIND = 0x1000

RB_POWER_OFF = 0x4321FEDC

# (fstype, source, target, flags, data). Mount points on the read-only root must exist in the
# image; /dev/pts and /dev/shm are created on the devtmpfs.
EARLY_MOUNTS = (
    ("proc", "proc", "/proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RELATIME, None),
    ("sysfs", "sysfs", "/sys", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RELATIME, None),
    ("devtmpfs", "devtmpfs", "/dev", MS_NOSUID | MS_RELATIME, "mode=0755"),
    ("devpts", "devpts", "/dev/pts", MS_NOSUID | MS_NOEXEC | MS_RELATIME,
     "newinstance,ptmxmode=0666,mode=0620"),
    ("tmpfs", "shm", "/dev/shm", MS_NOSUID | MS_NODEV | MS_RELATIME, "mode=1777"),
    ("tmpfs", "tmpfs", "/run", MS_NOSUID | MS_NODEV | MS_RELATIME, "mode=0755"),
    ("tmpfs", "tmpfs", "/tmp", MS_NOSUID | MS_NODEV | MS_RELATIME, "mode=1777"),
    ("cgroup2", "cgroup2", "/sys/fs/cgroup", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RELATIME, "nsdelegate"),
)
CGROUP_CONTROLLERS = ("cpu", "cpuset", "memory", "pids", "io")
DEV_LINKS = (("/proc/self/fd", "/dev/fd"), ("/proc/self/fd/0", "/dev/stdin"),
             ("/proc/self/fd/1", "/dev/stdout"), ("/proc/self/fd/2", "/dev/stderr"),
             ("pts/ptmx", "/dev/ptmx"))

_libc = None


def _warn(msg: str) -> None:
    try:
        print(f"frakpy-agent: WARNING {msg}", file=sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):
        pass


def libc():  # type: ignore[no-untyped-def]
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def mount(source: str, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    import ctypes

    rc = libc().mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                      ctypes.c_ulong(flags), data.encode() if data else None)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype or source} on {target}: {os.strerror(err)}")


def bind_mount(source: str, target: str) -> None:
    mount(source, target, None, MS_BIND)


def setup_pid1() -> None:
    """Mount the API file systems, fix up /dev and the console, enable cgroup controllers."""
    os.umask(0o022)
    for fstype, source, target, flags, data in EARLY_MOUNTS:
        if target == "/dev/pts" or target == "/dev/shm":
            try:
                os.mkdir(target, 0o755)
            except FileExistsError:
                pass
            except OSError as exc:
                _warn(f"mkdir {target}: {exc}")
        if os.path.ismount(target):
            continue  # e.g. devtmpfs mounted by the kernel (CONFIG_DEVTMPFS_MOUNT)
        try:
            mount(source, target, fstype, flags, data)
        except OSError as exc:
            _warn(str(exc))
    _ensure_console()
    for src, dst in DEV_LINKS:
        try:
            if dst == "/dev/ptmx" and os.path.lexists(dst):
                os.unlink(dst)  # devtmpfs' ptmx belongs to the initial devpts instance
            os.symlink(src, dst)
        except FileExistsError:
            pass
        except OSError as exc:
            _warn(f"symlink {dst}: {exc}")
    enable_cgroup_controllers()


def _ensure_console() -> None:
    """Make fds 0-2 the console if the kernel could not open it (no /dev/console before devtmpfs)."""
    try:
        os.fstat(2)
        return
    except OSError:
        pass
    try:
        fd = os.open("/dev/console", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return
    for target in (0, 1, 2):
        if fd != target:
            os.dup2(fd, target)
    if fd > 2:
        os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115


def enable_cgroup_controllers(root: str = "/sys/fs/cgroup") -> list[str]:
    """Enable the container controllers for children of the root cgroup; returns those enabled."""
    enabled = []
    try:
        with open(f"{root}/cgroup.controllers") as f:
            available = f.read().split()
    except OSError as exc:
        _warn(f"cgroup v2 not available: {exc}")
        return enabled
    for name in CGROUP_CONTROLLERS:
        if name not in available:
            _warn(f"cgroup controller {name} not available in this kernel")
            continue
        try:
            with open(f"{root}/cgroup.subtree_control", "w") as f:
                f.write(f"+{name}")
            enabled.append(name)
        except OSError as exc:
            _warn(f"enable cgroup controller {name}: {exc}")
    return enabled


def cmdline_flag(flag: str) -> bool:
    """Whether ``flag`` (e.g. ``frakpy.debug=1``) is a word of the kernel command line."""
    try:
        with open("/proc/cmdline") as f:
            return flag in f.read().split()
    except OSError:
        return False


def cmdline_value(key: str, path: str = "/proc/cmdline") -> str | None:
    """The value of ``key=value`` on the kernel command line (the last one wins), None if absent."""
    try:
        with open(path) as f:
            words = f.read().split()
    except OSError:
        return None
    values = [w.partition("=")[2] for w in words if w.startswith(key + "=")]
    return values[-1] if values else None


def debug_requested() -> bool:
    """``frakpy.debug=1`` on the kernel command line turns on debug logging (not pod-specific)."""
    return cmdline_flag("frakpy.debug=1")


def bring_up_loopback() -> None:
    import fcntl
    import socket
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), siocgifflags, req))[1]
        if not flags & iff_up:
            fcntl.ioctl(s.fileno(), siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))


def power_off() -> None:
    """sync(2) then reboot(RB_POWER_OFF); does not return when it works (PID 1 only)."""
    os.sync()
    libc().reboot(RB_POWER_OFF)
    import ctypes

    err = ctypes.get_errno()
    raise OSError(err, f"reboot(RB_POWER_OFF): {os.strerror(err)}")


def on_signal(loop, signum: int, callback) -> None:  # type: ignore[no-untyped-def]
    """Run ``callback()`` in ``loop`` whenever signal ``signum`` arrives.

    Not ``loop.add_signal_handler``: its check that the callback is no coroutine function imports
    ``inspect`` (with dis, ast, tokenize), 0.2 s of a cold boot under TCG. Here the Python-level
    handler runs on the main thread (an epoll wait is interrupted and retried after it) and only
    queues the callback, waking the loop through its self-pipe."""
    import signal

    def handler(_signum: int, _frame: object) -> None:
        try:
            loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the loop is closed: shutting down
            pass

    signal.signal(signum, handler)


class Reaper:
    """Reaps every child, including orphans re-parented to PID 1.

    asyncio's child watchers are deliberately not used: as PID 1 we must collect every zombie,
    so one SIGCHLD handler loops over ``waitpid(-1, WNOHANG)`` and hands exit codes to whoever
    registered the pid (``watch``). Statuses of pids reaped before anyone registered are kept
    briefly, so a spawn/watch race cannot lose an exit code.
    """

    MAX_UNCLAIMED = 1024

    def __init__(self) -> None:
        self._watchers: dict[int, object] = {}
        self._unclaimed: dict[int, int] = {}
        self.reaped = 0

    def install(self, loop) -> None:  # type: ignore[no-untyped-def]
        import signal

        on_signal(loop, signal.SIGCHLD, self.reap)
        self.reap()  # children that exited before the handler existed

    def watch(self, pid: int, callback) -> None:  # type: ignore[no-untyped-def]
        """``callback(exit_code)`` once ``pid`` exits (negative code = killed by that signal)."""
        if pid in self._unclaimed:
            callback(self._unclaimed.pop(pid))
        else:
            self._watchers[pid] = callback

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            self.reaped += 1
            code = os.waitstatus_to_exitcode(status)
            callback = self._watchers.pop(pid, None)
            if callback is not None:
                try:
                    callback(code)  # type: ignore[operator]
                except Exception as exc:
                    _warn(f"exit callback of pid {pid} failed: {exc!r}")
            else:
                if len(self._unclaimed) >= self.MAX_UNCLAIMED:
                    self._unclaimed.pop(next(iter(self._unclaimed)))
                self._unclaimed[pid] = code
