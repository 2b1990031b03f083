"""Run/Stop/Remove/Status/List PodSandbox: translate, call the sandbox manager, translate back."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from frakpy.cri import convert
from frakpy.cri.proto import api_pb2 as pb
from frakpy.errors import FailedPrecondition, FrakpyError, InvalidArgument, NotFound, Unimplemented
from frakpy.sandbox.manager import SandboxManager
from frakpy.sandbox.model import SandboxState
from frakpy.streaming.backend import PortForwardRequest

if TYPE_CHECKING:
    from frakpy.container.manager import ContainerManager
    from frakpy.streaming.server import StreamingServer


class SandboxServicer:
    def __init__(self, sandboxes: SandboxManager, containers: ContainerManager | None = None,
                 streaming: StreamingServer | None = None) -> None:
        self.sandboxes = sandboxes
        self.containers = containers
        self.streaming = streaming

    async def PortForward(self, request: pb.PortForwardRequest, context: Any) -> pb.PortForwardResponse:
        """The URL of the streaming server for this pod's ports (checked up front as containerd does)."""
        if self.streaming is None:
            raise Unimplemented("this frakpyd runs no streaming server")
        if not request.pod_sandbox_id:
            raise InvalidArgument("missing required pod_sandbox_id")
        sb = self.sandboxes.sandboxes.find(request.pod_sandbox_id)
        if sb is None or sb.state is SandboxState.CREATING:
            raise NotFound(f"sandbox {request.pod_sandbox_id!r} not found")
        if sb.state is not SandboxState.READY:
            raise FailedPrecondition(f"sandbox {sb.id} is not ready ({sb.state.value})")
        for port in request.port:
            if not 0 < port < 65536:
                raise InvalidArgument(f"port {port} is out of range")
        url = self.streaming.port_forward_url(PortForwardRequest(sandbox_id=sb.id, ports=tuple(request.port)))
        return pb.PortForwardResponse(url=url)

    async def RunPodSandbox(self, request: pb.RunPodSandboxRequest, context: Any) -> pb.RunPodSandboxResponse:
        sb = await self.sandboxes.run(convert.run_request(request))
        return pb.RunPodSandboxResponse(pod_sandbox_id=sb.id)

    async def StopPodSandbox(self, request: pb.StopPodSandboxRequest, context: Any) -> pb.StopPodSandboxResponse:
        await self.sandboxes.stop(request.pod_sandbox_id)
        return pb.StopPodSandboxResponse()

    async def RemovePodSandbox(self, request: pb.RemovePodSandboxRequest,
                               context: Any) -> pb.RemovePodSandboxResponse:
        await self.sandboxes.remove(request.pod_sandbox_id)
        return pb.RemovePodSandboxResponse()

    async def PodSandboxStatus(self, request: pb.PodSandboxStatusRequest,
                               context: Any) -> pb.PodSandboxStatusResponse:
        sb = self.sandboxes.get(request.pod_sandbox_id)
        return pb.PodSandboxStatusResponse(
            status=convert.pod_sandbox_status(sb),
            info=convert.sandbox_verbose_info(sb) if request.verbose else {},
            timestamp=time.time_ns(),
        )

    async def ListPodSandbox(self, request: pb.ListPodSandboxRequest, context: Any) -> pb.ListPodSandboxResponse:
        found = self.sandboxes.list(**convert.sandbox_filter(request.filter))
        return pb.ListPodSandboxResponse(items=[convert.pod_sandbox(sb) for sb in found])

    async def PodSandboxStats(self, request: pb.PodSandboxStatsRequest, context: Any) -> pb.PodSandboxStatsResponse:
        sb = self.sandboxes.get(request.pod_sandbox_id)
        assert self.containers is not None
        vm, per = await self.containers.sandbox_stats(sb.id)
        return pb.PodSandboxStatsResponse(stats=convert.pod_sandbox_stats(sb, vm, per, self.containers.nano_cores))

    async def ListPodSandboxStats(self, request: pb.ListPodSandboxStatsRequest,
                                  context: Any) -> pb.ListPodSandboxStatsResponse:
        assert self.containers is not None
        f = request.filter
        out = []
        for sb in self.sandboxes.list(id_prefix=f.id, state=SandboxState.READY, labels=dict(f.label_selector)):
            try:
                vm, per = await self.containers.sandbox_stats(sb.id)
            except FrakpyError:
                continue  # stopped meanwhile
            out.append(convert.pod_sandbox_stats(sb, vm, per, self.containers.nano_cores))
        return pb.ListPodSandboxStatsResponse(stats=out)
