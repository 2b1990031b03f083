"""The guest kernel and root filesystem a handler boots, from images/build.py's manifest."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from frakpy.config import HandlerConfig
from frakpy.errors import FailedPrecondition


@dataclass(frozen=True)
class GuestArtifacts:
    kernel: Path
    rootfs: Path
    rootfs_fstype: str
    kernel_key: str = ""
    rootfs_key: str = ""
    qemu_lib_dir: Path | None = None  # libraries put first on QEMU's library path (images/qemulibs.py)


def resolve(manifest: Path, handler: HandlerConfig) -> GuestArtifacts:
    """Kernel and rootfs for ``handler``: its own paths, else the manifest's; both must exist."""
    data: dict[str, str] = {}
    if manifest.exists():
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError) as exc:
            raise FailedPrecondition(f"guest manifest {manifest} is unreadable: {exc}") from exc
    kernel = Path(handler.kernel or data.get("kernel", ""))
    rootfs = Path(handler.rootfs or data.get("rootfs", ""))
    fstype = data.get("rootfs_fstype", "erofs") if not handler.rootfs else _fstype_of(rootfs)
    hint = "build them with `python images/build.py` (or set kernel/rootfs in the handler's config)"
    if not handler.kernel and not handler.rootfs and not data:
        raise FailedPrecondition(f"no guest kernel and image: {manifest} is missing; {hint}")
    for what, path in (("kernel", kernel), ("root filesystem", rootfs)):
        if not str(path) or str(path) == "." or not path.is_file():
            raise FailedPrecondition(f"guest {what} {str(path) or '(unset)'} not found; {hint}")
    libs = data.get("qemu_lib_dir")
    qemu_lib_dir = Path(libs) if libs and Path(libs).is_dir() else None
    return GuestArtifacts(kernel, rootfs, fstype, data.get("kernel_key", ""), data.get("rootfs_key", ""),
                          qemu_lib_dir)


def _fstype_of(path: Path) -> str:
    return "ext4" if path.suffix == ".ext4" else "erofs"
