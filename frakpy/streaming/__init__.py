"""The streaming server behind CRI Exec/Attach/PortForward, and a client for it.

``server.StreamingServer`` issues single-use URLs and serves them over SPDY/3.1 or WebSocket with
Kubernetes' remotecommand and port-forward protocols; ``backend`` is the seam to the runtime;
``client`` speaks the same protocols (tests, CLI, benchmarks). The wire protocols are hand-written
(``spdy.py``: there is no maintained SPDY library for Python); HTTP parsing is ``h11``'s and
WebSocket framing ``wsproto``'s.
"""

from frakpy.streaming._http import StreamingError
from frakpy.streaming.backend import (
    AttachRequest,
    ExecRequest,
    IOSession,
    PortConnection,
    PortForwardRequest,
    StreamingBackend,
)
from frakpy.streaming.client import (
    ExecResult,
    LocalForward,
    PFStream,
    PortForward,
    PortForwardError,
    RemoteCommand,
    exec_stream,
    forward_local,
)
from frakpy.streaming.server import StreamingServer

__all__ = [
    "AttachRequest",
    "ExecRequest",
    "ExecResult",
    "IOSession",
    "LocalForward",
    "PFStream",
    "PortConnection",
    "PortForward",
    "PortForwardError",
    "PortForwardRequest",
    "RemoteCommand",
    "StreamingBackend",
    "StreamingError",
    "StreamingServer",
    "exec_stream",
    "forward_local",
]
