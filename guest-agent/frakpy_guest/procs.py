"""Spawning helper processes and waiting for them through the agent's reaper.

The agent (PID 1) reaps every child with ``waitpid(-1)`` (``init.Reaper``), so neither
``subprocess`` waits nor asyncio child watchers may be used: they would race with the reaper.
Children are started with ``posix_spawn`` and their exit codes come from ``Reaper.watch``.
"""

from __future__ import annotations

import asyncio
import os
import signal

SPAWN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
PR_SET_CHILD_SUBREAPER = 36

_reaper = None


def get_reaper(state):  # type: ignore[no-untyped-def]
    """The agent's reaper; outside PID 1 (tests, debugging) one is installed on first use and
    the process becomes a child subreaper, so container processes orphaned by crun become our
    children exactly like under PID 1."""
    global _reaper
    if state.reaper is not None:
        return state.reaper
    if _reaper is None or _reaper.loop is not asyncio.get_running_loop():
        from frakpy_guest import init

        try:
            init.libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except (OSError, AttributeError):
            pass
        reaper = init.Reaper()
        loop = asyncio.get_running_loop()
        reaper.install(loop)
        reaper.loop = loop  # type: ignore[attr-defined]
        _reaper = reaper
    state.reaper = _reaper
    return _reaper


def exit_code(code: int) -> int:
    """Reaper codes are negative for signals; report them the shell way (128 + signal)."""
    return 128 - code if code < 0 else code


def spawn(argv: list[str], *, stdin: int | None = None, stdout: int | None = None,
          stderr: int | None = None, env: dict[str, str] | None = None) -> int:
    """posix_spawn ``argv`` with the given fds as 0-2 (None: /dev/null) in a new session."""
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        actions = []
        for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
            actions.append((os.POSIX_SPAWN_DUP2, null if fd is None else fd, target))
        return os.posix_spawn(argv[0], argv, env if env is not None else SPAWN_ENV,
                              file_actions=actions, setsid=True,
                              setsigdef=(signal.SIGPIPE, signal.SIGCHLD, signal.SIGTERM, signal.SIGINT))
    finally:
        os.close(null)


def wait(reaper, pid: int) -> asyncio.Future[int]:  # type: ignore[no-untyped-def]
    """Future of ``pid``'s raw reaper exit code; register right after spawning."""
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def done(code: int) -> None:
        if not fut.done():
            fut.set_result(code)

    reaper.watch(pid, done)
    return fut


def pipe() -> tuple[int, int]:
    """A close-on-exec pipe (the spawn dup2 clears the flag on the child's copy)."""
    return os.pipe2(os.O_CLOEXEC)


def close_quietly(*fds: int | None) -> None:
    for fd in fds:
        if fd is not None and fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
