"""Container record: state from timestamps, exit reasons, persistence round trip."""

from __future__ import annotations

from pathlib import Path

from frakpy.container.model import Container, ContainerMetadata, ContainerState
from frakpy.store.db import Database
from frakpy.store.records import ContainerRecords


def make() -> Container:
    return Container(id="c" * 64, sandbox_id="s" * 64, metadata=ContainerMetadata("app", 1),
                     image_ref="busybox", image_id="sha256:" + "a" * 64, labels={"k": "v"}, log_path="/l/app/1.log")


def test_state_follows_timestamps() -> None:
    c = make()
    assert c.state is ContainerState.CREATED
    c.started_at = 10
    assert c.state is ContainerState.RUNNING
    c.mark_exited(3, 20)
    assert c.state is ContainerState.EXITED and c.exit_code == 3 and c.reason == "Error" and c.finished_at == 20


def test_exit_reasons() -> None:
    c = make()
    c.mark_exited(0, 5)
    assert c.reason == "Completed" and c.started_at == 5
    c = make()
    c.mark_exited(137, 5, oom_killed=True)
    assert c.reason == "OOMKilled"


def test_unknown_when_lost() -> None:
    c = make()
    c.started_at = 1
    c.mark_unknown("VM gone")
    assert c.state is ContainerState.UNKNOWN and c.reason == "Unknown" and c.message == "VM gone"
    done = make()
    done.mark_exited(0, 5)
    done.mark_unknown("late")
    assert done.state is ContainerState.EXITED


def test_round_trip_through_the_database(tmp_path: Path) -> None:
    db = Database(tmp_path / "frakpy.db")
    records = ContainerRecords(db)
    c = make()
    c.started_at, c.output_offset, c.stream_offsets = 7, 42, {"stdout": 42}
    records.save(c)
    (loaded,) = records.load_all()
    assert loaded == c and loaded.state is ContainerState.RUNNING and loaded.name_key == c.name_key
    records.delete(c.id)
    assert records.load_all() == []
    db.close()
