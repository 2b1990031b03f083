from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from frakpy.config import StreamingConfig
from frakpy.streaming.server import StreamingServer
from tests.unit.streaming.fakes import FakeBackend


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
async def server(backend: FakeBackend) -> AsyncIterator[StreamingServer]:
    srv = StreamingServer(StreamingConfig(address="127.0.0.1", port=0), backend)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()
