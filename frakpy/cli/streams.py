"""``frakpy exec -i/-t``, ``frakpy attach`` and ``frakpy port-forward``: CRI Exec/Attach/PortForward
return a URL of the daemon's streaming server, driven here with ``frakpy.streaming.client``.

With ``-t`` and a terminal on stdin, the terminal is put in raw mode for the session (restored
after) and its size is sent at start and on every SIGWINCH, as crictl/kubectl do.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from frakpy.cli.errors import CLIError

if TYPE_CHECKING:  # gRPC loads only when a verb runs (``frakpy --help`` stays fast)
    from frakpy.cri.client import CRIClient


def add_parser(sub: Any) -> None:
    """The attach and port-forward verbs (exec's -i/-t are added to the exec verb by main)."""
    p = sub.add_parser("attach", help="attach to a running container's main process",
                       description="attach to a running container's main process (CRI Attach)")
    p.add_argument("-i", "--stdin", dest="interactive", action="store_true", help="send stdin to the container")
    p.add_argument("-t", "--tty", action="store_true", help="the container runs with a TTY")
    p.add_argument("id", metavar="ID")
    p.set_defaults(handler="cmd_attach")
    p = sub.add_parser("port-forward", help="forward local ports to a pod",
                       description="forward local ports to ports on the pod's loopback (CRI PortForward)")
    p.add_argument("--address", default="127.0.0.1", help="local address to listen on (default 127.0.0.1)")
    p.add_argument("pod_id", metavar="POD_ID")
    p.add_argument("ports", nargs="+", metavar="[LOCAL:]REMOTE")
    p.set_defaults(handler="cmd_port_forward")


def add_exec_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--interactive", action="store_true", help="stream stdin to the command (CRI Exec)")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a TTY (CRI Exec)")


# -- exec / attach --------------------------------------------------------------------------------

def cmd_exec_stream(args: Any, cri: CRIClient, container_id: str) -> int:
    from frakpy.cri.proto import api_pb2 as pb

    tty = bool(args.tty)
    url = cri.call(cri.runtime.Exec, pb.ExecRequest(container_id=container_id, cmd=args.command, tty=tty,
                                                    stdin=bool(args.interactive), stdout=True, stderr=not tty)).url
    return asyncio.run(interact(url, stdin=bool(args.interactive), tty=tty))


def cmd_attach(args: Any, cri: CRIClient) -> int:
    from frakpy.cli.commands import resolve_container
    from frakpy.cri.proto import api_pb2 as pb

    cid = resolve_container(cri, args.id)
    tty = bool(args.tty)
    url = cri.call(cri.runtime.Attach, pb.AttachRequest(container_id=cid, tty=tty, stdin=bool(args.interactive),
                                                        stdout=True, stderr=not tty)).url
    return asyncio.run(interact(url, stdin=bool(args.interactive), tty=tty))


@contextlib.contextmanager
def _raw_terminal(fd: int):  # type: ignore[no-untyped-def]
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def interact(url: str, *, stdin: bool, tty: bool) -> int:
    from frakpy.streaming.client import RemoteCommand

    in_fd, out = sys.stdin.fileno(), sys.stdout.buffer
    term = tty and stdin and os.isatty(in_fd)
    loop = asyncio.get_running_loop()
    async with RemoteCommand.connect(url, stdin=stdin, tty=tty) as rc:
        tasks: list[asyncio.Task[None]] = []
        with _raw_terminal(in_fd) if term else contextlib.nullcontext():
            if tty and os.isatty(out.fileno()):
                size = os.get_terminal_size(out.fileno())
                await rc.resize(size.columns, size.lines)

                def on_winch() -> None:
                    s = os.get_terminal_size(out.fileno())
                    tasks.append(asyncio.ensure_future(rc.resize(s.columns, s.lines)))

                loop.add_signal_handler(signal.SIGWINCH, on_winch)
            if stdin:
                tasks.append(asyncio.ensure_future(_pump_stdin(rc, in_fd)))
            try:
                while (item := await rc.read()) is not None:
                    stream = out if item[0] == 1 else sys.stderr.buffer
                    stream.write(item[1])
                    stream.flush()
                result = await rc.wait()
            finally:
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(signal.SIGWINCH)
                for t in tasks:
                    t.cancel()
    if result.exit_code < 0:
        message = (result.status or {}).get("message", "the command did not run")
        print(f"frakpy: {message}", file=sys.stderr)
        return 1
    return result.exit_code


async def _pump_stdin(rc: Any, fd: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", 0,
                                                                                                       closefd=False))
    try:
        while data := await reader.read(65536):
            await rc.send(data)
        await rc.close_stdin()
    finally:
        transport.close()


# -- port-forward ---------------------------------------------------------------------------------

def parse_ports(specs: list[str]) -> list[tuple[int, int]]:
    out = []
    for spec in specs:
        local, _, remote = spec.rpartition(":")
        try:
            r = int(remote)
            lp = int(local) if local else r
        except ValueError:
            raise CLIError(f"bad port {spec!r}: want [LOCAL:]REMOTE", exit_code=2) from None
        if not (0 < r < 65536 and 0 <= lp < 65536):
            raise CLIError(f"port {spec!r} is out of range", exit_code=2)
        out.append((lp, r))
    return out


def cmd_port_forward(args: Any, cri: CRIClient) -> int:
    from frakpy.cli.commands import resolve_pod
    from frakpy.cri.proto import api_pb2 as pb

    pairs = parse_ports(args.ports)
    pod = resolve_pod(cri, args.pod_id)
    url = cri.call(cri.runtime.PortForward, pb.PortForwardRequest(pod_sandbox_id=pod, port=[r for _, r in pairs])).url
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_forward(url, args.address, pairs))
    return 0


async def _forward(url: str, address: str, pairs: list[tuple[int, int]]) -> None:
    """One SPDY session (the URL's token is single-use) carrying every forwarded connection."""
    from frakpy.streaming.client import PortForward, PortForwardError

    async with PortForward.connect(url) as pf:
        servers = []

        def handler(remote: int):  # type: ignore[no-untyped-def]
            async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                try:
                    s = await pf.open(remote)

                    async def up() -> None:
                        while data := await reader.read(65536):
                            await s.write(data)
                        await s.close_write()

                    upt = asyncio.ensure_future(up())
                    try:
                        while data := await s.read():
                            writer.write(data)
                            await writer.drain()
                    finally:
                        upt.cancel()
                        with contextlib.suppress(Exception):
                            await s.close()
                except PortForwardError as exc:
                    print(f"frakpy: {exc}", file=sys.stderr)
                except (ConnectionError, OSError):
                    pass
                finally:
                    writer.close()
            return handle

        for local, remote in pairs:
            server = await asyncio.start_server(handler(remote), address, local)
            servers.append(server)
            print(f"Forwarding from {address}:{server.sockets[0].getsockname()[1]} -> {remote}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            for server in servers:
                server.close()
