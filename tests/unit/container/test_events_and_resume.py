"""The container event bus, termination-message log tails, update resources, log resume."""

from __future__ import annotations

import asyncio
from pathlib import Path

from frakpy.container.logs import CriLogWriter
from frakpy.container.manager import _log_tail, _truncate_unrecorded
from frakpy.container.model import Container, ContainerMetadata
from frakpy.container.spec import oci_resources
from frakpy.events import ContainerEvent, ContainerEventType, EventBus


def _ev(kind: ContainerEventType, cid: str = "c1") -> ContainerEvent:
    return ContainerEvent(kind, cid, "sb", 1, None)


def test_bus_delivers_in_order_to_every_subscriber() -> None:
    async def main() -> None:
        bus = EventBus()
        a, b = bus.subscribe(), bus.subscribe()
        ta = asyncio.ensure_future(a.__anext__())
        tb = asyncio.ensure_future(b.__anext__())
        await asyncio.sleep(0)
        assert bus.subscribers == 2
        bus.publish(_ev(ContainerEventType.CREATED))
        bus.publish(_ev(ContainerEventType.STARTED))
        assert (await ta).type is ContainerEventType.CREATED
        assert (await tb).type is ContainerEventType.CREATED
        assert (await a.__anext__()).type is ContainerEventType.STARTED
        await a.aclose()
        await b.aclose()
        assert bus.subscribers == 0
        bus.publish(_ev(ContainerEventType.STOPPED))  # nobody listening: fine

    asyncio.run(main())


def test_slow_subscriber_loses_oldest_and_publisher_never_blocks() -> None:
    async def main() -> None:
        bus = EventBus(maxsize=2)
        sub = bus.subscribe()
        first = asyncio.ensure_future(sub.__anext__())
        await asyncio.sleep(0)
        bus.publish(_ev(ContainerEventType.CREATED, "x"))
        assert (await first).container_id == "x"
        for cid in ("1", "2", "3"):
            bus.publish(_ev(ContainerEventType.CREATED, cid))
        assert [(await sub.__anext__()).container_id for _ in range(2)] == ["2", "3"]
        await sub.aclose()

    asyncio.run(main())


def test_log_tail_gives_the_text_of_the_last_lines(tmp_path: Path) -> None:
    w = CriLogWriter(tmp_path / "0.log")
    for i in range(100):
        w.write("stdout", f"line {i}\n".encode())
    w.write("stderr", b"partial")
    w.close()
    tail = _log_tail(str(tmp_path / "0.log"))
    assert tail.endswith("line 99\npartial\n")
    assert tail.startswith("line 21\n")  # the last 80 lines
    assert len(_log_tail(str(tmp_path / "0.log"), limit=10)) == 10
    assert _log_tail(str(tmp_path / "missing.log")) == ""


def _container(log_path: str, log_size: int) -> Container:
    return Container(id="c" * 64, sandbox_id="s" * 64, metadata=ContainerMetadata("n"), image_ref="i",
                     image_id="sha256:x", log_path=log_path, log_size=log_size)


def test_unrecorded_log_bytes_are_truncated(tmp_path: Path) -> None:
    p = tmp_path / "0.log"
    p.write_bytes(b"recorded\nwritten but not recorded\n")
    _truncate_unrecorded(_container(str(p), len(b"recorded\n")))
    assert p.read_bytes() == b"recorded\n"
    _truncate_unrecorded(_container(str(p), -1))  # an old record: left alone
    _truncate_unrecorded(_container(str(p), 100))  # shorter than recorded (rotated): left alone
    assert p.read_bytes() == b"recorded\n"
    _truncate_unrecorded(_container(str(tmp_path / "gone.log"), 5))


def test_log_size_round_trips_and_defaults_to_unknown() -> None:
    c = _container("/x", 42)
    assert Container.from_doc(c.to_doc()).log_size == 42
    doc = c.to_doc()
    del doc["log_size"]
    assert Container.from_doc(doc).log_size == -1


def test_oci_resources_from_cri_dict() -> None:
    r = oci_resources({"memory_limit_in_bytes": "67108864", "cpu_quota": "50000", "cpu_period": "100000",
                       "cpuset_cpus": "0", "unified": {"memory.high": "1000000"}})
    assert r == {"cpu": {"quota": 50000, "period": 100000, "cpus": "0"},
                 "memory": {"limit": 67108864, "swap": 67108864}, "unified": {"memory.high": "1000000"}}
    assert oci_resources({}) == {}
