"""grpc.aio server on the CRI unix socket, with every RPC of both services registered.

Methods a servicer implements go through the interceptor's wrappers; every other RPC of
the service answers UNIMPLEMENTED with a message naming it.
"""

from __future__ import annotations

import types
from typing import Any

import grpc

from frakpy.cri import interceptor
from frakpy.cri.proto import api_pb2, api_pb2_grpc, frakpy_pb2, frakpy_pb2_grpc

MAX_MESSAGE = 16 * 1024 * 1024


def _bind(service_name: str, *impls: Any, descriptor: Any = api_pb2.DESCRIPTOR) -> Any:
    service = descriptor.services_by_name[service_name]
    bound = types.SimpleNamespace()
    for method in service.methods:
        full = f"{service.full_name}/{method.name}"
        fn = next((getattr(i, method.name) for i in impls if hasattr(i, method.name)), None)
        if fn is None:
            handler = interceptor.unimplemented(full, method.server_streaming)
        elif method.server_streaming:
            handler = interceptor.wrap_stream(method.name, fn)
        else:
            handler = interceptor.wrap_unary(method.name, fn)
        setattr(bound, method.name, handler)
    return bound


def build(runtime_impls: list[Any], image_impls: list[Any], progress_impls: list[Any] | None = None) -> grpc.aio.Server:
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
    ])
    api_pb2_grpc.add_RuntimeServiceServicer_to_server(_bind("RuntimeService", *runtime_impls), server)
    api_pb2_grpc.add_ImageServiceServicer_to_server(_bind("ImageService", *image_impls), server)
    if progress_impls:  # frakpy.v1.Progress (our own service, not CRI): pull progress for `frakpy pull`
        frakpy_pb2_grpc.add_ProgressServicer_to_server(
            _bind("Progress", *progress_impls, descriptor=frakpy_pb2.DESCRIPTOR), server
        )
    return server
