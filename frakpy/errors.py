"""The one error vocabulary of frakpy.

Domain code raises these; only the CRI interceptor turns them into gRPC status codes,
and lower libraries (QMP, sqlite, CNI, HTTP) are wrapped at their boundary with
``raise ... from exc``. Every message names the object and, where possible, the fix.

    FrakpyError                      -> INTERNAL
     ├── InvalidArgument             -> INVALID_ARGUMENT
     ├── NotFound                    -> NOT_FOUND
     ├── AlreadyExists               -> ALREADY_EXISTS
     ├── FailedPrecondition          -> FAILED_PRECONDITION
     ├── Unavailable                 -> UNAVAILABLE
     ├── DeadlineExceeded            -> DEADLINE_EXCEEDED
     ├── Unauthenticated             -> UNAUTHENTICATED
     ├── ResourceExhausted           -> RESOURCE_EXHAUSTED
     └── Unimplemented               -> UNIMPLEMENTED
"""

from __future__ import annotations


class FrakpyError(Exception):
    """Base of every error frakpy raises on purpose; maps to INTERNAL when not refined."""

    code = "INTERNAL"

    def __init__(self, message: str, *, kind: str | None = None, ident: str | None = None) -> None:
        self.kind = kind
        self.ident = ident
        if kind and ident and ident not in message:
            message = f"{kind} {ident}: {message}"
        super().__init__(message)

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidArgument(FrakpyError):
    code = "INVALID_ARGUMENT"


class NotFound(FrakpyError):
    code = "NOT_FOUND"


class AlreadyExists(FrakpyError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(FrakpyError):
    code = "FAILED_PRECONDITION"


class Unavailable(FrakpyError):
    code = "UNAVAILABLE"


class DeadlineExceeded(FrakpyError):
    code = "DEADLINE_EXCEEDED"


class Unauthenticated(FrakpyError):
    code = "UNAUTHENTICATED"


class ResourceExhausted(FrakpyError):
    code = "RESOURCE_EXHAUSTED"


class Unimplemented(FrakpyError):
    code = "UNIMPLEMENTED"
