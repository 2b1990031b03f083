"""Runtime-wide facts for CRI Status: readiness conditions that tell the truth, versions, config."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from frakpy import __version__
from frakpy.config import Config, as_dict
from frakpy.errors import FrakpyError
from frakpy.store.db import Database
from frakpy.vm import accel
from frakpy.vm.guest import resolve as resolve_guest


@dataclass
class Condition:
    type: str
    status: bool
    reason: str = ""
    message: str = ""


NetworkStatus = Callable[[], tuple[bool, str, str]]


@lru_cache(maxsize=8)
def qemu_version(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        return ""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.splitlines()[0] if out else ""


class RuntimeInfo:
    def __init__(self, cfg: Config, db: Database, network_status: NetworkStatus | None = None) -> None:
        self.cfg = cfg
        self.db = db
        self.network_status = network_status
        self.templates: Any = None  # the sandbox manager's TemplateStore, for its counters

    def handler_names(self) -> list[str]:
        return sorted(self.cfg.handlers)

    def conditions(self) -> list[Condition]:
        return [self._runtime_ready(), self._network_ready()]

    def _runtime_ready(self) -> Condition:
        handler = self.cfg.handler(self.cfg.daemon.default_handler)
        if not qemu_version(handler.qemu_binary):
            return Condition("RuntimeReady", False, "QemuMissing",
                             f"{handler.qemu_binary} is not installed or does not run "
                             "(apt-get install qemu-system-x86)")
        try:
            resolve_guest(self.cfg.guest_manifest, handler)
        except FrakpyError as exc:
            return Condition("RuntimeReady", False, "GuestImageMissing", str(exc))
        return Condition("RuntimeReady", True)

    def _network_ready(self) -> Condition:
        if self.network_status is None:
            return Condition("NetworkReady", False, "NetworkPluginNotReady", "pod networking is not configured")
        ready, reason, message = self.network_status()
        return Condition("NetworkReady", ready, "" if ready else reason, "" if ready else message)

    def set_pod_cidr(self, cidr: str) -> None:
        self.db.set_setting("pod_cidr", cidr)

    def verbose(self) -> dict[str, Any]:
        handler = self.cfg.handler(self.cfg.daemon.default_handler)
        choice = accel.choose(handler.accelerator)
        return {
            "config": as_dict(self.cfg),
            "version": {"frakpy": __version__, "qemu": qemu_version(handler.qemu_binary),
                        "state_schema": self.db.schema_version},
            "accelerator": {"default_handler": choice.name, "reason": choice.reason},
            "pod_cidr": self.db.get_setting("pod_cidr") or "",
            "templates": self._templates(),
        }

    def _templates(self) -> dict[str, Any]:
        if self.templates is None:
            return {}
        return {"counters": dataclasses.asdict(self.templates.counters),
                "available": [{"name": Path(m["dir"]).name, "build_s": m.get("build_s")}
                              for m in self.templates.entries()]}
