"""Container RPCs of the RuntimeService: translate, call the container manager, translate back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from frakpy.container.manager import ContainerManager
from frakpy.container.model import ContainerState
from frakpy.cri import convert
from frakpy.cri.proto import api_pb2 as pb
from frakpy.errors import FailedPrecondition, FrakpyError, InvalidArgument, Unimplemented
from frakpy.events import ContainerEventType
from frakpy.streaming import backend

if TYPE_CHECKING:
    from frakpy.streaming.server import StreamingServer

_EVENT_TO_PB = {
    ContainerEventType.CREATED: pb.CONTAINER_CREATED_EVENT, ContainerEventType.STARTED: pb.CONTAINER_STARTED_EVENT,
    ContainerEventType.STOPPED: pb.CONTAINER_STOPPED_EVENT, ContainerEventType.DELETED: pb.CONTAINER_DELETED_EVENT,
}


class ContainerServicer:
    def __init__(self, containers: ContainerManager, streaming: StreamingServer | None = None) -> None:
        self.containers = containers
        self.streaming = streaming

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

    def _streamable(self, container_id: str, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> str:
        """Exec/Attach checks up front, as containerd and kubelet's streaming server make them."""
        if self.streaming is None:
            raise Unimplemented("this frakpyd runs no streaming server")
        if not container_id:
            raise InvalidArgument("missing required container_id")
        if tty and stderr:
            raise InvalidArgument("tty and stderr cannot both be true")
        if not (stdin or stdout or stderr):
            raise InvalidArgument("one of stdin, stdout, or stderr must be set")
        c = self.containers.get(container_id)
        if c.state is not ContainerState.RUNNING:
            raise FailedPrecondition(f"container {c.id} is not running ({c.state.value})")
        return c.id

    async def Exec(self, request: pb.ExecRequest, context: Any) -> pb.ExecResponse:
        cid = self._streamable(request.container_id, request.tty, request.stdin, request.stdout, request.stderr)
        if not request.cmd:
            raise InvalidArgument("exec: cmd is empty")
        assert self.streaming is not None
        url = self.streaming.exec_url(backend.ExecRequest(
            container_id=cid, cmd=tuple(request.cmd), tty=request.tty, stdin=request.stdin,
            stdout=request.stdout, stderr=request.stderr))
        return pb.ExecResponse(url=url)

    async def Attach(self, request: pb.AttachRequest, context: Any) -> pb.AttachResponse:
        cid = self._streamable(request.container_id, request.tty, request.stdin, request.stdout, request.stderr)
        c = self.containers.get(cid)
        if request.stdin and not c.stdin:
            raise FailedPrecondition(f"container {cid} was not created with stdin: cannot attach to its stdin")
        assert self.streaming is not None
        url = self.streaming.attach_url(backend.AttachRequest(
            container_id=cid, tty=request.tty, stdin=request.stdin, stdout=request.stdout, stderr=request.stderr))
        return pb.AttachResponse(url=url)

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
