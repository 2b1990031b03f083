"""Make the repository root (for ``tests.fakes``) and ``guest-agent/`` importable."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
for path in (REPO, REPO / "guest-agent"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


import pytest  # noqa: E402

from frakpy.agent.client import AgentClient  # noqa: E402
from tests.fakes.agent import FakeAgent  # noqa: E402


@pytest.fixture
async def agent(tmp_path: Path):  # type: ignore[no-untyped-def]
    """The real agent services behind a unix socket (FakeAgent); modules may override it."""
    async with FakeAgent(tmp_path) as fake:
        yield fake


@pytest.fixture
async def client(agent: FakeAgent):  # type: ignore[no-untyped-def]
    c = await AgentClient.connect(agent.uri, timeout=10)  # containers (crun) may take a while
    yield c
    await c.close()
