"""Integration tier: real QEMU under TCG (or KVM), the real guest kernel and image."""

from __future__ import annotations

import os
import shutil

import pytest

from .daemon_fixture import GUEST_MANIFEST


def vm_requirements() -> str | None:
    if os.geteuid() != 0:
        return "needs root (VMs, network namespaces)"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed (run scripts/setup.sh)"
    if not GUEST_MANIFEST.exists():
        return f"guest kernel/image not built: {GUEST_MANIFEST} missing (run python images/build.py)"
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "integration" in str(item.fspath) and item.get_closest_marker("integration") is None:
            item.add_marker(pytest.mark.integration)
