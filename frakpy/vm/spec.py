"""VMSpec: everything needed to start one pod VM, as plain data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DAX_ALIGN = 2 << 20   # Linux maps persistent memory in 2 MiB sub-sections
DAX_MAX_TOTAL_MIB = 2048  # RAM + image must sit below every machine type's 32-bit PCI hole


def root_dax_problem(rootfs: Path, fstype: str, memory_mib: int, machine: str = "microvm") -> str:
    """Why this image cannot be the guest's DAX root ('' when it can).

    The image becomes a second RAM block right after the guest's RAM (QEMU maps the file shared
    and read-only, so its pages come from the host page cache and are shared by every VM), and
    the kernel command line marks that range as persistent memory. EROFS reads its files in
    place from there when they have no inline tail (images/rootfs.py builds it that way)."""
    if machine != "microvm":
        # measured: q35 never reaches the kernel; SeaBIOS keeps its tables at the top of low RAM
        return f"machine {machine} does not boot with the image after RAM (its firmware uses the top of RAM)"
    if fstype != "erofs":
        return f"the root image is {fstype}, not EROFS"
    try:
        size = rootfs.stat().st_size
    except OSError as exc:
        return f"the root image is unreadable: {exc}"
    if size == 0 or size % DAX_ALIGN:
        return f"the root image's size ({size} bytes) is not a multiple of 2 MiB"
    if memory_mib + (size >> 20) > DAX_MAX_TOTAL_MIB:
        return f"guest RAM plus the image exceeds {DAX_MAX_TOTAL_MIB} MiB"
    return ""


# the userspace vsock backend's files in a sandbox's run dir (frakpy.vm.vsock)
VSOCK_SOCKET, VSOCK_PIDFILE, VSOCK_LOG = "vsock.sock", "vsock.pid", "vsock.log"


@dataclass
class VMSpec:
    """One VM's shape and the paths of its backends; rendered by qemu.argv.j2."""

    vm_id: str
    run_dir: Path  # per-sandbox runtime dir: sockets, pidfile, console, argv copy
    kernel: Path
    rootfs: Path
    rootfs_fstype: str = "erofs"
    # the root image as persistent memory read in place (see root_dax_problem) instead of a disk
    root_dax: bool = False
    vcpus: int = 1
    memory_mib: int = 256
    machine: str = "microvm"
    accel: str = "tcg"
    tb_size_mib: int = 32
    tsc_khz: int | None = None
    kernel_params: str = ""
    transport: str = "serial"
    vsock_cid: int | None = None
    # vsock: "kernel" (vhost-vsock, vsock_fd is /dev/vhost-vsock holding the CID) or "user"
    # (frakpy.vm.vsockdev over vhost-user, vsock_fd is QEMU's end of its socketpair)
    vsock_backend: str = "kernel"
    vsock_port: int = 1024  # where the guest agent listens (frakpy.vsock_port= on the command line)
    vsock_fd: int | None = None
    seccomp: bool = True
    qemu_binary: str = "qemu-system-x86_64"
    qemu_lib_dir: Path | None = None  # first on QEMU's LD_LIBRARY_PATH (the no-op libcapstone)
    # fds inherited by QEMU: listening sockets for QMP and the agent port, the pod's tap
    qmp_fd: int | None = None
    agent_fd: int | None = None
    tap_fd: int | None = None
    tap_fds: list[int] = field(default_factory=list)  # one per queue when multi-queue
    mac: str | None = None
    # host dir exported as virtio-9p tag frakpy-share (CRI mounts, frakpy.sandbox.share); the
    # guest mounts it only on demand (MountShare): a mounted 9p export blocks migration
    share_dir: Path | None = None
    # VM templates: guest RAM in a file (shared while building a template, a private
    # copy-on-write mapping of the template's file in a clone) and the state to restore
    mem_path: Path | None = None
    mem_share: bool = False
    incoming_fd: int | None = None
    net_placeholder: bool = False  # a template's NIC: same device, backend that goes nowhere
    # virtio-balloon with free page reporting: pages the guest frees go back to the host. Never
    # with templates: QEMU 7.2 discards a reported page of a file-backed RAM block by punching a
    # hole in the file, and a clone's file is the template every other clone maps.
    free_page_reporting: bool = False
    extra_args: list[str] = field(default_factory=list)

    @property
    def qmp_path(self) -> Path:
        return self.run_dir / "qmp.sock"

    @property
    def agent_path(self) -> Path:
        return self.run_dir / "agent.sock"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "qemu.pid"

    @property
    def console_path(self) -> Path:
        return self.run_dir / "console.log"

    @property
    def argv_path(self) -> Path:
        return self.run_dir / "qemu.argv"

    @property
    def vsock_socket(self) -> Path:
        """The userspace vsock backend's host socket (CONNECT <port>)."""
        return self.run_dir / VSOCK_SOCKET

    @property
    def vsock_pidfile(self) -> Path:
        return self.run_dir / VSOCK_PIDFILE

    @property
    def shared_ram(self) -> bool:
        """Guest RAM in a shared memfd: a vhost-user backend process maps it."""
        return self.transport == "vsock" and self.vsock_backend == "user"

    @property
    def bus_suffix(self) -> str:
        """microvm has virtio-mmio only; pc and q35 use virtio over PCI."""
        return "device" if self.machine == "microvm" else "pci"

    @property
    def pcie(self) -> bool:
        """microvm with its PCIe host bridge: needed for a DAX root (below), and then used for the
        devices whose rings the guest fills up front."""
        return self.machine == "microvm" and self.root_dax

    @property
    def ring_bus_suffix(self) -> str:
        """Bus of virtio-serial, virtio-net and virtio-scsi. On virtio-mmio QEMU offers every queue
        with 1024 entries and Linux uses them all: virtio-serial alone then pre-allocates 8 MiB of
        receive buffers (1024 pages for each of its two receive queues); over PCI the queue sizes
        are the devices' own (32-256)."""
        return "pci" if self.pcie else self.bus_suffix

    @property
    def rootfs_mib(self) -> int:
        return self.rootfs.stat().st_size >> 20

    @property
    def agent_uri(self) -> str:
        if self.transport == "vsock" and self.vsock_backend == "user":
            return f"hvsock://{self.vsock_socket}:{self.vsock_port}"
        if self.transport == "vsock":
            return f"vsock://{self.vsock_cid}:{self.vsock_port}"
        return f"serial://{self.agent_path}"

    def kernel_cmdline(self) -> str:
        # percpu_alloc=page: with the default "embed" allocator each percpu chunk spans 2 MiB and
        # its memory-cgroup bookkeeping takes another 4 MiB, allocated as soon as the first chunk
        # fills up (it does once a SCSI host is scanned)
        parts = ["console=ttyS0", "quiet", "panic=-1", "percpu_alloc=page"]
        if self.root_dax:
            # the image's pages follow guest RAM; memmap=! makes them an e820 persistent-memory
            # range, which Linux serves as /dev/pmem0, and EROFS maps its files from it in place
            parts += [f"memmap={self.rootfs_mib}M!{self.memory_mib}M", "root=/dev/pmem0",
                      f"rootfstype={self.rootfs_fstype}", "rootflags=dax=always", "ro", "rootwait"]
        else:
            parts += ["root=/dev/vda", f"rootfstype={self.rootfs_fstype}", "ro"]
        parts.append("init=/init")
        if self.accel == "tcg":
            # Under TCG the PIT calibration of the TSC fails at random and hangs microvm; the
            # clocksource watchdog would also mark the TSC unstable when VMs boot together.
            if self.tsc_khz:
                parts.append(f"tsc_early_khz={self.tsc_khz}")
            parts.append("tsc=reliable")
        if self.free_page_reporting:
            parts.append("page_reporting.page_reporting_order=0")  # report 4 KiB pages, not 2 MiB
        if self.transport == "vsock":
            parts.append(f"frakpy.vsock_port={self.vsock_port}")
        if self.kernel_params:
            parts.append(self.kernel_params)
        return " ".join(parts)
