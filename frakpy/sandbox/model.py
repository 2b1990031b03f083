"""Sandbox record and its state machine.

    RunPodSandbox
         │
         ▼
     CREATING ──any step fails──► (every step undone, record deleted)
         │ agent answered, guest set up
         ▼
       READY ──StopPodSandbox / QEMU exited / not re-adoptable──► NOTREADY ──RemovePodSandbox──► (gone)

CREATING is internal: such a sandbox holds its name but is not listed. CRI only knows
SANDBOX_READY and SANDBOX_NOTREADY.
"""

from __future__ import annotations

import enum
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from frakpy.errors import FailedPrecondition


class SandboxState(enum.Enum):
    CREATING = "creating"
    READY = "ready"
    NOTREADY = "notready"


_ALLOWED = {
    SandboxState.CREATING: {SandboxState.READY, SandboxState.NOTREADY},
    SandboxState.READY: {SandboxState.NOTREADY},
    SandboxState.NOTREADY: set(),
}


@dataclass
class SandboxMetadata:
    name: str
    namespace: str
    uid: str
    attempt: int = 0

    @property
    def key(self) -> str:
        return f"{self.name}_{self.namespace}_{self.uid}_{self.attempt}"


@dataclass
class VMInfo:
    """What is needed to find the VM again after a daemon restart."""

    pid: int = 0
    run_dir: str = ""
    agent_uri: str = ""
    accel: str = ""
    accel_reason: str = ""
    transport: str = ""
    machine: str = ""
    vcpus: int = 0
    memory_mib: int = 0
    kernel: str = ""
    rootfs: str = ""
    root_device: str = ""  # "pmem" (DAX) or "virtio-blk"
    vsock_backend: str = ""  # transport vsock: "kernel" (vhost-vsock) or "user" (frakpy.vm.vsockdev)
    vsock_cid: int = 0
    boot: dict[str, Any] = field(default_factory=dict)  # mode ("cold"|"template"), template, timings (s)


@dataclass
class Sandbox:
    id: str
    metadata: SandboxMetadata
    runtime_handler: str
    created_at: int = field(default_factory=time.time_ns)  # unix ns
    state: SandboxState = SandboxState.CREATING
    hostname: str = ""
    log_directory: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    # pod-level settings kept for container creation (security context, DNS, ports...)
    config: dict[str, Any] = field(default_factory=dict)
    vm: VMInfo = field(default_factory=VMInfo)
    network: dict[str, Any] = field(default_factory=dict)  # netns, ips, cached CNI result
    notready_reason: str = ""

    def transition(self, new: SandboxState, reason: str = "") -> None:
        if new == self.state:
            return
        if new not in _ALLOWED[self.state]:
            raise FailedPrecondition(
                f"sandbox {self.id[:12]} cannot go from {self.state.value} to {new.value}"
            )
        self.state = new
        if new is SandboxState.NOTREADY:
            self.notready_reason = reason

    # -- persistence ----------------------------------------------------------------------
    def to_doc(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["state"] = self.state.value
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Sandbox:
        doc = dict(doc)
        doc["metadata"] = SandboxMetadata(**doc["metadata"])
        doc["vm"] = VMInfo(**doc["vm"])
        doc["state"] = SandboxState(doc["state"])
        return cls(**doc)
