"""The one seam between the CRI edge and the domain.

Every servicer method goes through ``wrap``: one debug log line per RPC with its latency,
frakpy.errors mapped to gRPC status codes, and anything unexpected logged with its
traceback and reported as INTERNAL (never a silent success).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from frakpy.errors import FrakpyError

log = logging.getLogger("frakpy.cri")

_CODES = {name: getattr(grpc.StatusCode, name) for name in (
    "INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "FAILED_PRECONDITION", "UNAVAILABLE",
    "DEADLINE_EXCEEDED", "UNAUTHENTICATED", "RESOURCE_EXHAUSTED", "UNIMPLEMENTED", "INTERNAL",
)}


def status_code(exc: FrakpyError) -> grpc.StatusCode:
    return _CODES.get(exc.code, grpc.StatusCode.INTERNAL)


def _ids(request: Any) -> str:
    for attr in ("pod_sandbox_id", "container_id"):
        value = getattr(request, attr, "")
        if value:
            return f" {attr}={value[:12]}"
    return ""


async def _fail(name: str, request: Any, context: grpc.aio.ServicerContext, exc: BaseException,
                started: float) -> None:
    elapsed = (time.monotonic() - started) * 1000
    if isinstance(exc, FrakpyError):
        code = status_code(exc)
        log.info("%s%s -> %s: %s (%.1f ms)", name, _ids(request), code.name, exc, elapsed)
        await context.abort(code, str(exc))
    log.exception("%s%s -> INTERNAL (%.1f ms)", name, _ids(request), elapsed)
    await context.abort(grpc.StatusCode.INTERNAL, f"{name}: internal error: {type(exc).__name__}: {exc}")


def wrap_unary(name: str, fn: Callable[[Any, Any], Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.monotonic()
        try:
            response = await fn(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - this is the one place errors are mapped
            await _fail(name, request, context, exc, started)
            raise  # unreachable: abort raises
        log.debug("%s%s ok (%.1f ms)", name, _ids(request), (time.monotonic() - started) * 1000)
        return response

    return handler


def wrap_stream(name: str, fn: Callable[[Any, Any], AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    @functools.wraps(fn)
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        started = time.monotonic()
        log.debug("%s stream opened", name)
        try:
            async for item in fn(request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001
            await _fail(name, request, context, exc, started)
        log.debug("%s stream closed (%.1f ms)", name, (time.monotonic() - started) * 1000)

    return handler


def unimplemented(full_name: str, streaming: bool) -> Callable[..., Any]:
    message = f"{full_name} is not implemented by frakpy yet"

    if streaming:
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            log.debug("%s -> UNIMPLEMENTED", full_name)
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)
            yield None  # pragma: no cover

        return stream

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        log.debug("%s -> UNIMPLEMENTED", full_name)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    return unary
