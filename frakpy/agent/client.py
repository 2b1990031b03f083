"""Typed client of the guest agent (``frakpy.agent.v1.Agent`` over ttrpc).

Protobuf stops here: methods take plain Python values and return dataclasses. Every call has a
deadline; ttrpc and transport failures come out as ``frakpy.errors``: a timeout is
DeadlineExceeded, a lost connection Unavailable, remote status codes map by name.
"""

from __future__ import annotations

import enum
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from frakpy import errors
from frakpy.agent.protocol import agent_pb2 as pb
from frakpy.agent.protocol import ttrpc
from frakpy.agent.transport import open_stream

SERVICE = "frakpy.agent.v1.Agent"
DEFAULT_TIMEOUT = 10.0
RNG_SEED_BYTES = 64

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

    @property
    def agent_startup(self) -> float:
        """Seconds the agent itself needed from its first line of Python to serving."""
        return self.agent_ready_uptime - self.agent_start_uptime


@dataclass(frozen=True)
class SandboxSetup:
    entropy_bits_credited: int
    clock_set: bool


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
        client = ttrpc.Client(reader, writer)
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
