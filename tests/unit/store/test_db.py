import json
import multiprocessing
import os
import signal
import sqlite3

import pytest

from frakpy.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from frakpy.sandbox.model import Sandbox, SandboxMetadata, SandboxState
from frakpy.store.db import SCHEMA_VERSION, Database
from frakpy.store.index import IdIndex, NameIndex
from frakpy.store.records import SandboxRecords


def _sandbox(i: int = 0) -> Sandbox:
    return Sandbox(id=f"{i:02d}" + "ab" * 31, metadata=SandboxMetadata(f"p{i}", "ns", f"u{i}", 0),
                   runtime_handler="frakpy", labels={"app": "x"})


def test_schema_created_and_versioned(tmp_path):
    db = Database(tmp_path / "s.db")
    assert db.schema_version == SCHEMA_VERSION
    db.close()
    db = Database(tmp_path / "s.db")  # reopening migrates nothing and keeps the version
    assert db.schema_version == SCHEMA_VERSION
    assert db.query("PRAGMA journal_mode")[0][0] == "wal"


def test_newer_schema_refused(tmp_path):
    conn = sqlite3.connect(tmp_path / "s.db")
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 5}")
    conn.close()
    with pytest.raises(FailedPrecondition, match="newer than this frakpy"):
        Database(tmp_path / "s.db")


def test_sandbox_records_roundtrip(tmp_path):
    recs = SandboxRecords(Database(tmp_path / "s.db"))
    sb = _sandbox()
    sb.vm.pid = 42
    sb.vm.boot = {"total_s": 1.5}
    recs.save(sb)
    sb.transition(SandboxState.READY)
    recs.save(sb)
    (loaded,) = recs.load_all()
    assert loaded == sb
    recs.delete(sb.id)
    assert recs.load_all() == []


def test_failed_transaction_leaves_nothing(tmp_path):
    db = Database(tmp_path / "s.db")
    with pytest.raises(RuntimeError), db.tx() as cur:
        cur.execute("INSERT INTO settings (key, value) VALUES ('a', '1')")
        raise RuntimeError("crash in the middle")
    assert db.get_setting("a") is None


def _write_then_die(path: str) -> None:
    db = Database(__import__("pathlib").Path(path))
    with db.tx() as cur:
        cur.execute("INSERT INTO settings (key, value) VALUES ('committed', '1')")
    cur_ctx = db.tx()
    cur = cur_ctx.__enter__()
    cur.execute("INSERT INTO settings (key, value) VALUES ('half', '1')")
    os.kill(os.getpid(), signal.SIGKILL)  # die with the transaction open


def test_reopen_after_killed_mid_write(tmp_path):
    path = tmp_path / "s.db"
    Database(path).close()
    proc = multiprocessing.get_context("fork").Process(target=_write_then_die, args=(str(path),))
    proc.start()
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    db = Database(path)
    assert db.get_setting("committed") == "1"
    assert db.get_setting("half") is None
    assert db.query("PRAGMA integrity_check")[0][0] == "ok"


def test_records_are_json_documents(tmp_path):
    db = Database(tmp_path / "s.db")
    SandboxRecords(db).save(_sandbox(1))
    (doc,) = db.docs("sandboxes")
    assert json.loads(json.dumps(doc))["metadata"]["name"] == "p1"


def test_state_machine_refuses_bad_transitions():
    sb = _sandbox()
    sb.transition(SandboxState.READY)
    sb.transition(SandboxState.NOTREADY, "stopped")
    assert sb.notready_reason == "stopped"
    with pytest.raises(FailedPrecondition):
        sb.transition(SandboxState.READY)


def test_indexes():
    names = NameIndex("sandbox")
    names.reserve("a", "id1")
    names.reserve("a", "id1")  # same owner: fine
    with pytest.raises(AlreadyExists, match="reserved by sandbox id1"):
        names.reserve("a", "id2")
    names.release("a")
    names.reserve("a", "id2")

    ids: IdIndex[str] = IdIndex("sandbox")
    ids.add("abc123", "x")
    ids.add("abd456", "y")
    assert ids.get("abc") == "x"
    with pytest.raises(InvalidArgument, match="ambiguous"):
        ids.get("ab")
    with pytest.raises(NotFound):
        ids.get("zz")
    with pytest.raises(InvalidArgument):
        ids.get("")
