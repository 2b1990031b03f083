"""VMSpec: everything needed to start one pod VM, as plain data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class VMSpec:
    """One VM's shape and the paths of its backends; rendered by qemu.argv.j2."""

    vm_id: str
    run_dir: Path  # per-sandbox runtime dir: sockets, pidfile, console, argv copy
    kernel: Path
    rootfs: Path
    rootfs_fstype: str = "erofs"
    vcpus: int = 1
    memory_mib: int = 256
    machine: str = "microvm"
    accel: str = "tcg"
    tb_size_mib: int = 32
    tsc_khz: int | None = None
    kernel_params: str = ""
    transport: str = "serial"
    vsock_cid: int | None = None
    seccomp: bool = True
    qemu_binary: str = "qemu-system-x86_64"
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
    def bus_suffix(self) -> str:
        """microvm has virtio-mmio only; pc and q35 use virtio over PCI."""
        return "device" if self.machine == "microvm" else "pci"

    @property
    def agent_uri(self) -> str:
        if self.transport == "vsock":
            return f"vsock://{self.vsock_cid}:1024"
        return f"serial://{self.agent_path}"

    def kernel_cmdline(self) -> str:
        parts = ["console=ttyS0", "quiet", "panic=-1", f"root=/dev/vda rootfstype={self.rootfs_fstype} ro",
                 "init=/init"]
        if self.accel == "tcg":
            # Under TCG the PIT calibration of the TSC fails at random and hangs microvm; the
            # clocksource watchdog would also mark the TSC unstable when VMs boot together.
            if self.tsc_khz:
                parts.append(f"tsc_early_khz={self.tsc_khz}")
            parts.append("tsc=reliable")
        if self.free_page_reporting:
            parts.append("page_reporting.page_reporting_order=0")  # report 4 KiB pages, not 2 MiB
        if self.kernel_params:
            parts.append(self.kernel_params)
        return " ".join(parts)
