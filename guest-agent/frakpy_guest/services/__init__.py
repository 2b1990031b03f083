"""The agent's ttrpc services and the state they share.

``register(server, state)`` wires every method of ``frakpy.agent.v1.Agent`` into a ttrpc
``Server``. Side effects go through ``state.system`` (see ``frakpy_guest.system``).
"""

import time

from frakpy.agent.protocol import agent_pb2 as pb
from frakpy.agent.protocol.ttrpc import Method, Server

SERVICE = "frakpy.agent.v1.Agent"


class AgentState:
    def __init__(self, system, *, start_uptime_ns: int | None = None, reaper=None) -> None:  # type: ignore[no-untyped-def]
        self.system = system
        self.reaper = reaper
        self.start_uptime_ns = start_uptime_ns if start_uptime_ns is not None else uptime_ns()
        self.ready_uptime_ns = 0
        self.sandbox_id = ""
        self.shutting_down = False


def uptime_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def register(server: Server, state: AgentState) -> None:
    from frakpy_guest.services import info, sandbox

    server.register(SERVICE, {
        "Health": Method(info.Health(state), pb.HealthRequest),
        "GuestDetails": Method(info.GuestDetails(state), pb.GuestDetailsRequest),
        "SetupSandbox": Method(sandbox.SetupSandbox(state), pb.SetupSandboxRequest),
        "Shutdown": Method(sandbox.Shutdown(state), pb.ShutdownRequest),
    })
