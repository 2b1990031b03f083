"""The only module that runs crun (1.8.x, /usr/bin/crun in the guest image).

Every invocation gets ``--root`` (crun's state directory) and ``--log <file> --log-format=json``,
so crun's own messages never mix with a container's stdio (crun hands its stdin/stdout/stderr
to the container process on ``create``/``exec`` without a terminal). Errors become
``CrunError`` carrying the error lines of that log.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os

from frakpy_guest import procs

DEFAULT_BINARY = "/usr/bin/crun"
DEFAULT_STATE_ROOT = "/run/crun"
COMMAND_TIMEOUT = 60.0

_counter = itertools.count(1)


class CrunError(Exception):
    def __init__(self, command: str, code: int, message: str) -> None:
        self.command = command
        self.code = code
        self.message = message
        super().__init__(f"crun {command} failed (exit {code}): {message or 'no error message'}")

    @property
    def not_found(self) -> bool:
        m = self.message.lower()
        return "does not exist" in m or ("no such file" in m and "/status" in m)


class Crun:
    def __init__(self, reaper, *, binary: str = DEFAULT_BINARY,  # type: ignore[no-untyped-def]
                 state_root: str = DEFAULT_STATE_ROOT, scratch: str = "/run/frakpy/crun") -> None:
        self.reaper = reaper
        self.binary = binary
        self.state_root = state_root
        self.scratch = scratch
        os.makedirs(scratch, exist_ok=True)

    async def _run(self, command: str, args: list[str], *, stdin: int | None = None,
                   stdout: int | None = None, stderr: int | None = None, capture: bool = False,
                   timeout: float = COMMAND_TIMEOUT) -> str:  # noqa: ASYNC109
        n = next(_counter)
        log_path = os.path.join(self.scratch, f"{n}.log")
        out_path = os.path.join(self.scratch, f"{n}.out")
        argv = [self.binary, f"--root={self.state_root}", f"--log={log_path}", "--log-format=json",
                command, *args]
        out_fd = None
        if capture:
            out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        # without a log file, early errors land on stderr: keep them when stderr is ours
        err_fd = stderr
        if err_fd is None:
            err_fd = os.open(log_path + ".err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            pid = procs.spawn(argv, stdin=stdin, stdout=out_fd if capture else stdout, stderr=err_fd)
        finally:
            procs.close_quietly(out_fd)
            if stderr is None:
                procs.close_quietly(err_fd)
        fut = procs.wait(self.reaper, pid)
        try:
            code = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
            raise CrunError(command, -1, f"timed out after {timeout:g}s") from None
        try:
            output = _read(out_path) if capture else ""
            if code != 0:
                raise CrunError(command, procs.exit_code(code), _errors(log_path) or _read(log_path + ".err").strip())
            return output
        finally:
            for p in (log_path, out_path, log_path + ".err"):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass

    async def create(self, cid: str, bundle: str, *, pid_file: str, console_socket: str | None = None,
                     stdin: int | None = None, stdout: int | None = None, stderr: int | None = None) -> int:
        args = [f"--bundle={bundle}", f"--pid-file={pid_file}", "--no-subreaper"]
        if console_socket:
            args.append(f"--console-socket={console_socket}")
        await self._run("create", [*args, cid], stdin=stdin, stdout=stdout, stderr=stderr)
        return read_pid(pid_file)

    async def start(self, cid: str) -> None:
        await self._run("start", [cid])

    async def kill(self, cid: str, signal: int, *, all: bool = False) -> None:  # noqa: A002
        await self._run("kill", (["--all"] if all else []) + [cid, str(signal)])

    async def delete(self, cid: str) -> None:
        await self._run("delete", ["--force", cid])

    async def state(self, cid: str) -> dict:  # type: ignore[type-arg]
        return json.loads(await self._run("state", [cid], capture=True))

    async def update(self, cid: str, resources_file: str) -> None:
        await self._run("update", [f"--resources={resources_file}", cid])

    async def exec(self, cid: str, process_file: str, *, pid_file: str, console_socket: str | None = None,
                   stdin: int | None = None, stdout: int | None = None, stderr: int | None = None) -> int:
        """``crun exec --detach``: returns the pid once the process runs (it is then our orphan)."""
        args = [f"--process={process_file}", f"--pid-file={pid_file}", "--detach"]
        if console_socket:
            args.append(f"--console-socket={console_socket}")
        await self._run("exec", [*args, cid], stdin=stdin, stdout=stdout, stderr=stderr)
        return read_pid(pid_file)


def read_pid(path: str) -> int:
    with open(path) as f:
        return int(f.read().strip() or "0")


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _errors(log_path: str) -> str:
    lines = []
    for line in _read(log_path).splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            if line.strip():
                lines.append(line.strip())
            continue
        if entry.get("level") in ("error", "fatal", "warning", None):
            lines.append(str(entry.get("msg", "")))
    return "; ".join(lines[-5:])
