"""Health and GuestDetails: read-only facts about the agent and the VM."""

import os
from collections.abc import Iterable, Iterator

from frakpy.agent.protocol import agent_pb2 as pb
from frakpy_guest import __version__
from frakpy_guest.services import AgentState, uptime_ns


class Health:
    def __init__(self, state: AgentState) -> None:
        self.state = state

    async def __call__(self, request: pb.HealthRequest, call: object) -> pb.HealthResponse:
        status = pb.SERVING_STATUS_NOT_SERVING if self.state.shutting_down else pb.SERVING_STATUS_SERVING
        return pb.HealthResponse(status=status)


class GuestDetails:
    def __init__(self, state: AgentState) -> None:
        self.state = state
        self._kernel_clock: tuple[int, int] | None = None  # constant once booted: probed once

    async def __call__(self, request: pb.GuestDetailsRequest, call: object) -> pb.GuestDetailsResponse:
        system = self.state.system
        if self._kernel_clock is None:
            self._kernel_clock = kernel_clock()
        lag, init_ns = self._kernel_clock
        return pb.GuestDetailsResponse(
            clock_lag_ns=lag, init_started_ns=init_ns,
            kernel_release=os.uname().release,
            mem_total_bytes=_mem_total(system.read_text("/proc/meminfo")),
            agent_version=__version__,
            boot_id=system.read_text("/proc/sys/kernel/random/boot_id").strip(),
            agent_start_uptime_ns=self.state.start_uptime_ns,
            agent_ready_uptime_ns=self.state.ready_uptime_ns,
            uptime_ns=uptime_ns(),
            online_cpus=os.cpu_count() or 0,
            sandbox_id=self.state.sandbox_id,
            root_mount=root_mount(system.read_text("/proc/self/mounts")),
        )


def root_mount(mounts: str) -> str:
    """'device fstype options' of the first filesystem mounted on / ('' if none)."""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1] == "/":
            return " ".join((fields[0], fields[2], fields[3]))
    return ""


def parse_kmsg(record: bytes) -> tuple[int, bytes]:
    """One /dev/kmsg record -> (printk time in ns, message text)."""
    header, _, text = record.partition(b";")
    return int(header.split(b",")[2]) * 1000, text.split(b"\n", 1)[0]


def kernel_clock(path: str = "/dev/kmsg") -> tuple[int, int]:
    """(how far the kernel's clock is behind the TSC, kernel-clock time when /init started) in
    ns, from the kernel log; 0 for what it does not show.

    Under TCG the kernel keeps time on jiffies until it switches to the TSC, and misses ticks in
    that slow early boot (~0.3 s here), for CLOCK_BOOTTIME and printk alike. When it declares the
    TSC stable it logs "sched_clock: Marking stable (K, _)->(T, _)": K on its clock, T on the TSC
    at the same instant; the difference is what was lost, and it stays constant afterwards."""
    return clock_from_log(_kmsg_records(path))


def clock_from_log(records: Iterable[bytes]) -> tuple[int, int]:
    init_ns = lag = 0
    try:
        for record in records:
            ts, text = parse_kmsg(record)
            if text.startswith(b"Run ") and text.endswith(b"as init process"):
                init_ns = ts
            elif text.startswith(b"sched_clock: Marking stable ("):
                before, _, after = text[len(b"sched_clock: Marking stable ("):].partition(b")->(")
                lag = max(0, int(after.split(b",")[0]) - int(before.split(b",")[0]))
    except (OSError, ValueError, IndexError):
        pass
    return lag, init_ns


def _kmsg_records(path: str) -> Iterator[bytes]:
    """The kernel log so far, one record per read() of /dev/kmsg (nothing if unreadable)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        while True:
            try:
                yield os.read(fd, 8192)
            except BlockingIOError:
                return
            except BrokenPipeError:  # records overwritten since the last read: go on
                continue
    finally:
        os.close(fd)


def _mem_total(meminfo: str) -> int:
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            fields = line.split()
            unit = fields[2] if len(fields) > 2 else "kB"
            return int(fields[1]) * (1024 if unit == "kB" else 1)
    return 0
