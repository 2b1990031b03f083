"""The few Linux calls frakpy makes through libc (mount, setns, unshare, raw syscalls), shared by
the network-namespace and volume-namespace code: one libc handle, one error check, and the
run-on-a-fresh-thread helper that keeps namespace changes off the daemon's own threads."""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

MS_BIND = 4096
MS_REC = 16384
MNT_DETACH = 2

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

T = TypeVar("T")


def check(rc: int, what: str, target: str = "") -> int:
    """``rc`` of a libc call; raises OSError with errno and ``what``/``target`` when it failed."""
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what} {target}: {os.strerror(err)}".replace("  ", " "), target or None)
    return rc


def on_thread(fn: Callable[[], T], name: str = "frakpy-ns") -> T:
    """Run ``fn`` on a new thread (whose namespaces it may change) and return its result or raise
    its exception; the thread ends with ``fn``, so nothing else ever runs in those namespaces."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    t = threading.Thread(target=body, name=name, daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]
