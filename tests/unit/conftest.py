"""Fixtures shared by the unit tests."""

from __future__ import annotations

import contextlib
import os
import stat

import pytest


@pytest.fixture
def block_device() -> str:
    """Some block device node of this host (only stat'ed and named, never opened)."""
    for name in sorted(os.listdir("/dev")):
        path = f"/dev/{name}"
        with contextlib.suppress(OSError):
            if stat.S_ISBLK(os.stat(path).st_mode):
                return path
    pytest.skip("no block device on this host")
