"""A small synchronous CRI client over frakpyd's unix socket.

Used by the ``frakpy`` CLI, tests and benchmarks::

    with CRIClient() as cri:
        resp = cri.call(cri.runtime.Version, api_pb2.VersionRequest())
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from frakpy.cri.proto import api_pb2_grpc

DEFAULT_SOCKET = "/run/frakpy/frakpy.sock"
SOCKET_ENV = "FRAKPY_SOCKET"
DEFAULT_TIMEOUT = 30.0

Resp = TypeVar("Resp")


class CRIError(Exception):
    """A failed CRI call: names the RPC, the gRPC status code and the server's message."""

    def __init__(self, rpc: str, code: grpc.StatusCode | None, details: str) -> None:
        self.rpc = rpc
        self.code = code
        self.details = details
        super().__init__(f"{rpc}: {self.code_name}: {details}")

    @property
    def code_name(self) -> str:
        return self.code.name if self.code is not None else "UNKNOWN"


def resolve_endpoint(endpoint: str | None = None) -> str:
    """Turn ``unix:///path``, ``/path`` or nothing (env, then default) into a gRPC target."""
    endpoint = endpoint or os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET
    if endpoint.startswith("unix://"):
        return endpoint
    if "://" in endpoint:
        raise ValueError(f"unsupported endpoint {endpoint!r}: use unix:///path or a plain socket path")
    return "unix://" + os.path.abspath(endpoint)


def _rpc_name(method: Any) -> str:
    # Multi-callables keep their full method path ("/runtime.v1.RuntimeService/Version") privately;
    # fall back to whatever name we can find.
    for attr in ("_method", "method"):
        path = getattr(method, attr, None)
        if isinstance(path, bytes):
            path = path.decode()
        if isinstance(path, str) and path:
            return path.rsplit("/", 1)[-1]
    return getattr(method, "__name__", "rpc")


class CRIClient:
    """Holds one channel and the RuntimeService/ImageService stubs bound to it."""

    def __init__(self, endpoint: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.target = resolve_endpoint(endpoint)
        self.timeout = timeout
        self.channel = grpc.insecure_channel(self.target)
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.image = api_pb2_grpc.ImageServiceStub(self.channel)  # type: ignore[no-untyped-call]

    def call(self, stub_method: Callable[..., Resp], request: Any, timeout: float | None = None) -> Resp:
        """Invoke a unary RPC; a grpc.RpcError becomes a CRIError with a readable message."""
        try:
            return stub_method(request, timeout=timeout if timeout is not None else self.timeout)
        except grpc.RpcError as exc:
            raise _to_error(stub_method, exc, self.target) from exc

    def stream(
        self, stub_method: Callable[..., Any], request: Any, timeout: float | None = None
    ) -> list[Any]:
        """Invoke a server-streaming RPC and collect every message."""
        try:
            return list(stub_method(request, timeout=timeout if timeout is not None else self.timeout))
        except grpc.RpcError as exc:
            raise _to_error(stub_method, exc, self.target) from exc

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> CRIClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _to_error(stub_method: Any, exc: grpc.RpcError, target: str) -> CRIError:
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else None) or str(exc)
    if code == grpc.StatusCode.UNAVAILABLE and target.startswith("unix://"):
        path = target[len("unix://") :]
        if not os.path.exists(path):
            hint = f"is frakpyd running? set --runtime-endpoint or {SOCKET_ENV}"
            details = f"{details} (no socket at {path}: {hint})"
    elif code == grpc.StatusCode.UNIMPLEMENTED:
        details = f"{details} (the runtime does not implement this RPC)"
    return CRIError(_rpc_name(stub_method), code, details)
