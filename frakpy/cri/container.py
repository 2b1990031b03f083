"""Container RPCs of the RuntimeService: translate, call the container manager, translate back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from frakpy.container.manager import ContainerManager
from frakpy.container.model import ContainerState
from frakpy.cri import convert
from frakpy.cri.proto import api_pb2 as pb
from frakpy.errors import FrakpyError
from frakpy.events import ContainerEventType

_EVENT_TO_PB = {
    ContainerEventType.CREATED: pb.CONTAINER_CREATED_EVENT, ContainerEventType.STARTED: pb.CONTAINER_STARTED_EVENT,
    ContainerEventType.STOPPED: pb.CONTAINER_STOPPED_EVENT, ContainerEventType.DELETED: pb.CONTAINER_DELETED_EVENT,
}


class ContainerServicer:
    def __init__(self, containers: ContainerManager) -> None:
        self.containers = containers

    async def CreateContainer(self, request: pb.CreateContainerRequest, context: Any) -> pb.CreateContainerResponse:
        c = await self.containers.create(
            request.pod_sandbox_id, convert.container_config(request.config),
            convert.sandbox_config(request.sandbox_config) if request.HasField("sandbox_config") else {},
        )
        return pb.CreateContainerResponse(container_id=c.id)

    async def StartContainer(self, request: pb.StartContainerRequest, context: Any) -> pb.StartContainerResponse:
        await self.containers.start(request.container_id)
        return pb.StartContainerResponse()

    async def StopContainer(self, request: pb.StopContainerRequest, context: Any) -> pb.StopContainerResponse:
        await self.containers.stop(request.container_id, int(request.timeout))
        return pb.StopContainerResponse()

    async def RemoveContainer(self, request: pb.RemoveContainerRequest, context: Any) -> pb.RemoveContainerResponse:
        await self.containers.remove(request.container_id)
        return pb.RemoveContainerResponse()

    async def ContainerStatus(self, request: pb.ContainerStatusRequest, context: Any) -> pb.ContainerStatusResponse:
        c = self.containers.get(request.container_id)
        return pb.ContainerStatusResponse(
            status=convert.container_status(c),
            info=convert.container_verbose_info(c) if request.verbose else {},
        )

    async def ListContainers(self, request: pb.ListContainersRequest, context: Any) -> pb.ListContainersResponse:
        found = self.containers.list(**convert.container_filter(request.filter))
        return pb.ListContainersResponse(containers=[convert.container(c) for c in found])

    async def ExecSync(self, request: pb.ExecSyncRequest, context: Any) -> pb.ExecSyncResponse:
        r = await self.containers.exec_sync(request.container_id, list(request.cmd), int(request.timeout))
        return pb.ExecSyncResponse(stdout=r.stdout, stderr=r.stderr, exit_code=r.exit_code)

    async def ReopenContainerLog(self, request: pb.ReopenContainerLogRequest,
                                 context: Any) -> pb.ReopenContainerLogResponse:
        await self.containers.reopen_log(request.container_id)
        return pb.ReopenContainerLogResponse()

    async def ContainerStats(self, request: pb.ContainerStatsRequest, context: Any) -> pb.ContainerStatsResponse:
        c = self.containers.get(request.container_id)
        s = await self.containers.stats(c.id)
        return pb.ContainerStatsResponse(stats=convert.container_stats(c, s, self.containers.nano_cores.get(c.id)))

    async def ListContainerStats(self, request: pb.ListContainerStatsRequest,
                                 context: Any) -> pb.ListContainerStatsResponse:
        f = request.filter
        out = []
        for c in self.containers.list(id_prefix=f.id, sandbox_id=f.pod_sandbox_id, labels=dict(f.label_selector)):
            if c.state is not ContainerState.RUNNING:
                continue
            try:
                s = await self.containers.stats(c.id)
            except FrakpyError:
                continue  # exited or its VM went away meanwhile
            out.append(convert.container_stats(c, s, self.containers.nano_cores.get(c.id)))
        return pb.ListContainerStatsResponse(stats=out)


    async def UpdateContainerResources(self, request: pb.UpdateContainerResourcesRequest,
                                       context: Any) -> pb.UpdateContainerResourcesResponse:
        linux = convert.linux_resources(request.linux) if request.HasField("linux") else {}
        await self.containers.update_resources(request.container_id, linux)
        return pb.UpdateContainerResourcesResponse()

    async def GetContainerEvents(self, request: pb.GetEventsRequest,
                                 context: Any) -> AsyncIterator[pb.ContainerEventResponse]:
        sandboxes = self.containers.sandboxes.sandboxes
        async for ev in self.containers.events.subscribe():
            sb = sandboxes.find(ev.sandbox_id)
            yield pb.ContainerEventResponse(
                container_id=ev.container_id, container_event_type=_EVENT_TO_PB[ev.type], created_at=ev.created_at,
                pod_sandbox_status=convert.pod_sandbox_status(sb) if sb is not None else None,
                containers_statuses=[convert.container_status(ev.container)],
            )
