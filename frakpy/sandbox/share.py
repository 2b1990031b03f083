"""The per-sandbox virtio-9p share that carries CRI mounts (volumes) into a pod VM.

Host layout (nothing else of the host is exported)::

    <run_dir>/shares.mntns                    the volume mount namespace (nsfs bind, see below)
    <run_dir>/shares/<sandbox id>/            exported as 9p tag ``frakpy-share`` (qemu.argv.j2)
        <container id>-<n>                    one CRI mount: an empty dir (directory host_path) or
                                              an empty file (any other host_path), with the host
                                              path bind-mounted (recursively) onto it

**The binds live in a mount namespace of their own**, not in the node's: frakpyd creates one
per run dir (kept alive by binding its nsfs file onto ``shares.mntns``), containing only the
mounts that lead to the run dir. A bind is made by cloning the host path's mount tree in the
node's namespace (``open_tree``), adjusting the clone (read-only, propagation) and attaching it
in the volume namespace (``setns`` on a short-lived thread, ``move_mount``). QEMU gets the share
root as an fd opened *in* that namespace (``path=/proc/self/fd/N``); its 9p server resolves
every path relative to that fd, so it sees the binds, while in the node's namespace each entry
is an empty dir or file. So an ``rm -rf`` of the run dir, ``find``, backup tools or kubelet's
orphan cleanup can never reach volume data through frakpy's share, and nothing of the node is
visible beyond the mounted host paths.

The guest sees the share at ``guestpaths.SHARES_DIR`` once the agent mounted it (MountShare,
done lazily by the container manager at the first CreateContainer with mounts: QEMU cannot
migrate a VM with a mounted 9p export, so a VM template must never have it mounted), and each
container's spec bind-mounts ``SHARES_DIR/<entry>`` at the mount's ``container_path``.

Propagation of a bind: private, or slave for HostToContainer (mounts the node makes later
under a *shared* host path then show through the share). Read-only mounts are made read-only
recursively on the clone, so a compromised guest cannot write through QEMU either; the guest
sees one 9p mount, so its ``ro`` bind is recursive already.

Binds survive a daemon restart (the namespace is pinned by ``shares.mntns``); :func:`entries`
lets recovery find and drop those of containers that are gone. Removing an entry unmounts it
in the volume namespace and then rmdir's/unlinks the empty mount point: never recursive.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from frakpy import oscalls
from frakpy.oscalls import MNT_DETACH, MS_BIND, MS_REC

log = logging.getLogger("frakpy.sandbox.share")

TAG = "frakpy-share"  # 9p mount_tag (at most 31 characters)
MSIZE = 512000  # the most the guest's virtio 9p transport accepts (125 pages)
NS_FILE = "shares.mntns"

CLONE_FS = 0x200
CLONE_NEWNS = 0x20000
MS_RDONLY = 1
MS_REMOUNT = 32
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = 0o2000000
MOVE_MOUNT_F_EMPTY_PATH = 4
MOUNT_ATTR_RDONLY = 0x1
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3)
# x86_64 and aarch64 (the generic syscall table) alike
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442

_libc = oscalls.libc
_check = oscalls.check

T = TypeVar("T")


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def root(run_dir: Path) -> Path:
    return Path(run_dir) / "shares"


def share_dir(run_dir: Path, sandbox_id: str) -> Path:
    return root(run_dir) / sandbox_id


def entry_name(container_id: str, n: int) -> str:
    return f"{container_id}-{n}"


def container_of(name: str) -> str:
    return name.rsplit("-", 1)[0]


def _on_thread(fn: Callable[[], T]) -> T:
    return oscalls.on_thread(fn, "frakpy-volns")


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _mount_points(mountinfo: str = "/proc/thread-self/mountinfo") -> list[str]:
    with open(mountinfo) as f:
        return [_unescape(line.split()[4]) for line in f if line.strip()]


class VolumeNamespace:
    """The mount namespace holding every volume bind of one run dir (see the module doc)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.nsfile = self.run_dir / NS_FILE
        self._lock = threading.Lock()

    # -- the namespace itself ---------------------------------------------------------------
    def ensure(self) -> None:
        """Create (or find again after a restart) the namespace; idempotent."""
        with self._lock:
            if _is_mntns_file(self.nsfile):
                return
            self._create()

    def _create(self) -> None:
        run_dir = os.path.realpath(self.run_dir)
        os.makedirs(root(Path(run_dir)), mode=0o711, exist_ok=True)
        # a stale pin (file bound to nothing usable) is replaced
        _libc.umount2(str(self.nsfile).encode(), MNT_DETACH)
        with open(self.nsfile, "a"):
            pass
        ready, done = threading.Event(), threading.Event()
        box: dict[str, object] = {}

        def body() -> None:
            try:
                _check(_libc.unshare(CLONE_FS | CLONE_NEWNS), "unshare(CLONE_NEWNS)")
                _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / rprivate")
                # keep only the mounts leading to the run dir (and /proc): the copies of
                # everything else (netns binds, other tmpfs...) would be pinned by this namespace
                keep = {p for p in _mount_points() if run_dir == p or run_dir.startswith(p.rstrip("/") + "/")}
                keep.add("/proc")
                for p in sorted(set(_mount_points()) - keep, key=len, reverse=True):
                    _libc.umount2(p.encode(), MNT_DETACH)
                box["tid"] = threading.get_native_id()
            except BaseException as exc:
                box["error"] = exc
            ready.set()
            done.wait()  # stay in the namespace until it is pinned

        t = threading.Thread(target=body, name="frakpy-volns-create", daemon=True)
        t.start()
        ready.wait()
        try:
            if "error" in box:
                raise box["error"]  # type: ignore[misc]
            src = f"/proc/{os.getpid()}/task/{box['tid']}/ns/mnt"
            _check(_libc.mount(src.encode(), str(self.nsfile).encode(), None, MS_BIND, None),
                   "pinning the volume mount namespace on", str(self.nsfile))
        finally:
            done.set()
            t.join()
        log.info("volume mount namespace created (%s)", self.nsfile)

    def destroy(self) -> None:
        """Unpin the namespace (tests, a daemon given up): its binds go when QEMUs close them."""
        _libc.umount2(str(self.nsfile).encode(), MNT_DETACH)
        try:
            os.unlink(self.nsfile)
        except OSError:
            pass

    def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` on a thread that entered the namespace."""
        self.ensure()

        def inside() -> T:
            fd = os.open(self.nsfile, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _check(_libc.unshare(CLONE_FS), "unshare(CLONE_FS)")
                _check(_libc.setns(fd, CLONE_NEWNS), "setns into", str(self.nsfile))
            finally:
                os.close(fd)
            return fn()

        return _on_thread(inside)

    # -- shares -------------------------------------------------------------------------------
    def open_root(self, share: Path) -> int:
        """An fd of the share dir as the namespace sees it, for QEMU (``/proc/self/fd/N``)."""
        return self.run(lambda: os.open(share, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC))

    def bind(self, share: Path, name: str, host_path: str, *, readonly: bool = False,
             slave: bool = False) -> Path:
        """Bind ``host_path`` (file or directory, followed if a symlink) into the share as ``name``."""
        st = os.stat(host_path)
        target = share / name
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(target, 0o755)
        else:
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o644))
        tree = -1
        try:
            tree = _check(_libc.syscall(SYS_OPEN_TREE, AT_FDCWD, host_path.encode(),
                                        OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE),
                          "cloning the mount tree of", host_path)
            attr = _MountAttr(attr_set=MOUNT_ATTR_RDONLY if readonly else 0,
                              propagation=MS_SLAVE if slave else MS_PRIVATE)
            _check(_libc.syscall(SYS_MOUNT_SETATTR, tree, b"", AT_EMPTY_PATH | AT_RECURSIVE,
                                 ctypes.byref(attr), ctypes.sizeof(attr)), "setting up the bind of", host_path)
            fd = tree
            self.run(lambda: _check(_libc.syscall(SYS_MOVE_MOUNT, fd, b"", AT_FDCWD, str(target).encode(),
                                                  MOVE_MOUNT_F_EMPTY_PATH), "attaching a bind on", str(target)))
        except BaseException:
            self.unbind(target)
            raise
        finally:
            if tree >= 0:
                os.close(tree)
        return target

    def unbind(self, target: Path) -> bool:
        """Unmount whatever is on ``target`` (in the namespace) and remove the then empty mount
        point; never recursive. False when something could not be removed (logged)."""
        def umount() -> str:
            t = str(target).encode()
            for _ in range(16):  # stacked mounts: one per call
                if _libc.umount2(t, MNT_DETACH) != 0:
                    err = ctypes.get_errno()
                    return "" if err in (errno.EINVAL, errno.ENOENT) else os.strerror(err)
            return "too many stacked mounts"

        problem = self.run(umount)
        if problem:
            log.warning("unmounting %s: %s", target, problem)
            return False
        try:
            if target.is_dir() and not target.is_symlink():
                os.rmdir(target)
            else:
                os.unlink(target)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("share entry %s not removed: %s", target, exc)
            return False
        return True

    def mounted(self, under: Path) -> list[str]:
        """Mount points at or below ``under`` in the namespace (diagnostics, tests)."""
        prefix = str(under)
        return [p for p in self.run(_mount_points) if p == prefix or p.startswith(prefix.rstrip("/") + "/")]

    def unbind_container(self, share: Path, container_id: str) -> None:
        for name in entries(share):
            if container_of(name) == container_id:
                self.unbind(share / name)

    def destroy_share(self, share: Path) -> None:
        """Unmount and remove every entry, then the share dir itself (idempotent)."""
        for name in entries(share):
            self.unbind(share / name)
        try:
            os.rmdir(share)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("share %s not removed: %s", share, exc)


def _is_mntns_file(path: Path) -> bool:
    """True when ``path`` is a bound mount-namespace file (an nsfs inode of type mnt)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNS
    except OSError:
        return False
    finally:
        os.close(fd)


def create(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
    path.mkdir(mode=0o711, exist_ok=True)
    return path


def entries(share: Path) -> list[str]:
    try:
        return sorted(os.listdir(share))
    except FileNotFoundError:
        return []
