"""The host end of vsock: kernel CID allocation, the QEMU command line, the backend process."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import socket
from pathlib import Path

import pytest

from frakpy import errors
from frakpy.vm import template, vsock
from frakpy.vm.qemu import render_argv
from frakpy.vm.spec import VMSpec

MiB = 1 << 20


class FakeVhostVsock:
    """Stands in for /dev/vhost-vsock: CIDs other VMs hold answer EADDRINUSE."""

    def __init__(self, taken: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.taken = set(taken)
        self.asked: list[int] = []
        self.fds: list[int] = []

    def open(self, path: str) -> int:
        r, w = os.pipe()
        os.close(w)
        self.fds.append(r)
        return r

    def ioctl(self, fd: int, request: int, arg: bytes) -> int:
        assert request == vsock.VHOST_VSOCK_SET_GUEST_CID and len(arg) == 8
        cid = int.from_bytes(arg, "little")
        self.asked.append(cid)
        if cid in self.taken:
            raise OSError(errno.EADDRINUSE, "Address already in use")
        return 0


def allocator(dev: FakeVhostVsock, first: int = 3, last: int = 10) -> vsock.CidAllocator:
    return vsock.CidAllocator(first, last, ioctl=dev.ioctl, opener=dev.open)


def test_set_guest_cid_ioctl_number() -> None:
    # _IOW(0xAF, 0x60, __u64): write direction, 8 bytes
    assert vsock.VHOST_VSOCK_SET_GUEST_CID == (1 << 30) | (8 << 16) | (0xAF << 8) | 0x60


def test_cids_skip_taken_ones_and_are_never_shared_while_live() -> None:
    dev = FakeVhostVsock(taken={3, 4})
    cids = allocator(dev)
    a, fd_a = cids.reserve()
    b, fd_b = cids.reserve()
    assert (a, b) == (5, 6) and dev.asked == [3, 4, 5, 6]
    cids.release(a)
    c, fd_c = cids.reserve()
    assert c == 7  # next in turn, not the one just freed
    for fd in (fd_a, fd_b, fd_c):
        os.close(fd)


def test_live_cids_are_skipped_even_when_the_kernel_would_accept_them() -> None:
    dev = FakeVhostVsock()
    cids = allocator(dev, 3, 5)
    cids.mark(3)  # adopted after a restart: the kernel holds it for QEMU
    got = [cids.reserve() for _ in range(2)]
    assert [cid for cid, _ in got] == [4, 5]
    with pytest.raises(errors.ResourceExhausted, match="3..5"):
        cids.reserve()
    with pytest.raises(OSError):
        os.fstat(dev.fds[-1])  # the failed attempt closed its fd
    cids.release(4)
    cid, fd = cids.reserve()
    assert cid == 4  # wrapped around to the released one
    for _, f in got:
        os.close(f)
    os.close(fd)


def test_other_ioctl_errors_and_missing_device_are_clear() -> None:
    def broken(fd: int, request: int, arg: bytes) -> int:
        raise OSError(errno.EPERM, "Operation not permitted")
    cids = vsock.CidAllocator(3, 9, ioctl=broken, opener=FakeVhostVsock().open)
    with pytest.raises(errors.Unavailable, match="setting guest CID 3"):
        cids.reserve()
    missing = vsock.CidAllocator(device="/nonexistent/vhost-vsock")
    with pytest.raises(errors.FailedPrecondition, match="agent_transport"):
        missing.reserve()


# -- the command line ---------------------------------------------------------------------------
@pytest.fixture
def pod(tmp_path: Path) -> VMSpec:
    image = tmp_path / "rootfs.erofs"
    with open(image, "wb") as f:
        f.truncate(52 * MiB)
    return VMSpec(vm_id="b" * 64, run_dir=tmp_path / "run", kernel=tmp_path / "vmlinux", rootfs=image,
                  root_dax=True, tsc_khz=2000000, qmp_fd=3, agent_fd=4, transport="vsock", vsock_port=2049)


def args_after(argv: list[str], opt: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == opt]


def test_kernel_vsock_argv_passes_the_reserved_fd(pod: VMSpec) -> None:
    spec = dataclasses.replace(pod, vsock_backend="kernel", vsock_cid=17, vsock_fd=9)
    argv = render_argv(spec)
    assert "vhost-vsock-pci,guest-cid=17,vhostfd=9" in args_after(argv, "-device")  # microvm with pcie=on
    assert "memory-backend-ram,id=ram,size=256M" in args_after(argv, "-object")  # no shared RAM needed
    assert "frakpy.vsock_port=2049" in args_after(argv, "-append")[0].split()
    assert spec.agent_uri == "vsock://17:2049"
    mmio = render_argv(dataclasses.replace(spec, root_dax=False))
    assert "vhost-vsock-device,guest-cid=17,vhostfd=9" in args_after(mmio, "-device")


def test_userspace_vsock_argv_shares_guest_ram_with_the_backend(pod: VMSpec) -> None:
    spec = dataclasses.replace(pod, vsock_backend="user", vsock_cid=3, vsock_fd=11)
    argv = render_argv(spec)
    assert args_after(argv, "-object")[0] == "memory-backend-memfd,id=ram,size=256M,share=on"
    assert args_after(argv, "-numa") == ["node,memdev=ram", "node,memdev=rootfs"]  # the DAX root stays
    assert "socket,id=vsock,fd=11" in args_after(argv, "-chardev")
    assert "vhost-user-vsock-pci,chardev=vsock" in args_after(argv, "-device")
    assert spec.agent_uri == f"hvsock://{spec.run_dir}/vsock.sock:2049"
    disk = render_argv(dataclasses.replace(spec, root_dax=False))
    assert args_after(disk, "-M") == ["microvm,x-option-roms=off,memory-backend=ram"]
    assert "vhost-user-vsock-device,chardev=vsock" in args_after(disk, "-device")
    assert args_after(disk, "-object") == ["memory-backend-memfd,id=ram,size=256M,share=on"]


def test_serial_argv_has_no_vsock(pod: VMSpec) -> None:
    argv = render_argv(dataclasses.replace(pod, transport="serial"))
    assert not any(a.startswith(("vhost-", "socket,id=vsock")) or "vsock_port" in a for a in argv)
    assert "memory-backend-ram,id=ram,size=256M" in args_after(argv, "-object")


def test_vsock_pods_cold_boot(pod: VMSpec) -> None:
    why = template.unsupported(pod)
    assert "vsock" in why and "CID" in why and "vhost-user" in why


# -- the backend process ---------------------------------------------------------------------------
def _pid_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


async def test_backend_process_runs_in_its_own_session_and_leaves_with_qemu(pod: VMSpec) -> None:
    pod.run_dir.mkdir()
    pod.vsock_backend, pod.vsock_cid = "user", 3
    qemu_end = socket.socket(fileno=vsock.start_backend(pod))
    pid = int(pod.vsock_pidfile.read_text())
    assert vsock.is_our_backend(pid, pod.vm_id) and os.getsid(pid) == pid
    # a CONNECT client is answered even before any guest exists (it waits for the guest)
    reader, writer = await asyncio.open_unix_connection(str(pod.vsock_socket))
    writer.write(b"CONNECT x\n")
    assert (await asyncio.wait_for(reader.readline(), 30)).startswith(b"ERR EINVAL")
    writer.close()
    qemu_end.close()  # QEMU hangs up: the backend exits by itself
    await vsock.stop_backend(pod.run_dir, pod.vm_id, grace=30)
    assert _pid_gone(pid)
    assert not pod.vsock_socket.exists() and not pod.vsock_pidfile.exists()
    assert "exits" in (pod.run_dir / "vsock.log").read_text()


async def test_stop_backend_kills_one_that_outlives_its_vm(pod: VMSpec) -> None:
    pod.run_dir.mkdir()
    pod.vsock_backend, pod.vsock_cid = "user", 3
    qemu_end = socket.socket(fileno=vsock.start_backend(pod))  # kept open: the "VM" never goes
    pid = int(pod.vsock_pidfile.read_text())
    try:
        await vsock.stop_backend(pod.run_dir, pod.vm_id, grace=0.2)
        assert _pid_gone(pid)
        assert not pod.vsock_socket.exists()
    finally:
        qemu_end.close()


async def test_stop_backend_without_one_is_a_no_op(tmp_path: Path) -> None:
    await vsock.stop_backend(tmp_path, "c" * 64)
    (tmp_path / "vsock.pid").write_text(f"{os.getpid()}\n")  # a pid that is not a backend: left alone
    await vsock.stop_backend(tmp_path, "c" * 64)
    assert not (tmp_path / "vsock.pid").exists()
