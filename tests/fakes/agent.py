"""An in-process guest agent for tests: the real ``frakpy_guest`` services over a unix socket.

PID-1 side effects (clock, RNG, hostname, /etc, power-off) go to a ``FakeSystem`` that records
them, so this runs unprivileged::

    async with FakeAgent(tmp_path, sandbox_hint="abc") as agent:
        client = await AgentClient.connect(agent.uri, timeout=2)
        ...
        assert agent.system.etc["hosts"].startswith("127.0.0.1")

``agent.uri`` is a ``serial://`` URI, exactly what frakpyd gets for QEMU's chardev socket.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

_GUEST = Path(__file__).resolve().parents[2] / "guest-agent"
if str(_GUEST) not in sys.path:
    sys.path.insert(0, str(_GUEST))

from frakpy_guest.server import build_server  # noqa: E402
from frakpy_guest.services import AgentState  # noqa: E402
from frakpy_guest.system import System  # noqa: E402

FAKE_BOOT_ID = "3f1c2a4e-5b6d-4e7f-8a9b-0c1d2e3f4a5b"
FAKE_MEMINFO = "MemTotal:         262144 kB\nMemFree:          200000 kB\n"


class FakeSystem(System):
    """Records every side effect instead of performing it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.hostname: str | None = None
        self.realtime_ns: int | None = None
        self.entropy: list[bytes] = []
        self.etc: dict[str, str] = {}
        self.synced = 0
        self.powered_off = False
        self.files = {"/proc/meminfo": FAKE_MEMINFO, "/proc/sys/kernel/random/boot_id": FAKE_BOOT_ID + "\n"}
        self.fail: dict[str, OSError] = {}  # method name -> error to raise

    def _record(self, name: str, arg: Any) -> None:
        self.calls.append((name, arg))
        if name in self.fail:
            raise self.fail[name]

    def read_text(self, path: str) -> str:
        return self.files[path]

    def set_hostname(self, name: str) -> None:
        self._record("set_hostname", name)
        self.hostname = name

    def set_realtime_ns(self, ns: int) -> None:
        self._record("set_realtime_ns", ns)
        self.realtime_ns = ns

    def add_entropy(self, seed: bytes) -> int:
        self._record("add_entropy", seed)
        self.entropy.append(seed)
        return 8 * len(seed)

    def write_etc_file(self, name: str, content: str) -> None:
        self._record("write_etc_file", name)
        self.etc[name] = content

    def sync(self) -> None:
        self._record("sync", None)
        self.synced += 1

    def power_off(self) -> None:
        self._record("power_off", None)
        self.powered_off = True


class FakeAgent:
    """Serves the agent API on ``<directory>/agent.sock`` until ``stop()``."""

    def __init__(self, directory: str | Path, *, system: FakeSystem | None = None) -> None:
        self.path = Path(directory) / "agent.sock"
        self.system = system or FakeSystem()
        self.state = AgentState(self.system)
        self.server = build_server(self.state)
        self._listener: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    @property
    def uri(self) -> str:
        return f"serial://{self.path}"

    async def start(self) -> FakeAgent:
        self._listener = await asyncio.start_unix_server(self._serve, path=str(self.path))
        self.state.ready_uptime_ns = self.state.start_uptime_ns + 1
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            await self.server.serve(reader, writer)
        finally:
            self._writers.discard(writer)

    def drop_connections(self) -> None:
        """Cut every host connection, like a VM dying under its clients."""
        for writer in list(self._writers):
            writer.transport.abort()

    async def stop(self) -> None:
        """Stop listening and cut existing connections."""
        if self._listener is not None:
            self._listener.close()
            self.drop_connections()
            await self._listener.wait_closed()
            self._listener = None

    async def __aenter__(self) -> FakeAgent:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
