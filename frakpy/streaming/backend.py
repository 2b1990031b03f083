"""What the streaming server needs from the runtime: the seam between wire protocols and VMs.

The streaming server (``frakpy.streaming.server``) speaks SPDY/3.1 and WebSocket to kubelet /
kubectl / crictl and knows nothing about VMs; ``frakpy.container.streams.ContainerStreams``
implements this protocol on top of the guest agent. Unit tests use a fake.

Errors: the backend raises ``frakpy.errors`` exceptions (NotFound, FailedPrecondition, ...);
the server reports them on the protocol's error channel (remotecommand) or error stream
(port-forward) with the exception's message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

STDOUT = 1
STDERR = 2


@dataclass(frozen=True)
class ExecRequest:
    container_id: str
    cmd: tuple[str, ...]
    tty: bool = False
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True


@dataclass(frozen=True)
class AttachRequest:
    container_id: str
    tty: bool = False
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True


@dataclass(frozen=True)
class PortForwardRequest:
    sandbox_id: str
    ports: tuple[int, ...] = ()  # ports the URL was issued for; empty = any port the client asks


class IOSession(Protocol):
    """One exec'd process, or one attachment to a container's main process."""

    def output(self) -> AsyncIterator[tuple[int, bytes]]:
        """(STDOUT|STDERR, data) chunks until the process exits (exec) or the container
        exits (attach). With a TTY everything arrives as STDOUT. Flow-controlled: the
        producer stops reading from the guest while the consumer does not iterate."""
        ...

    async def write_stdin(self, data: bytes) -> None:
        """Blocks while the guest side is not keeping up (backpressure)."""
        ...

    async def close_stdin(self) -> None: ...

    async def resize(self, width: int, height: int) -> None: ...

    async def wait(self) -> int:
        """Exit code of the process (exec) or of the container (attach) once it ended."""
        ...

    async def close(self) -> None:
        """The client went away or the stream ended: an exec'd process still running is
        killed and reaped (as containerd does); an attach just detaches."""
        ...


class PortConnection(Protocol):
    """One TCP connection to a port inside the pod's VM (the guest's loopback)."""

    async def read(self) -> bytes:
        """Next chunk; b"" once the guest side closed its write half."""
        ...

    async def write(self, data: bytes) -> None: ...

    async def close_write(self) -> None:
        """Half-close towards the guest (the client finished sending)."""
        ...

    async def close(self) -> None: ...


class StreamingBackend(Protocol):
    async def exec(self, req: ExecRequest) -> IOSession:
        """Start the process; raises NotFound / FailedPrecondition when it cannot run."""
        ...

    async def attach(self, req: AttachRequest) -> IOSession: ...

    async def port_forward(self, sandbox_id: str, port: int) -> PortConnection:
        """Connect to ``port`` on the guest's loopback; raises Unavailable (connection
        refused, with the port in the message), NotFound (no such sandbox), ..."""
        ...
