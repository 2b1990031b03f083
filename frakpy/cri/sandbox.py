"""Run/Stop/Remove/Status/List PodSandbox: translate, call the sandbox manager, translate back."""

from __future__ import annotations

import time
from typing import Any

from frakpy.cri import convert
from frakpy.cri.proto import api_pb2 as pb
from frakpy.sandbox.manager import SandboxManager


class SandboxServicer:
    def __init__(self, sandboxes: SandboxManager) -> None:
        self.sandboxes = sandboxes

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
