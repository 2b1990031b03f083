"""Typed client of the guest agent (``frakpy.agent.v1.Agent`` over ttrpc).

Protobuf stops here: methods take plain Python values and return dataclasses. Every call has a
deadline; ttrpc and transport failures come out as ``frakpy.errors``: a timeout is
DeadlineExceeded, a lost connection Unavailable, remote status codes map by name.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from frakpy import errors
from frakpy.agent.protocol import agent_pb2 as pb
from frakpy.agent.protocol import ttrpc
from frakpy.agent.transport import open_stream

SERVICE = "frakpy.agent.v1.Agent"
DEFAULT_TIMEOUT = 10.0
RNG_SEED_BYTES = 64
# ExecSync answers carry up to 16 MiB of output (the guest server uses the same limit).
MAX_MESSAGE_SIZE = 24 << 20

_CODE_TO_ERROR: dict[int, type[errors.FrakpyError]] = {
    ttrpc.Code.INVALID_ARGUMENT: errors.InvalidArgument,
    ttrpc.Code.OUT_OF_RANGE: errors.InvalidArgument,
    ttrpc.Code.NOT_FOUND: errors.NotFound,
    ttrpc.Code.ALREADY_EXISTS: errors.AlreadyExists,
    ttrpc.Code.FAILED_PRECONDITION: errors.FailedPrecondition,
    ttrpc.Code.UNAVAILABLE: errors.Unavailable,
    ttrpc.Code.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    ttrpc.Code.UNAUTHENTICATED: errors.Unauthenticated,
    ttrpc.Code.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    ttrpc.Code.UNIMPLEMENTED: errors.Unimplemented,
}


def map_error(exc: ttrpc.TTRPCError, what: str) -> errors.FrakpyError:
    """The frakpy error for a failed agent call (INTERNAL/UNKNOWN/other -> FrakpyError)."""
    cls = _CODE_TO_ERROR.get(int(exc.code), errors.FrakpyError)
    suffix = f" ({exc.code_name})" if cls is errors.FrakpyError else ""
    return cls(f"agent {what}: {exc.message}{suffix}")


class HealthStatus(enum.Enum):
    UNKNOWN = "unknown"
    SERVING = "serving"
    NOT_SERVING = "not_serving"


_HEALTH = {
    pb.SERVING_STATUS_SERVING: HealthStatus.SERVING,
    pb.SERVING_STATUS_NOT_SERVING: HealthStatus.NOT_SERVING,
}


@dataclass(frozen=True)
class GuestDetails:
    kernel_release: str
    mem_total_bytes: int
    agent_version: str
    boot_id: str
    agent_start_uptime: float  # seconds of guest uptime when the agent started
    agent_ready_uptime: float  # ... and when it could serve
    uptime: float  # guest uptime when answering
    online_cpus: int
    sandbox_id: str
    clock_lag: float = 0.0  # seconds the guest's clock lost in early boot (add for time since kernel start)
    init_started: float = 0.0  # kernel clock when /init started (0: unknown)
    root_mount: str = ""  # "device fstype options" of the guest's /

    @property
    def agent_startup(self) -> float:
        """Seconds the agent itself needed from its first line of Python to serving."""
        return self.agent_ready_uptime - self.agent_start_uptime


@dataclass(frozen=True)
class SandboxSetup:
    entropy_bits_credited: int
    clock_set: bool


@dataclass(frozen=True)
class ImageMount:
    path: str  # guest mount point
    device: str
    already_mounted: bool


class ContainerStatus(enum.Enum):
    UNKNOWN = "unknown"
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"


_STATUS = {pb.CONTAINER_STATUS_CREATED: ContainerStatus.CREATED,
           pb.CONTAINER_STATUS_RUNNING: ContainerStatus.RUNNING,
           pb.CONTAINER_STATUS_EXITED: ContainerStatus.EXITED}


@dataclass(frozen=True)
class ContainerState:
    container_id: str
    status: ContainerStatus
    pid: int
    exit_code: int
    created_at_ns: int  # guest realtime clock
    started_at_ns: int
    finished_at_ns: int
    oom_killed: bool
    output_offset: int
    termination_message: bytes = b""  # first 4096 bytes of its termination-log, once exited


@dataclass(frozen=True)
class ExitEvent:
    seq: int
    container_id: str
    exec_id: str  # "" for the container init
    pid: int
    exit_code: int
    exited_at_ns: int
    oom_killed: bool


class Stream(enum.Enum):
    STDOUT = "stdout"  # also a tty
    STDERR = "stderr"


_STREAM = {pb.OUTPUT_STREAM_STDOUT: Stream.STDOUT, pb.OUTPUT_STREAM_STDERR: Stream.STDERR}


@dataclass(frozen=True)
class OutputChunk:
    offset: int  # offset of data[0] in the process's combined output
    stream: Stream
    time_ns: int  # guest realtime clock when read
    data: bytes

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


@dataclass(frozen=True)
class ExecResult:
    stdout: bytes
    stderr: bytes
    exit_code: int
    timed_out: bool
    truncated: bool


@dataclass(frozen=True)
class ProcessExit:
    exit_code: int
    exited_at_ns: int
    oom_killed: bool


@dataclass(frozen=True)
class ContainerStats:
    timestamp_ns: int
    cpu_usage_ns: int
    memory_working_set_bytes: int
    memory_usage_bytes: int
    memory_rss_bytes: int
    memory_available_bytes: int
    page_faults: int
    major_page_faults: int
    oom_kills: int
    writable_layer_bytes: int
    writable_layer_inodes: int


@dataclass(frozen=True)
class InterfaceStats:
    name: str
    rx_bytes: int
    rx_errors: int
    tx_bytes: int
    tx_errors: int


@dataclass(frozen=True)
class SandboxStats:
    timestamp_ns: int
    cpu_usage_ns: int
    memory_total_bytes: int
    memory_available_bytes: int
    memory_working_set_bytes: int
    interfaces: tuple[InterfaceStats, ...]


def _json_bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value).encode()


class AgentClient:
    def __init__(self, client: ttrpc.Client, *, uri: str = "", sandbox_id: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self._client = client
        self.uri = uri
        self.timeout = timeout
        suffix = f".{sandbox_id[:12]}" if sandbox_id else ""
        self.log = logging.getLogger(f"frakpy.agent{suffix}")

    @classmethod
    async def connect(cls, uri: str, *, timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109
                      sandbox_id: str | None = None, call_timeout: float | None = None) -> AgentClient:
        """Open the transport (within ``timeout``); calls default to ``call_timeout`` or ``timeout``."""
        reader, writer = await open_stream(uri, timeout)
        client = ttrpc.Client(reader, writer, max_message_size=MAX_MESSAGE_SIZE)
        return cls(client, uri=uri, sandbox_id=sandbox_id, timeout=call_timeout or timeout)

    @property
    def closed(self) -> bool:
        return self._client.closed

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, method: str, request: Any, response_type: Any,
                    timeout: float | None) -> Any:  # noqa: ASYNC109
        timeout = self.timeout if timeout is None else timeout
        self.log.debug("agent %s: calling (deadline %.1fs)", method, timeout)
        started = time.monotonic()
        try:
            resp = await self._client.call(SERVICE, method, request, response_type, timeout=timeout)
        except ttrpc.TTRPCError as exc:
            self.log.debug("agent %s: failed after %.3fs: %s", method, time.monotonic() - started, exc)
            raise map_error(exc, method) from exc
        self.log.debug("agent %s: ok in %.3fs", method, time.monotonic() - started)
        return resp

    async def health(self, *, timeout: float | None = None) -> HealthStatus:  # noqa: ASYNC109
        resp = await self._call("Health", pb.HealthRequest(), pb.HealthResponse, timeout)
        return _HEALTH.get(resp.status, HealthStatus.UNKNOWN)

    async def guest_details(self, *, timeout: float | None = None) -> GuestDetails:  # noqa: ASYNC109
        r = await self._call("GuestDetails", pb.GuestDetailsRequest(), pb.GuestDetailsResponse, timeout)
        return GuestDetails(
            kernel_release=r.kernel_release, mem_total_bytes=r.mem_total_bytes, agent_version=r.agent_version,
            boot_id=r.boot_id, agent_start_uptime=r.agent_start_uptime_ns / 1e9,
            agent_ready_uptime=r.agent_ready_uptime_ns / 1e9, uptime=r.uptime_ns / 1e9,
            online_cpus=r.online_cpus, sandbox_id=r.sandbox_id,
            clock_lag=r.clock_lag_ns / 1e9, init_started=r.init_started_ns / 1e9, root_mount=r.root_mount,
        )

    async def setup_sandbox(
        self,
        sandbox_id: str,
        *,
        hostname: str = "",
        dns_servers: Sequence[str] | None = None,
        dns_searches: Sequence[str] = (),
        dns_options: Sequence[str] = (),
        hosts: Mapping[str, Iterable[str]] | Iterable[tuple[str, Iterable[str]]] = (),
        realtime_ns: int | None = None,
        rng_seed: bytes | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> SandboxSetup:
        """Make the VM this sandbox's. ``dns_servers=None`` leaves resolv.conf alone; the clock is
        set to the host's now and a fresh 64-byte RNG seed is sent unless given explicitly
        (``realtime_ns=0`` / ``rng_seed=b""`` skip them)."""
        req = pb.SetupSandboxRequest(
            sandbox_id=sandbox_id,
            hostname=hostname,
            realtime_ns=time.time_ns() if realtime_ns is None else realtime_ns,
            rng_seed=os.urandom(RNG_SEED_BYTES) if rng_seed is None else rng_seed,
        )
        if dns_servers is not None:
            req.dns.servers.extend(dns_servers)
            req.dns.searches.extend(dns_searches)
            req.dns.options.extend(dns_options)
        items = hosts.items() if isinstance(hosts, Mapping) else hosts
        for ip, names in items:
            req.hosts.add(ip=ip, names=list(names))
        r = await self._call("SetupSandbox", req, pb.SetupSandboxResponse, timeout)
        return SandboxSetup(entropy_bits_credited=r.entropy_bits_credited, clock_set=r.clock_set)

    async def shutdown(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Ask the guest to sync and power off. The VM may vanish right after answering, so a
        connection lost once the request was sent counts as success."""
        try:
            await self._call("Shutdown", pb.ShutdownRequest(), pb.ShutdownResponse, timeout)
        except errors.Unavailable as exc:
            if isinstance(exc.__cause__, ttrpc.ConnectionLost) and "sending" not in str(exc):
                self.log.debug("agent connection closed while shutting down: %s", exc)
                return
            raise

    # --- streams ----------------------------------------------------------------------------

    async def _stream(self, method: str, request: Any, response_type: Any,
                      timeout: float | None) -> AsyncIterator[Any]:  # noqa: ASYNC109
        """Messages of a server-streaming call; ``timeout`` bounds the whole stream (None: none)."""
        try:
            stream = await self._client.stream(SERVICE, method, request, response_type, timeout=timeout)
        except ttrpc.TTRPCError as exc:
            raise map_error(exc, method) from exc
        try:
            while True:
                try:
                    msg = await stream.__anext__()
                except StopAsyncIteration:
                    return
                except ttrpc.TTRPCError as exc:
                    raise map_error(exc, method) from exc
                yield msg
        finally:
            await stream.aclose()

    # --- storage ----------------------------------------------------------------------------

    async def mount_image(self, mount_id: str, serial: str, *, fstype: str = "erofs",
                          read_write: bool = False, wait: float = 10.0,
                          timeout: float | None = None) -> ImageMount:  # noqa: ASYNC109
        """Mount the hot-added scsi-hd disk ``serial`` at guestpaths.image_mount(mount_id)."""
        req = pb.MountImageRequest(mount_id=mount_id, serial=serial, fstype=fstype, read_write=read_write,
                                   timeout_ms=int(wait * 1000))
        r = await self._call("MountImage", req, pb.MountImageResponse,
                             timeout if timeout is not None else max(self.timeout, wait + 5))
        return ImageMount(path=r.path, device=r.device, already_mounted=r.already_mounted)

    async def unmount_image(self, mount_id: str, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._call("UnmountImage", pb.UnmountImageRequest(mount_id=mount_id), pb.UnmountImageResponse, timeout)

    async def mount_share(self, tag: str, path: str = "", *, msize: int = 0,
                          timeout: float | None = None) -> str:  # noqa: ASYNC109
        r = await self._call("MountShare", pb.MountShareRequest(tag=tag, path=path, msize=msize),
                             pb.MountShareResponse, timeout)
        return str(r.path)

    # --- containers -------------------------------------------------------------------------

    async def create_container(self, container_id: str, spec: Mapping[str, Any] | bytes | str, *,
                               image_mount_id: str, stdin: bool = False, tty: bool = False,
                               log_buffer_bytes: int = 0, timeout: float | None = None) -> int:  # noqa: ASYNC109
        """Create (not start) the container; returns the guest pid of its init."""
        req = pb.CreateContainerRequest(container_id=container_id, spec_json=_json_bytes(spec),
                                        image_mount_id=image_mount_id, stdin=stdin, tty=tty,
                                        log_buffer_bytes=log_buffer_bytes)
        r = await self._call("CreateContainer", req, pb.CreateContainerResponse, timeout)
        return int(r.pid)

    async def start_container(self, container_id: str, *, timeout: float | None = None) -> int:  # noqa: ASYNC109
        """Returns the guest realtime ns the container started at."""
        r = await self._call("StartContainer", pb.StartContainerRequest(container_id=container_id),
                             pb.StartContainerResponse, timeout)
        return int(r.started_at_ns)

    async def signal_container(self, container_id: str, signal: int, *, all: bool = False,  # noqa: A002
                               exec_id: str = "", timeout: float | None = None) -> None:  # noqa: ASYNC109
        req = pb.SignalContainerRequest(container_id=container_id, signal=int(signal), all=all, exec_id=exec_id)
        await self._call("SignalContainer", req, pb.SignalContainerResponse, timeout)

    async def delete_container(self, container_id: str, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Idempotent: deleting an unknown container succeeds."""
        await self._call("DeleteContainer", pb.DeleteContainerRequest(container_id=container_id),
                         pb.DeleteContainerResponse, timeout)

    async def container_state(self, container_id: str, *, timeout: float | None = None) -> ContainerState:  # noqa: ASYNC109
        r = await self._call("ContainerState", pb.ContainerStateRequest(container_id=container_id),
                             pb.ContainerStateResponse, timeout)
        return ContainerState(container_id=r.container_id, status=_STATUS.get(r.status, ContainerStatus.UNKNOWN),
                              pid=r.pid, exit_code=r.exit_code, created_at_ns=r.created_at_ns,
                              started_at_ns=r.started_at_ns, finished_at_ns=r.finished_at_ns,
                              oom_killed=r.oom_killed, output_offset=r.output_offset,
                              termination_message=r.termination_message)

    async def update_container_resources(self, container_id: str, resources: Mapping[str, Any] | bytes | str,
                                         *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        req = pb.UpdateContainerResourcesRequest(container_id=container_id, resources_json=_json_bytes(resources))
        await self._call("UpdateContainerResources", req, pb.UpdateContainerResourcesResponse, timeout)

    # --- events -----------------------------------------------------------------------------

    async def events(self, *, after_seq: int = 0) -> AsyncIterator[ExitEvent]:
        """Unacknowledged exit events (seq > after_seq), then live ones; runs until the
        connection ends. Acknowledge with ``ack_events`` once persisted."""
        async for e in self._stream("Events", pb.EventsRequest(after_seq=after_seq), pb.Event, None):
            yield ExitEvent(seq=e.seq, container_id=e.container_id, exec_id=e.exec_id, pid=e.pid,
                            exit_code=e.exit_code, exited_at_ns=e.exited_at_ns, oom_killed=e.oom_killed)

    async def ack_events(self, up_to_seq: int, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._call("AckEvents", pb.AckEventsRequest(up_to_seq=up_to_seq), pb.AckEventsResponse, timeout)

    # --- output and processes ---------------------------------------------------------------

    async def read_output(self, container_id: str, *, exec_id: str = "", from_offset: int = 0,
                          auto_ack: bool = False) -> AsyncIterator[OutputChunk]:
        """Output from ``from_offset`` (which acknowledges everything below it) until the process
        exited and all was delivered. Without ``auto_ack`` call ``ack_output`` after persisting,
        or the process blocks once ``log_buffer_bytes`` are unacknowledged."""
        req = pb.ReadOutputRequest(container_id=container_id, exec_id=exec_id, from_offset=from_offset,
                                   auto_ack=auto_ack)
        async for c in self._stream("ReadOutput", req, pb.OutputChunk, None):
            yield OutputChunk(offset=c.offset, stream=_STREAM.get(c.stream, Stream.STDOUT), time_ns=c.time_ns,
                              data=c.data)

    async def ack_output(self, container_id: str, up_to_offset: int, *, exec_id: str = "",
                         timeout: float | None = None) -> None:  # noqa: ASYNC109
        req = pb.AckOutputRequest(container_id=container_id, exec_id=exec_id, up_to_offset=up_to_offset)
        await self._call("AckOutput", req, pb.AckOutputResponse, timeout)

    async def exec_sync(self, container_id: str, args: Sequence[str], *, timeout_s: int = 0,
                        output_limit_bytes: int = 0, timeout: float | None = None) -> ExecResult:  # noqa: ASYNC109
        """Run ``args`` in the container and collect its output; ``timeout_s`` kills it (timed_out)."""
        req = pb.ExecSyncRequest(container_id=container_id, args=list(args), timeout_s=timeout_s,
                                 output_limit_bytes=output_limit_bytes)
        deadline = timeout if timeout is not None else (timeout_s + self.timeout if timeout_s else None)
        r = await self._call("ExecSync", req, pb.ExecSyncResponse, deadline)
        return ExecResult(stdout=r.stdout, stderr=r.stderr, exit_code=r.exit_code, timed_out=r.timed_out,
                          truncated=r.truncated)

    async def exec_start(self, container_id: str, exec_id: str, process: Mapping[str, Any] | bytes | str, *,
                         tty: bool = False, stdin: bool = False, log_buffer_bytes: int = 0,
                         timeout: float | None = None) -> int:  # noqa: ASYNC109
        """Start an exec process (OCI process JSON; unset fields come from the container's
        process); returns its guest pid. Read it with ``read_output(exec_id=...)``."""
        req = pb.ExecStartRequest(container_id=container_id, exec_id=exec_id, process_json=_json_bytes(process),
                                  tty=tty, stdin=stdin, log_buffer_bytes=log_buffer_bytes)
        r = await self._call("ExecStart", req, pb.ExecStartResponse, timeout)
        return int(r.pid)

    async def write_stdin(self, container_id: str, data: bytes = b"", *, exec_id: str = "", close: bool = False,
                          timeout: float | None = None) -> int:  # noqa: ASYNC109
        req = pb.WriteStdinRequest(container_id=container_id, exec_id=exec_id, data=data, close=close)
        r = await self._call("WriteStdin", req, pb.WriteStdinResponse, timeout)
        return int(r.written)

    async def resize_tty(self, container_id: str, width: int, height: int, *, exec_id: str = "",
                         timeout: float | None = None) -> None:  # noqa: ASYNC109
        req = pb.ResizeTtyRequest(container_id=container_id, exec_id=exec_id, width=width, height=height)
        await self._call("ResizeTty", req, pb.ResizeTtyResponse, timeout)

    async def wait_process(self, container_id: str, *, exec_id: str = "",
                           timeout: float | None = None) -> ProcessExit:  # noqa: ASYNC109
        """Blocks until the process exits (no deadline unless ``timeout`` is given)."""
        try:
            r = await self._client.call(SERVICE, "WaitProcess",
                                        pb.WaitProcessRequest(container_id=container_id, exec_id=exec_id),
                                        pb.WaitProcessResponse, timeout=timeout)
        except ttrpc.TTRPCError as exc:
            raise map_error(exc, "WaitProcess") from exc
        return ProcessExit(exit_code=r.exit_code, exited_at_ns=r.exited_at_ns, oom_killed=r.oom_killed)

    async def delete_process(self, container_id: str, exec_id: str, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._call("DeleteProcess", pb.DeleteProcessRequest(container_id=container_id, exec_id=exec_id),
                         pb.DeleteProcessResponse, timeout)

    # --- stats and network ------------------------------------------------------------------

    async def container_stats(self, container_id: str, *, timeout: float | None = None) -> ContainerStats:  # noqa: ASYNC109
        r = await self._call("ContainerStats", pb.ContainerStatsRequest(container_id=container_id),
                             pb.ContainerStatsResponse, timeout)
        return ContainerStats(
            timestamp_ns=r.timestamp_ns, cpu_usage_ns=r.cpu_usage_ns,
            memory_working_set_bytes=r.memory_working_set_bytes, memory_usage_bytes=r.memory_usage_bytes,
            memory_rss_bytes=r.memory_rss_bytes, memory_available_bytes=r.memory_available_bytes,
            page_faults=r.page_faults, major_page_faults=r.major_page_faults, oom_kills=r.oom_kills,
            writable_layer_bytes=r.writable_layer_bytes, writable_layer_inodes=r.writable_layer_inodes)

    async def sandbox_stats(self, *, timeout: float | None = None) -> SandboxStats:  # noqa: ASYNC109
        r = await self._call("SandboxStats", pb.SandboxStatsRequest(), pb.SandboxStatsResponse, timeout)
        return SandboxStats(
            timestamp_ns=r.timestamp_ns, cpu_usage_ns=r.cpu_usage_ns, memory_total_bytes=r.memory_total_bytes,
            memory_available_bytes=r.memory_available_bytes, memory_working_set_bytes=r.memory_working_set_bytes,
            interfaces=tuple(InterfaceStats(name=i.name, rx_bytes=i.rx_bytes, rx_errors=i.rx_errors,
                                            tx_bytes=i.tx_bytes, tx_errors=i.tx_errors) for i in r.interfaces))

    async def setup_network(self, config: Mapping[str, Any] | None = None, *, hostname: str = "",
                            pod_ips: Sequence[str] = (), host_aliases: Sequence[str] = (),
                            timeout: float | None = None) -> str:  # noqa: ASYNC109
        """Configure the pod NIC (netconf config) and, with ``pod_ips``, rewrite /etc/hosts;
        returns the guest interface name."""
        req = pb.SetupNetworkRequest(config_json=_json_bytes(config) if config else b"", hostname=hostname,
                                     pod_ips=list(pod_ips), host_aliases=list(host_aliases))
        r = await self._call("SetupNetwork", req, pb.SetupNetworkResponse, timeout)
        return str(r.interface)

    # --- port forwarding --------------------------------------------------------------------

    async def port_connect(self, port: int, *, window_bytes: int = 0) -> AsyncIterator[PortChunk]:
        """Connect to ``port`` on the guest's loopback. The first chunk carries the conn_id and no
        data; then data (acknowledge with ``port_ack`` or the agent stops reading once
        ``window_bytes`` are unacknowledged); then one with ``eof``; ends after ``port_close``.
        Nothing listening: Unavailable "... port N: connection refused"."""
        req = pb.PortConnectRequest(port=port, window_bytes=window_bytes)
        async for d in self._stream("PortConnect", req, pb.PortData, None):
            yield PortChunk(conn_id=d.conn_id, offset=d.offset, data=d.data, eof=d.eof)

    async def port_ack(self, conn_id: str, up_to_offset: int, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._call("PortAck", pb.PortAckRequest(conn_id=conn_id, up_to_offset=up_to_offset),
                         pb.PortAckResponse, timeout)

    async def port_write(self, conn_id: str, data: bytes = b"", *, close_write: bool = False,
                         timeout: float | None = None) -> int:  # noqa: ASYNC109
        """Blocks until the guest socket took ``data`` (backpressure); ``close_write`` then
        shuts its write half down."""
        r = await self._call("PortWrite", pb.PortWriteRequest(conn_id=conn_id, data=data, close_write=close_write),
                             pb.PortWriteResponse, timeout)
        return int(r.written)

    async def port_close(self, conn_id: str, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._call("PortClose", pb.PortCloseRequest(conn_id=conn_id), pb.PortCloseResponse, timeout)


@dataclass(frozen=True)
class PortChunk:
    conn_id: str
    offset: int  # offset of data[0] in what the guest side sent
    data: bytes
    eof: bool  # the guest side closed its write half

    @property
    def end(self) -> int:
        return self.offset + len(self.data)
