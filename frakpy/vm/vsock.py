"""The host end of a VM's vsock device: a kernel vhost-vsock CID, or a userspace backend process.

- **kernel** (the host has ``/dev/vhost-vsock``): frakpyd opens the device, reserves a CID on that
  fd with ``VHOST_VSOCK_SET_GUEST_CID`` (EADDRINUSE: taken by another VM, try the next) and hands
  the fd to QEMU (``vhost-vsock-*,guest-cid=N,vhostfd=FD``); QEMU's own SET_GUEST_CID on the same
  fd is accepted by the kernel. CIDs handed out are remembered until released, so two live
  sandboxes never share one even across the moment between a QEMU exit and our noticing it.
- **user** (no ``/dev/vhost-vsock``): ``frakpy.vm.vsockdev`` runs as its own process in its own
  session (it outlives a daemon restart like QEMU), one end of a ``socketpair()`` is its vhost-user
  channel, the other is QEMU's ``-chardev socket,fd=N``; its host-side listening socket
  (``vsock.sock``) is bound here, before either process starts, so clients never race its
  creation. Pidfile ``vsock.pid``, log ``vsock.log``, all in the sandbox's run dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from frakpy.errors import FailedPrecondition, ResourceExhausted, Unavailable
from frakpy.vm.spec import VSOCK_LOG, VSOCK_PIDFILE, VSOCK_SOCKET, VMSpec

log = logging.getLogger("frakpy.vm.vsock")

VHOST_VSOCK_DEVICE = "/dev/vhost-vsock"
VHOST_VSOCK_SET_GUEST_CID = 0x4008AF60  # _IOW(VHOST_VIRTIO 0xAF, 0x60, __u64)
FIRST_CID = 3  # 0-2 are the hypervisor, local and host
LAST_CID = 0xFFFFFFFE  # U32_MAX is VMADDR_CID_ANY
USER_GUEST_CID = 3  # a userspace device is a network of its own: every guest can be CID 3
BACKEND_GRACE_S = 2.0  # a backend exits by itself once QEMU is gone; then it is killed


def backend_kind() -> str:
    """Which vsock device this host can give a VM: "kernel" or "user"."""
    return "kernel" if os.path.exists(VHOST_VSOCK_DEVICE) else "user"


Ioctl = Callable[[int, int, bytes], object]


class CidAllocator:
    """Guest CIDs reserved in the kernel through /dev/vhost-vsock fds."""

    def __init__(self, first: int = FIRST_CID, last: int = LAST_CID, *, device: str = VHOST_VSOCK_DEVICE,
                 ioctl: Ioctl = fcntl.ioctl, opener: Callable[[str], int] | None = None) -> None:
        self.first, self.last = first, last
        self.device = device
        self.live: set[int] = set()
        self._next = first
        self._ioctl = ioctl
        self._open = opener or (lambda path: os.open(path, os.O_RDWR | os.O_CLOEXEC))

    def reserve(self) -> tuple[int, int]:
        """(cid, fd): a vhost-vsock fd holding a CID no live sandbox has; the caller owns the fd."""
        try:
            fd = self._open(self.device)
        except OSError as exc:
            raise FailedPrecondition(f"cannot open {self.device} for a vsock CID: {exc} "
                                     "(load vhost_vsock, or set agent_transport = \"serial\")") from exc
        span = self.last - self.first + 1
        try:
            for step in range(span):
                cid = self.first + (self._next - self.first + step) % span
                if cid in self.live:
                    continue
                try:
                    self._ioctl(fd, VHOST_VSOCK_SET_GUEST_CID, cid.to_bytes(8, "little"))
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        continue  # another VM (maybe not ours) has it
                    raise Unavailable(f"{self.device}: setting guest CID {cid} failed: {exc}") from exc
                self.live.add(cid)
                self._next = cid + 1 if cid < self.last else self.first
                return cid, fd
            raise ResourceExhausted(f"no free vsock guest CID in {self.first}..{self.last}")
        except BaseException:
            os.close(fd)
            raise

    def mark(self, cid: int) -> None:
        """A CID held by a VM we adopted after a restart."""
        if cid:
            self.live.add(cid)

    def release(self, cid: int) -> None:
        self.live.discard(cid)


CIDS = CidAllocator()


# -- the userspace backend process ----------------------------------------------------------------
def backend_label(vm_id: str) -> str:
    return f"frakpy-vsock-{vm_id[:12]}"


def _listen(path: Path) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(16)
    except BaseException:
        sock.close()
        raise
    return sock


_children: dict[int, subprocess.Popen[bytes]] = {}  # backends this daemon started (reaped on stop)


def start_backend(spec: VMSpec) -> int:
    """Spawn the VM's vsock backend; returns QEMU's end of the vhost-user socketpair (caller closes)."""
    qemu_end, backend_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    listener: socket.socket | None = None
    try:
        listener = _listen(spec.vsock_socket)
        argv = [sys.executable, "-m", "frakpy.vm.vsockdev", "--vhost-fd", str(backend_end.fileno()),
                "--listen-fd", str(listener.fileno()), "--guest-cid", str(spec.vsock_cid),
                "--socket", str(spec.vsock_socket), "--name", backend_label(spec.vm_id)]
        with open(spec.run_dir / VSOCK_LOG, "ab") as logf:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                    pass_fds=(backend_end.fileno(), listener.fileno()),
                                    start_new_session=True, close_fds=True)
        _children[proc.pid] = proc
        spec.vsock_pidfile.write_text(f"{proc.pid}\n")
    except BaseException:
        qemu_end.close()
        with contextlib.suppress(FileNotFoundError):
            spec.vsock_socket.unlink()
        raise
    finally:
        backend_end.close()
        if listener is not None:
            listener.close()
    fd = qemu_end.detach()
    log.debug("vsock backend pid=%s for %s", proc.pid, spec.vm_id[:12])
    return fd


def is_our_backend(pid: int, vm_id: str) -> bool:
    """Whether pid is the live backend of vm_id. A child of this daemon is known by its Popen (its pid
    cannot be reused before we reap it, and just after exec its /proc cmdline is still empty: the
    kernel sets the argument area up after waking the parent); one started by an earlier daemon by
    its labelled command line."""
    proc = _children.get(pid)
    if proc is not None:
        return proc.poll() is None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return backend_label(vm_id).encode() in cmdline and state != "Z"


async def _wait_gone(pid: int, vm_id: str, timeout: float) -> bool:
    """Wait (on a pidfd) for the backend to exit; True once it has."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    loop = asyncio.get_running_loop()
    gone = asyncio.Event()
    loop.add_reader(pidfd, gone.set)
    try:
        if not is_our_backend(pid, vm_id):
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gone.wait(), timeout)
        return gone.is_set() or not is_our_backend(pid, vm_id)
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


async def stop_backend(run_dir: Path, vm_id: str, grace: float = BACKEND_GRACE_S) -> None:
    """Make sure the VM's backend is gone (its QEMU should be already) and its files with it."""
    pidfile = run_dir / VSOCK_PIDFILE
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        pid = 0
    if pid and is_our_backend(pid, vm_id) and not await _wait_gone(pid, vm_id, grace):
        log.warning("vsock backend pid=%s of %s outlived its VM; killing it", pid, vm_id[:12])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not await _wait_gone(pid, vm_id, 5.0):
            log.error("vsock backend pid=%s did not die after SIGKILL", pid)
    proc = _children.pop(pid, None)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1)
    for leftover in (pidfile, run_dir / VSOCK_SOCKET):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
