"""Single-use, expiring tokens that name one pending exec/attach/port-forward request.

CRI ``Exec``/``Attach``/``PortForward`` store the request here and hand back a URL that carries
only the token; the connection that presents it gets the stored request (which is authoritative:
query parameters a client adds cannot widen it). A token is random (``secrets``), valid once, and
only for the kind of request it was issued for; unknown, reused and expired tokens all look the
same to the caller (HTTP 404). Small enough to be written here rather than borrowed.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from frakpy.errors import ResourceExhausted

T = TypeVar("T")

MAX_PENDING = 4096  # kubelet's request cache holds 1000; a pending URL costs ~200 bytes


@dataclass
class _Entry(Generic[T]):
    kind: str
    request: T
    deadline: float


class TokenStore(Generic[T]):
    def __init__(self, ttl_s: float, *, clock: Callable[[], float] = time.monotonic,
                 max_pending: int = MAX_PENDING) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._max = max_pending
        self._entries: dict[str, _Entry[T]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def issue(self, kind: str, request: T) -> str:
        """A fresh token for ``request``; ``kind`` is the URL path prefix it will be valid on."""
        self._purge()
        if len(self._entries) >= self._max:
            raise ResourceExhausted(f"{len(self._entries)} streaming requests are pending (tokens not yet used); "
                                    "retry after some expire")
        token = secrets.token_urlsafe(18)  # 144 bits, URL-safe, no padding
        self._entries[token] = _Entry(kind, request, self._clock() + self.ttl_s)
        return token

    def consume(self, kind: str, token: str) -> T | None:
        """The stored request, once; None for unknown, reused, expired or wrong-kind tokens."""
        entry = self._entries.pop(token, None)
        if entry is None or entry.kind != kind or self._clock() >= entry.deadline:
            return None
        return entry.request

    def _purge(self) -> None:
        now = self._clock()
        for token in [t for t, e in self._entries.items() if now >= e.deadline]:
            del self._entries[token]
