"""The agent's ttrpc server: one service, served on the virtio-serial port and on vsock."""

import asyncio
import gc
import logging
import os
import socket
import sys
import time

from frakpy.agent.protocol import ttrpc
from frakpy_guest import services
from frakpy_guest.services import AgentState

log = logging.getLogger("frakpy_guest.server")

PORT_NAME = "agent"
VSOCK_PORT = 1024
# ExecSync answers carry up to 16 MiB of output; the host client uses the same limit.
MAX_MESSAGE_SIZE = 24 << 20


def build_server(state: AgentState) -> ttrpc.Server:
    server = ttrpc.Server(max_message_size=MAX_MESSAGE_SIZE)
    services.register(server, state)
    return server


async def listen_vsock(server: ttrpc.Server, port: int = VSOCK_PORT) -> asyncio.Server | None:
    """Listen on AF_VSOCK ``port`` for any CID; None when the guest has no vsock."""
    family = getattr(socket, "AF_VSOCK", None)
    if family is None or not os.path.exists("/dev/vsock"):  # noqa: ASYNC240 - one stat at start
        return None
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        log.info("no vsock in this guest: %s", exc)
        return None
    try:
        sock.bind((socket.VMADDR_CID_ANY, port))
        sock.listen(8)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        log.warning("cannot listen on vsock port %d: %s", port, exc)
        return None
    return await asyncio.start_server(server.serve, sock=sock)


async def run(*, start_uptime_ns: int, start_monotonic: float, pid1: bool, system=None,  # type: ignore[no-untyped-def]
              port_path: str | None = None, vsock_port: int | None = -1) -> None:
    """Serve forever (until the VM powers off); vsock on ``vsock_port`` (-1: from the kernel command
    line, None: not at all)."""
    loop = asyncio.get_running_loop()
    reaper = None
    if pid1:
        from frakpy_guest import init

        reaper = init.Reaper()
        reaper.install(loop)
        try:
            init.bring_up_loopback()
        except OSError as exc:
            log.warning("bringing up lo: %s", exc)
    if system is None:
        from frakpy_guest.system import LinuxSystem

        system = LinuxSystem()
    state = AgentState(system, start_uptime_ns=start_uptime_ns, reaper=reaper)
    server = build_server(state)
    if pid1 and template_boot():
        warm_up(system)

    tasks = []
    path = port_path or find_agent_port()
    if path is not None:
        from frakpy_guest.vport import PortListener

        listener = PortListener.open(path, server.serve)
        tasks.append(loop.create_task(listener.run()))
        log.debug("serving on virtio-serial port %s", path)
    else:
        log.warning("no virtio-serial port named %r", PORT_NAME)
    if vsock_port == -1:
        vsock_port = vsock_port_from_cmdline()
    vsock = await listen_vsock(server, vsock_port) if vsock_port is not None else None
    if vsock is not None:
        log.debug("serving on vsock port %d", vsock_port)
    if not tasks and vsock is None:
        raise RuntimeError(f"nowhere to serve: no virtio-serial port named {PORT_NAME!r} and no vsock")

    # Everything imported so far lives as long as the agent: keep it out of the collector's scans
    # (a full collection would otherwise touch every object, and in a VM restored from a template
    # each touched page is a private copy of the template's).
    gc.freeze()
    state.ready_uptime_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    print(f"frakpy-agent ready in {time.monotonic() - start_monotonic:.3f} s "
          f"(uptime {state.ready_uptime_ns / 1e9:.3f} s)", file=sys.stderr, flush=True)
    if tasks:
        await asyncio.gather(*tasks)  # only returns if a listener fails
    else:
        await asyncio.Event().wait()


def vsock_port_from_cmdline() -> int:
    """``frakpy.vsock_port=N``: where the host expects the agent on vsock (VSOCK_PORT if absent or bad)."""
    from frakpy_guest.init import cmdline_value

    text = cmdline_value("frakpy.vsock_port")
    if text is None:
        return VSOCK_PORT
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 0 < port < 0xFFFFFFFF:
        log.warning("frakpy.vsock_port=%s is not a vsock port; using %d", text, VSOCK_PORT)
        return VSOCK_PORT
    return port


def template_boot() -> bool:
    """``frakpy.template=1``: this boot makes a VM template that pods will be restored from."""
    from frakpy_guest.init import cmdline_flag

    return cmdline_flag("frakpy.template=1")


def warm_up(system=None) -> None:  # type: ignore[no-untyped-def]
    """Do once, in the template, what every pod would otherwise do after its restore: import the
    modules the lazily loaded handlers (SetupNetwork, the container services) need, and bind the writable copies of
    /etc/hosts and /etc/resolv.conf over the read-only image (a clone's SetupSandbox then only
    writes them: no mount(2) through ctypes, code a restored VM would translate afresh)."""
    t0 = time.monotonic()
    try:
        import importlib

        from frakpy_guest import bundle, crun, iobuf, netconf, procs, rtnl, runtime, users  # noqa: F401
        from frakpy_guest.services import LAZY_METHODS

        for module in sorted({m for m, *_ in LAZY_METHODS.values()}):  # the handlers' own modules
            importlib.import_module(f"frakpy_guest.services.{module}")

        if system is not None:
            for name in ("hosts", "resolv.conf"):
                try:
                    with open(f"/etc/{name}") as f:
                        content = f.read()
                except FileNotFoundError:
                    continue
                system.write_etc_file(name, content)
    except Exception as exc:  # a warm-up failure must never stop the agent
        log.warning("template warm-up incomplete: %s", exc)
    gc.collect()  # the template is saved with no garbage for its clones to collect (and copy)
    log.info("template warm-up done in %.3f s", time.monotonic() - t0)


def find_agent_port() -> str | None:
    from frakpy_guest.vport import find_port

    return find_port(PORT_NAME)
