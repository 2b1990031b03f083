"""The agent's ttrpc services and the state they share.

``register(server, state)`` wires every method of ``frakpy.agent.v1.Agent`` into a ttrpc
``Server``. Side effects go through ``state.system`` (see ``frakpy_guest.system``).
"""

import importlib
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
        self.runtime = None  # frakpy_guest.runtime.Runtime, created by the first container RPC
        self.runtime_options: dict = {}  # type: ignore[type-arg]  # tests: root, crun_binary


def uptime_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


class Lazy:
    """A handler whose module (and the container runtime) is imported on the first call only,
    so none of the container machinery costs start-up time."""

    def __init__(self, state: AgentState, module: str, func: str, *, runtime: bool = True) -> None:
        self.state = state
        self.module = module
        self.func = func
        self.runtime = runtime
        self._fn = None

    def __call__(self, request, call):  # type: ignore[no-untyped-def]
        if self._fn is None:
            self._fn = getattr(importlib.import_module(f"frakpy_guest.services.{self.module}"), self.func)
        if self.runtime:
            from frakpy_guest import runtime

            return self._fn(runtime.get(self.state), request, call)
        return self._fn(self.state, request, call)


# method -> (module, function, request type, server-streaming, needs the runtime)
LAZY_METHODS = {
    "MountImage": ("storage", "mount_image", "MountImageRequest", False, True),
    "UnmountImage": ("storage", "unmount_image", "UnmountImageRequest", False, True),
    "MountShare": ("storage", "mount_share", "MountShareRequest", False, True),
    "CreateContainer": ("container", "create_container", "CreateContainerRequest", False, True),
    "StartContainer": ("container", "start_container", "StartContainerRequest", False, True),
    "SignalContainer": ("container", "signal_container", "SignalContainerRequest", False, True),
    "DeleteContainer": ("container", "delete_container", "DeleteContainerRequest", False, True),
    "ContainerState": ("container", "container_state", "ContainerStateRequest", False, True),
    "UpdateContainerResources": ("container", "update_resources", "UpdateContainerResourcesRequest", False, True),
    "Events": ("container", "events", "EventsRequest", True, True),
    "AckEvents": ("container", "ack_events", "AckEventsRequest", False, True),
    "ReadOutput": ("process", "read_output", "ReadOutputRequest", True, True),
    "AckOutput": ("process", "ack_output", "AckOutputRequest", False, True),
    "ExecSync": ("process", "exec_sync", "ExecSyncRequest", False, True),
    "ExecStart": ("process", "exec_start", "ExecStartRequest", False, True),
    "WriteStdin": ("process", "write_stdin", "WriteStdinRequest", False, True),
    "ResizeTty": ("process", "resize_tty", "ResizeTtyRequest", False, True),
    "WaitProcess": ("process", "wait_process", "WaitProcessRequest", False, True),
    "DeleteProcess": ("process", "delete_process", "DeleteProcessRequest", False, True),
    "ContainerStats": ("stats", "container_stats", "ContainerStatsRequest", False, True),
    "SandboxStats": ("stats", "sandbox_stats", "SandboxStatsRequest", False, False),
    "SetupNetwork": ("network", "setup_network", "SetupNetworkRequest", False, False),
    "PortConnect": ("portforward", "port_connect", "PortConnectRequest", True, False),
    "PortAck": ("portforward", "port_ack", "PortAckRequest", False, False),
    "PortWrite": ("portforward", "port_write", "PortWriteRequest", False, False),
    "PortClose": ("portforward", "port_close", "PortCloseRequest", False, False),
}


def register(server: Server, state: AgentState) -> None:
    from frakpy_guest.services import info, sandbox

    methods = {
        "Health": Method(info.Health(state), pb.HealthRequest),
        "GuestDetails": Method(info.GuestDetails(state), pb.GuestDetailsRequest),
        "SetupSandbox": Method(sandbox.SetupSandbox(state), pb.SetupSandboxRequest),
        "Shutdown": Method(sandbox.Shutdown(state), pb.ShutdownRequest),
    }
    for name, (module, func, request, streaming, needs_runtime) in LAZY_METHODS.items():
        methods[name] = Method(Lazy(state, module, func, runtime=needs_runtime), getattr(pb, request),
                               server_streaming=streaming)
    server.register(SERVICE, methods)
