"""Named network namespaces under /run/netns, the way ``ip netns`` makes them.

A pod's netns is a bind mount of a namespace file onto ``/run/netns/frakpy-<id12>``, so it
outlives every process and can be found again after a daemon restart.

Threads, not forks: network namespace membership is per *thread* on Linux, and both
``unshare(CLONE_NEWNET)`` and ``setns(fd, CLONE_NEWNET)`` are allowed in a multi-threaded
process. Every operation that must happen "inside" a netns therefore runs on a short-lived
dedicated thread that enters the namespace, does its work and exits; the asyncio loop thread
and the default executor threads never change namespace. Sockets (netlink, /dev/net/tun,
AF_PACKET) keep the namespace they were created in, so a netlink socket opened on such a
thread may be used from it for the rest of the call.

Subprocesses get the namespace either from the path (CNI plugins receive ``CNI_NETNS``) or by
prefixing their argv with :func:`exec_argv` (``nsenter --net=<path>``).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from frakpy import oscalls
from frakpy.errors import FailedPrecondition, InvalidArgument
from frakpy.oscalls import MNT_DETACH, MS_BIND, MS_REC

NETNS_RUN_DIR = "/run/netns"
NAME_PREFIX = "frakpy-"
ID_PREFIX_LEN = 12

CLONE_NEWNET = 0x40000000
MS_SHARED = 1 << 20

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_libc = oscalls.libc
_check = oscalls.check

T = TypeVar("T")


def name_for(sandbox_id: str) -> str:
    """The netns name of a sandbox: ``frakpy-`` plus the first 12 characters of its id."""
    if not sandbox_id or not re.fullmatch(r"[A-Za-z0-9_.-]+", sandbox_id):
        raise InvalidArgument(
            f"sandbox id {sandbox_id!r} cannot name a network namespace; use letters, digits, '-', '_', '.'"
        )
    return NAME_PREFIX + sandbox_id[:ID_PREFIX_LEN]


def path_for(name: str, run_dir: str = NETNS_RUN_DIR) -> str:
    if not _NAME_RE.match(name):
        raise InvalidArgument(f"network namespace name {name!r} is not a valid file name")
    return os.path.join(run_dir, name)


def _share_run_dir(run_dir: str) -> None:
    """Make the run dir a shared mount point (iproute2 does the same) so that netns mounts
    made later are visible in mount namespaces cloned from ours."""
    os.makedirs(run_dir, mode=0o755, exist_ok=True)
    if _libc.mount(b"", run_dir.encode(), b"none", MS_SHARED | MS_REC, None) == 0:
        return
    _check(_libc.mount(run_dir.encode(), run_dir.encode(), b"none", MS_BIND | MS_REC, None), "bind", run_dir)
    _check(_libc.mount(b"", run_dir.encode(), b"none", MS_SHARED | MS_REC, None), "make-shared", run_dir)


def _on_thread(fn: Callable[[], T]) -> T:
    return oscalls.on_thread(fn, "frakpy-netns")


async def _on_thread_async(fn: Callable[[], T]) -> T:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def done(value: Any = None, error: BaseException | None = None) -> None:
        if fut.cancelled():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)

    def body() -> None:
        try:
            value = fn()
        except BaseException as exc:
            loop.call_soon_threadsafe(done, None, exc)
        else:
            loop.call_soon_threadsafe(done, value)

    threading.Thread(target=body, name="frakpy-netns", daemon=True).start()
    return await fut


def exists(name: str, run_dir: str = NETNS_RUN_DIR) -> bool:
    return os.path.exists(path_for(name, run_dir))


def list_names(prefix: str = NAME_PREFIX, run_dir: str = NETNS_RUN_DIR) -> list[str]:
    try:
        return sorted(n for n in os.listdir(run_dir) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def create(name: str, run_dir: str = NETNS_RUN_DIR) -> str:
    """Create the named netns and return its path. Fails with FailedPrecondition when the name
    is taken (a stale namespace: delete it first)."""
    path = path_for(name, run_dir)

    def body() -> str:
        _share_run_dir(run_dir)
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444))
        except FileExistsError:
            raise FailedPrecondition(
                f"network namespace {path} already exists; remove it with `ip netns delete {name}` "
                "or let frakpyd clean up orphans"
            ) from None
        try:
            # Only this (throw-away) thread moves to the new namespace.
            _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)", path)
            tid = threading.get_native_id()
            src = f"/proc/self/task/{tid}/ns/net".encode()
            _check(_libc.mount(src, path.encode(), b"none", MS_BIND, None), "bind-mount netns", path)
        except BaseException:
            try:
                os.unlink(path)
            except OSError:
                pass
            raise
        return path

    return _on_thread(body)


def delete(name: str, run_dir: str = NETNS_RUN_DIR) -> bool:
    """Unmount and remove the named netns. Idempotent: returns False when it did not exist.
    The namespace itself dies when the last process/socket using it goes away."""
    path = path_for(name, run_dir)
    if not os.path.lexists(path):
        return False
    rc = _libc.umount2(path.encode(), MNT_DETACH)
    if rc != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # EINVAL: not a mount point (half-created)
            raise OSError(err, f"umount {path}: {os.strerror(err)}", path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _enter(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, CLONE_NEWNET), "setns", path)
    finally:
        os.close(fd)


@contextmanager
def entered(path: str) -> Iterator[None]:
    """Move the *current thread* into the netns at ``path`` and back on exit.

    Only for threads you own (see :func:`run_in` / :func:`run_in_async`); never use it on the
    asyncio loop thread or on a pool thread.
    """
    if not os.path.exists(path):
        raise FailedPrecondition(f"network namespace {path} does not exist")
    home = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _enter(path)
        try:
            yield
        finally:
            _check(_libc.setns(home, CLONE_NEWNET), "setns back to the original netns", path)
    finally:
        os.close(home)


def run_in(path: str, fn: Callable[[], T]) -> T:
    """Run ``fn()`` on a fresh thread inside the netns at ``path`` (blocking)."""

    def body() -> T:
        with entered(path):
            return fn()

    return _on_thread(body)


async def run_in_async(path: str, fn: Callable[[], T]) -> T:
    """Run blocking ``fn()`` on a fresh thread inside the netns at ``path`` and await it."""

    def body() -> T:
        with entered(path):
            return fn()

    return await _on_thread_async(body)


def exec_argv(path: str, argv: list[str]) -> list[str]:
    """argv that runs ``argv`` inside the netns (util-linux ``nsenter``); use it instead of a
    ``preexec_fn`` calling setns, which is unsafe in a threaded process."""
    return ["nsenter", f"--net={path}", "--", *argv]


async def create_async(name: str, run_dir: str = NETNS_RUN_DIR) -> str:
    return await asyncio.to_thread(create, name, run_dir)


async def delete_async(name: str, run_dir: str = NETNS_RUN_DIR) -> bool:
    return await asyncio.to_thread(delete, name, run_dir)
