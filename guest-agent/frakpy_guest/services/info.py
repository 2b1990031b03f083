"""Health and GuestDetails: read-only facts about the agent and the VM."""

import os

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

    async def __call__(self, request: pb.GuestDetailsRequest, call: object) -> pb.GuestDetailsResponse:
        system = self.state.system
        return pb.GuestDetailsResponse(
            kernel_release=os.uname().release,
            mem_total_bytes=_mem_total(system.read_text("/proc/meminfo")),
            agent_version=__version__,
            boot_id=system.read_text("/proc/sys/kernel/random/boot_id").strip(),
            agent_start_uptime_ns=self.state.start_uptime_ns,
            agent_ready_uptime_ns=self.state.ready_uptime_ns,
            uptime_ns=uptime_ns(),
            online_cpus=os.cpu_count() or 0,
            sandbox_id=self.state.sandbox_id,
        )


def _mem_total(meminfo: str) -> int:
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            fields = line.split()
            unit = fields[2] if len(fields) > 2 else "kB"
            return int(fields[1]) * (1024 if unit == "kB" else 1)
    return 0
