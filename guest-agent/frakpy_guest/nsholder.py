"""The pod's namespace holder: PID 1 of the shared PID namespace, owner of the shared IPC one.

Started on demand by the first container whose spec asks for ``@sandbox`` pid/ipc namespaces,
kept until the VM powers off. The holder is ``/usr/lib/frakpy/pause`` (``guest-agent/pause.c``):
it unshares PID+IPC, forks the namespace init and prints that init's pid before exiting.

Exit statuses of container inits still reach the agent: crun joins the holder's PID namespace
with setns(2) and forks the init, so the init's parent is crun (in the agent's namespace); when
crun exits, the kernel re-parents the init to the reaper of *crun's* namespace, i.e. the agent
(PID 1 of the VM). The holder only inherits orphans whose parent lives inside its namespace
(children of container processes).
"""

from __future__ import annotations

import asyncio
import os

from frakpy_guest import procs

PAUSE_BINARY = "/usr/lib/frakpy/pause"


async def start(reaper, binary: str = PAUSE_BINARY, timeout: float = 10.0) -> int:  # type: ignore[no-untyped-def]  # noqa: ASYNC109
    """Start the holder; returns its pid in the agent's PID namespace."""
    if not os.path.exists(binary):  # noqa: ASYNC240 - once per pod
        raise OSError(f"namespace holder {binary} is missing from the guest image "
                      "(build it from guest-agent/pause.c)")
    r, w = procs.pipe()
    try:
        pid = procs.spawn([binary], stdout=w, stderr=2)
    finally:
        os.close(w)
    try:
        code = await asyncio.wait_for(procs.wait(reaper, pid), timeout)
        out = os.read(r, 64)  # the parent printed and exited: the line is in the pipe
    finally:
        os.close(r)
    if code != 0 or not out.strip().isdigit():
        raise OSError(f"namespace holder {binary} failed (exit {code}, output {out!r})")
    return int(out)
