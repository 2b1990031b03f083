"""Save and load Sandbox records; one transaction per transition."""

from __future__ import annotations

import json

from frakpy.container.model import Container
from frakpy.sandbox.model import Sandbox
from frakpy.store.db import Database


class SandboxRecords:
    def __init__(self, db: Database) -> None:
        self.db = db

    def save(self, sb: Sandbox) -> None:
        md = sb.metadata
        self.db.put("sandboxes", {
            "id": sb.id, "name": md.name, "namespace": md.namespace, "uid": md.uid,
            "attempt": md.attempt, "doc": json.dumps(sb.to_doc(), sort_keys=True),
        })

    def delete(self, sandbox_id: str) -> None:
        with self.db.tx() as cur:
            cur.execute("DELETE FROM containers WHERE sandbox_id = ?", (sandbox_id,))
            cur.execute("DELETE FROM sandboxes WHERE id = ?", (sandbox_id,))

    def load_all(self) -> list[Sandbox]:
        return [Sandbox.from_doc(doc) for doc in self.db.docs("sandboxes")]


class ContainerRecords:
    def __init__(self, db: Database) -> None:
        self.db = db

    def save(self, c: Container) -> None:
        self.db.put("containers", {
            "id": c.id, "sandbox_id": c.sandbox_id, "name": c.metadata.name,
            "attempt": c.metadata.attempt, "doc": json.dumps(c.to_doc(), sort_keys=True),
        })

    def delete(self, container_id: str) -> None:
        self.db.delete("containers", container_id)

    def load_all(self) -> list[Container]:
        return [Container.from_doc(doc) for doc in self.db.docs("containers")]
