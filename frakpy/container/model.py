"""Container record; its state is derived from its timestamps.

    CreateContainer ──► CREATED ──StartContainer──► RUNNING ──exit event / VM gone──► EXITED
                           │                                                           │
                           └──────────────── RemoveContainer ◄─────────────────────────┘

``created_at`` is set when the agent created it, ``started_at`` when it started, and
``finished_at`` when its init exited (or was given up for lost: UNKNOWN has ``reason``
set but no exit). All times are unix ns.
"""

from __future__ import annotations

import enum
import time
from dataclasses import asdict, dataclass, field
from typing import Any


class ContainerState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    UNKNOWN = "unknown"


@dataclass
class ContainerMetadata:
    name: str
    attempt: int = 0


@dataclass
class Container:
    id: str
    sandbox_id: str
    metadata: ContainerMetadata
    image_ref: str  # what the CRI config asked for (ImageSpec.image)
    image_id: str  # the image's config digest, sha256:...
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    log_path: str = ""  # absolute host path, or "" when kubelet asked for no log
    created_at: int = field(default_factory=time.time_ns)
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    unknown: bool = False  # lost (VM gone before its exit was seen)
    image_mount_id: str = ""  # guest mount id of the image (per sandbox, refcounted)
    block_disks: list[str] = field(default_factory=list)  # QEMU ids of its hot-added CRI devices
    stop_signal: str = "SIGTERM"
    tty: bool = False
    stdin: bool = False
    pid: int = 0
    # combined output offset up to which the log file holds everything (resume point)
    output_offset: int = 0
    # per-stream offsets of the last byte written to the log, for diagnostics
    stream_offsets: dict[str, int] = field(default_factory=dict)
    # size of the log file when output_offset was saved (-1: unknown); on restart what lies
    # beyond it was written but not recorded, and is truncated away before the output is re-read
    log_size: int = -1
    config: dict[str, Any] = field(default_factory=dict)  # the CRI ContainerConfig as a dict

    @property
    def state(self) -> ContainerState:
        if self.unknown:
            return ContainerState.UNKNOWN
        if self.finished_at:
            return ContainerState.EXITED
        if self.started_at:
            return ContainerState.RUNNING
        return ContainerState.CREATED

    @property
    def name_key(self) -> str:
        return name_key(self.sandbox_id, self.metadata.name, self.metadata.attempt)

    def mark_exited(self, exit_code: int, finished_at: int, *, oom_killed: bool = False) -> None:
        self.exit_code = exit_code
        self.finished_at = finished_at or time.time_ns()
        if not self.started_at:
            self.started_at = self.finished_at
        if oom_killed:
            self.reason = "OOMKilled"
        else:
            self.reason = "Completed" if exit_code == 0 else "Error"

    def mark_unknown(self, reason: str) -> None:
        """The container's VM went away before its exit was seen."""
        if self.finished_at:
            return
        self.unknown = True
        self.reason = "Unknown"
        self.message = reason
        self.exit_code = 255
        self.finished_at = time.time_ns()
        if not self.started_at:
            self.started_at = self.finished_at

    # -- persistence ----------------------------------------------------------------------
    def to_doc(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Container:
        doc = dict(doc)
        doc["metadata"] = ContainerMetadata(**doc["metadata"])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in doc.items() if k in known})


def name_key(sandbox_id: str, name: str, attempt: int) -> str:
    return f"{sandbox_id}/{name}/{attempt}"
