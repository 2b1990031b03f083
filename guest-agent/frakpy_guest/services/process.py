"""Process RPCs: ExecSync, ExecStart/WriteStdin/ResizeTty/WaitProcess/DeleteProcess, and the
output stream (ReadOutput/AckOutput) shared by container inits and exec processes.

Execs run through ``crun exec --detach --pid-file``: crun exits as soon as the process runs, the
process is then re-parented to the agent and its exact exit status comes from the reaper.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import struct
import termios

from frakpy.agent.protocol import agent_pb2 as pb
from frakpy.agent.protocol.ttrpc import Code, ServerCall
from frakpy_guest import bundle, iobuf, procs
from frakpy_guest.crun import CrunError
from frakpy_guest.runtime import (
    RUNNING,
    Container,
    Proc,
    Runtime,
    Stdio,
    check_id,
    crun_error,
    err,
    run_with_stdio,
    write_json,
)

DEFAULT_OUTPUT_LIMIT = 16 << 20
EXEC_COALESCE = 256 << 10  # bytes per output message of an exec process at most
EXEC_OUTPUT_GRACE = 1.0  # after the exit, wait this long for the pipes to reach EOF


def _running(c: Container) -> None:
    if c.status != RUNNING:
        raise err(Code.FAILED_PRECONDITION, f"container {c.id} is {c.status}, not running")


async def _crun_exec(rt: Runtime, c: Container, process: dict, stdio: Stdio) -> tuple[int, int | None]:  # type: ignore[type-arg]
    n = rt.next_n()
    process_file = os.path.join(c.bundle, f"exec-{n}.json")
    pid_file = os.path.join(c.bundle, f"exec-{n}.pid")
    write_json(process_file, process)
    try:
        return await run_with_stdio(stdio, lambda: rt.crun.exec(
            c.id, process_file, pid_file=pid_file, console_socket=stdio.socket_path,
            stdin=stdio.child["stdin"], stdout=stdio.child["stdout"], stderr=stdio.child["stderr"]))
    except CrunError as exc:
        stdio.close_all()
        raise crun_error(exc, f"exec in container {c.id}") from exc
    except BaseException:
        stdio.close_all()
        raise
    finally:
        for path in (process_file, pid_file):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


class _Collector:
    """Reads two pipes to EOF, keeping at most ``limit`` bytes in total (the rest is drained)."""

    def __init__(self, fds: dict[str, int], limit: int) -> None:
        self.limit = limit
        self.data = {name: bytearray() for name in fds}
        self.truncated = False
        self.kept = 0
        self.open = dict(fds)
        self.done = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()
        for name, fd in fds.items():
            os.set_blocking(fd, False)
            loop.add_reader(fd, self._ready, name)
        if not fds:
            self.done.set_result(None)

    def _ready(self, name: str) -> None:
        fd = self.open[name]
        try:
            chunk = os.read(fd, iobuf.READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._close(name)
            return
        room = self.limit - self.kept
        if len(chunk) > room:
            self.truncated = True
            chunk = chunk[:max(room, 0)]
        self.data[name] += chunk
        self.kept += len(chunk)

    def _close(self, name: str) -> None:
        fd = self.open.pop(name, None)
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)
        if not self.open and not self.done.done():
            self.done.set_result(None)

    def close(self) -> None:
        for name in list(self.open):
            self._close(name)


async def exec_sync(rt: Runtime, req: pb.ExecSyncRequest, call: ServerCall) -> pb.ExecSyncResponse:
    c = rt.get(req.container_id)
    _running(c)
    if not req.args:
        raise err(Code.INVALID_ARGUMENT, "exec needs at least one argument")
    process = bundle.exec_process(c.spec["process"], {"args": list(req.args)})
    stdio = Stdio(stdin=False, tty=False, runtime=rt)
    ours = dict(stdio.ours)
    pid, _ = await _crun_exec(rt, c, process, stdio)  # closes every fd itself on failure
    stdio.ours = {}
    exited = procs.wait(rt.reaper, pid)
    collector = _Collector(ours, req.output_limit_bytes or DEFAULT_OUTPUT_LIMIT)
    timed_out = False
    try:
        try:
            code = await asyncio.wait_for(asyncio.shield(exited), req.timeout_s or None)
        except TimeoutError:
            timed_out = True
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
            code = await exited
        try:
            await asyncio.wait_for(asyncio.shield(collector.done), EXEC_OUTPUT_GRACE)
        except TimeoutError:
            pass
    finally:
        collector.close()
    return pb.ExecSyncResponse(stdout=bytes(collector.data["stdout"]), stderr=bytes(collector.data["stderr"]),
                               exit_code=procs.exit_code(code), timed_out=timed_out,
                               truncated=collector.truncated)


async def exec_start(rt: Runtime, req: pb.ExecStartRequest, call: ServerCall) -> pb.ExecStartResponse:
    c = rt.get(req.container_id)
    check_id("exec id", req.exec_id)
    _running(c)
    if req.exec_id in c.execs:
        raise err(Code.ALREADY_EXISTS, f"container {c.id} already has an exec process {req.exec_id!r}")
    try:
        override = json.loads(req.process_json) if req.process_json else {}
    except ValueError as exc:
        raise err(Code.INVALID_ARGUMENT, f"process_json is not JSON: {exc}") from exc
    if not isinstance(override, dict) or not override.get("args"):
        raise err(Code.INVALID_ARGUMENT, "process_json must be an OCI process object with args")
    override["terminal"] = req.tty
    process = bundle.exec_process(c.spec["process"], override)
    proc = Proc(c.id, req.exec_id, req.log_buffer_bytes)
    c.execs[req.exec_id] = proc  # reserve the id while crun runs
    stdio = Stdio(stdin=req.stdin, tty=req.tty, runtime=rt)
    try:
        pid, tty_fd = await _crun_exec(rt, c, process, stdio)
    except BaseException:
        c.execs.pop(req.exec_id, None)
        raise
    proc.pid = pid
    stdio.attach(proc, tty_fd)
    rt.reaper.watch(pid, lambda code: rt.on_exec_exit(c, proc, code))
    return pb.ExecStartResponse(pid=pid)


async def write_stdin(rt: Runtime, req: pb.WriteStdinRequest, call: ServerCall) -> pb.WriteStdinResponse:
    proc = rt.get(req.container_id).proc(req.exec_id)
    written = await proc.write_stdin(bytes(req.data)) if req.data else 0
    if req.close:
        proc.close_stdin()
    return pb.WriteStdinResponse(written=written)


async def resize_tty(rt: Runtime, req: pb.ResizeTtyRequest, call: ServerCall) -> pb.ResizeTtyResponse:
    proc = rt.get(req.container_id).proc(req.exec_id)
    if proc.tty_fd is None:
        raise err(Code.FAILED_PRECONDITION, f"{proc.describe()} has no terminal")
    try:
        fcntl.ioctl(proc.tty_fd, termios.TIOCSWINSZ, struct.pack("HHHH", req.height, req.width, 0, 0))
    except OSError as exc:
        raise err(Code.INTERNAL, f"{proc.describe()}: resizing the terminal: {exc}") from exc
    return pb.ResizeTtyResponse()


async def wait_process(rt: Runtime, req: pb.WaitProcessRequest, call: ServerCall) -> pb.WaitProcessResponse:
    c = rt.get(req.container_id)
    proc = c.proc(req.exec_id)
    await proc.exited.wait()
    return pb.WaitProcessResponse(exit_code=proc.exit_code or 0, exited_at_ns=proc.exited_at_ns,
                                  oom_killed=proc.oom_killed)


async def delete_process(rt: Runtime, req: pb.DeleteProcessRequest, call: ServerCall) -> pb.DeleteProcessResponse:
    c = rt.containers.get(req.container_id)
    if c is None or not req.exec_id:
        if not req.exec_id:
            raise err(Code.INVALID_ARGUMENT, "DeleteProcess is for exec processes; use DeleteContainer")
        return pb.DeleteProcessResponse()
    proc = c.execs.pop(req.exec_id, None)
    if proc is not None:
        if not proc.exited.is_set() and proc.pid:
            try:
                os.kill(proc.pid, 9)
            except ProcessLookupError:
                pass
        proc.close()
        rt.events.events = [e for e in rt.events.events
                            if not (e["container_id"] == c.id and e["exec_id"] == req.exec_id)]
    return pb.DeleteProcessResponse()


async def read_output(rt: Runtime, req: pb.ReadOutputRequest, call: ServerCall):  # type: ignore[no-untyped-def]
    proc = rt.get(req.container_id).proc(req.exec_id)
    # exec output (interactive or bulk) is merged into fewer, larger messages; a container's own
    # output keeps one chunk per read, so its log lines keep their own timestamps
    coalesce = EXEC_COALESCE if req.exec_id else 0
    async for chunk in proc.buffer.read(req.from_offset, auto_ack=req.auto_ack, coalesce=coalesce):
        yield pb.OutputChunk(offset=chunk.offset, stream=chunk.stream, time_ns=chunk.time_ns, data=chunk.data)


async def ack_output(rt: Runtime, req: pb.AckOutputRequest, call: ServerCall) -> pb.AckOutputResponse:
    rt.get(req.container_id).proc(req.exec_id).buffer.ack(req.up_to_offset)
    return pb.AckOutputResponse()

