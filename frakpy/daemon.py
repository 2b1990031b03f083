"""frakpyd: the composition root.

Build the stores and managers, recover() what an earlier daemon left running, serve CRI on
the unix socket, and on SIGTERM/SIGINT stop serving cleanly — leaving every pod VM running
for the next daemon to re-adopt.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import grp
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from frakpy import __version__
from frakpy import config as config_mod
from frakpy.errors import FailedPrecondition, FrakpyError
from frakpy.logs import setup_logging

log = logging.getLogger("frakpy.daemon")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="frakpyd", description="frakpy CRI runtime daemon (one VM per pod)")
    p.add_argument("--config", "-c", help=f"config file (default {config_mod.DEFAULT_PATH})")
    p.add_argument("--socket", help="override daemon.socket")
    p.add_argument("--state-dir", help="override daemon.state_dir")
    p.add_argument("--run-dir", help="override daemon.run_dir")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="override daemon.log_level")
    p.add_argument("--version", action="version", version=f"frakpyd {__version__}")
    return p.parse_args(argv)


def load_config(args: argparse.Namespace) -> config_mod.Config:
    cfg = config_mod.load(args.config)
    if args.socket:
        cfg.daemon.socket = args.socket
    if args.state_dir:
        cfg.daemon.state_dir = args.state_dir
    if args.run_dir:
        cfg.daemon.run_dir = args.run_dir
    if args.log_level:
        cfg.daemon.log_level = args.log_level
    return cfg


class SocketGuard:
    """Owns the CRI socket path: one live daemon per socket, stale sockets replaced safely.

    An flock on ``<socket>.lock`` decides ownership (released by the kernel when a daemon
    dies, however it dies); a socket file left by a dead daemon is then simply replaced.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self._lock_fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.lock_path.read_text().strip() or "another process"
            raise FailedPrecondition(
                f"another frakpyd (pid {holder}) is serving {self.path}; stop it first or use --socket"
            ) from None
        if self.path.exists() and _answers(self.path):
            os.close(fd)
            raise FailedPrecondition(f"something is already listening on {self.path}; refusing to replace it")
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # stale: its daemon is gone (we hold the lock)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if self._lock_fd is not None:
            with contextlib.suppress(FileNotFoundError):
                self.lock_path.unlink()
            os.close(self._lock_fd)
            self._lock_fd = None


def _answers(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(path))
    except OSError:
        return False
    finally:
        s.close()
    return True


async def serve(cfg: config_mod.Config) -> None:
    from frakpy.runtime import Runtime

    guard = SocketGuard(Path(cfg.daemon.socket))
    guard.acquire()
    runtime = Runtime(cfg)
    try:
        await runtime.start()
        server = runtime.grpc_server()
        server.add_insecure_port(f"unix://{cfg.daemon.socket}")
        await server.start()
        os.chmod(cfg.daemon.socket, int(cfg.daemon.socket_mode, 8))
        if cfg.daemon.socket_group:
            os.chown(cfg.daemon.socket, -1, grp.getgrnam(cfg.daemon.socket_group).gr_gid)
        log.info("frakpyd %s serving CRI on %s", __version__, cfg.daemon.socket)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down (pods keep running)")
        await server.stop(cfg.daemon.shutdown_grace_s)
    finally:
        await runtime.close()
        guard.release()
    log.info("frakpyd stopped")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args)
    except FrakpyError as exc:
        print(f"frakpyd: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.daemon.log_level, cfg.daemon.log_format)
    try:
        asyncio.run(serve(cfg))
    except FrakpyError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
