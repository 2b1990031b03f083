"""In-process container event bus: the container manager publishes, GetContainerEvents streams.

Each subscriber has its own bounded queue; a subscriber that falls behind by more than
``maxsize`` events loses the oldest (kubelet relists anyway), publishers never block.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any


class ContainerEventType(enum.Enum):
    CREATED = "created"
    STARTED = "started"
    STOPPED = "stopped"
    DELETED = "deleted"


@dataclass(frozen=True)
class ContainerEvent:
    type: ContainerEventType
    container_id: str
    sandbox_id: str
    created_at: int  # unix ns, when the event happened
    container: Any  # a snapshot of the Container record at that moment


class EventBus:
    def __init__(self, maxsize: int = 1000) -> None:
        self.maxsize = maxsize
        self._subscribers: set[asyncio.Queue[ContainerEvent]] = set()

    def publish(self, event: ContainerEvent) -> None:
        for q in list(self._subscribers):
            if q.full():
                q.get_nowait()
            q.put_nowait(event)

    async def subscribe(self) -> AsyncIterator[ContainerEvent]:
        q: asyncio.Queue[ContainerEvent] = asyncio.Queue(self.maxsize)
        self._subscribers.add(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._subscribers.discard(q)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
