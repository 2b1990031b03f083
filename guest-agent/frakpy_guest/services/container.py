"""Container lifecycle RPCs: Create/Start/Signal/Delete/State/UpdateResources, and Events.

Create builds the bundle in ``guestpaths.container_dir(cid)`` (a per-container tmpfs):
``rootfs`` = overlay(lower = the image mount, upper/work on that tmpfs), ``config.json`` (the
host's spec completed by ``frakpy_guest.bundle``), ``termination-log``; then ``crun create``
with pipes (or a pty through ``--console-socket``) for the container's stdio. CRI devices
(raw block volumes) were hot-added by the host as scsi-hd disks; Create waits for each serial
listed in ``io.frakpy.block-devices`` and ``bundle.prepare`` puts the guest node in the spec.
"""

from __future__ import annotations

import json
import logging
import os
import time

from frakpy.agent.protocol import agent_pb2 as pb
from frakpy.agent.protocol import guestpaths as gp
from frakpy.agent.protocol.ttrpc import Code, ServerCall
from frakpy_guest import blockdev, bundle
from frakpy_guest.crun import CrunError
from frakpy_guest.runtime import (
    CREATED,
    EXITED,
    RUNNING,
    Container,
    Runtime,
    Stdio,
    check_id,
    crun_error,
    err,
    run_with_stdio,
    signal_number,
    write_json,
)

log = logging.getLogger("frakpy_guest.container")

DISK_WAIT = 10.0  # seconds for a hot-added CRI device disk to show up in the guest

STATUS = {CREATED: pb.CONTAINER_STATUS_CREATED, RUNNING: pb.CONTAINER_STATUS_RUNNING,
          EXITED: pb.CONTAINER_STATUS_EXITED}


def _wants_sandbox_ns(spec: dict) -> bool:  # type: ignore[type-arg]
    return any((ns.get("path") or "") == gp.SANDBOX_PLACEHOLDER
               for ns in (spec.get("linux") or {}).get("namespaces") or [])


async def create_container(rt: Runtime, req: pb.CreateContainerRequest, call: ServerCall) -> pb.CreateContainerResponse:
    cid = req.container_id
    check_id("container id", cid)
    if cid in rt.containers:
        raise err(Code.ALREADY_EXISTS, f"container {cid} already exists in this pod VM")
    try:
        spec = json.loads(req.spec_json)
    except ValueError as exc:
        raise err(Code.INVALID_ARGUMENT, f"container {cid}: spec_json is not JSON: {exc}") from exc
    image = rt.images.get(req.image_mount_id)
    if image is None:
        raise err(Code.FAILED_PRECONDITION,
                  f"container {cid}: image mount {req.image_mount_id!r} is not mounted (call MountImage first)")
    c = Container(cid, rt.p(gp.container_dir(cid)), req.log_buffer_bytes)
    rt.containers[cid] = c
    async with c.lock:
        try:
            await _create(rt, c, spec, req, image)
        except BaseException:
            rt.containers.pop(cid, None)
            await _teardown(rt, c)
            raise
    log.info("container %s created (pid %d)", cid, c.init.pid)
    return pb.CreateContainerResponse(pid=c.init.pid)


async def _create(rt: Runtime, c: Container, spec: dict, req: pb.CreateContainerRequest, image: dict) -> None:  # type: ignore[type-arg]
    system = rt.system
    os.makedirs(c.bundle, exist_ok=True)
    system.mount("tmpfs", c.bundle, "tmpfs", 0x2 | 0x4, "mode=0755")  # nosuid, nodev
    c.mounts.append(c.bundle)
    for d in ("upper", "work", "rootfs"):
        os.makedirs(os.path.join(c.bundle, d), exist_ok=True)
    rootfs = os.path.join(c.bundle, "rootfs")
    system.mount("overlay", rootfs, "overlay", 0,
                 f"lowerdir={image['path']},upperdir={c.upper},workdir={os.path.join(c.bundle, 'work')}")
    c.mounts.append(rootfs)
    c.image_id = req.image_mount_id
    image["users"].add(c.id)

    termination = os.path.join(c.bundle, gp.TERMINATION_LOG)
    with open(termination, "w"):  # noqa: ASYNC230 - tmpfs
        pass
    os.chmod(termination, 0o666)  # any container user may write its termination message
    rt.ensure_sandbox_files()

    if _wants_sandbox_ns(spec):
        try:
            await rt.ensure_holder()
        except OSError as exc:
            raise err(Code.INTERNAL, f"container {c.id}: starting the pod namespace holder: {exc}") from exc

    def container_pid(target: str) -> int | None:
        other = rt.containers.get(target)
        if other is None or other.deleted or other.status not in (CREATED, RUNNING):
            return None
        return other.init.pid or None

    disks: dict[str, str] = {}
    try:
        for want in bundle.block_device_requests(spec):  # CRI raw block volumes: hot-added disks
            disks[want["serial"]] = await blockdev.wait_for_serial(want["serial"], DISK_WAIT,
                                                                   rt.p("/sys"), rt.p("/dev"))
    except bundle.SpecError as exc:
        raise err(Code.INVALID_ARGUMENT, f"container {c.id}: {exc}") from exc
    except TimeoutError as exc:
        raise err(Code.DEADLINE_EXCEEDED, f"container {c.id}: {exc} (device not hot-added?)") from exc
    try:
        sysctls = bundle.prepare(spec, rootfs=gp.container_rootfs(c.id), rootfs_view=rootfs,
                                 sandbox_pid=lambda: rt.holder_pid, container_pid=container_pid,
                                 dev_root=rt.p("/dev"), block_devices=disks)
    except bundle.PreconditionError as exc:
        raise err(Code.FAILED_PRECONDITION, f"container {c.id}: {exc}") from exc
    except bundle.SpecError as exc:
        raise err(Code.INVALID_ARGUMENT, f"container {c.id}: {exc}") from exc
    for name, value in sysctls.items():
        try:
            system.write_sysctl(name, value)
        except OSError as exc:
            raise err(Code.INVALID_ARGUMENT, f"container {c.id}: sysctl {name}={value}: {exc}") from exc
    tty = bool(req.tty or spec["process"].get("terminal"))
    spec["process"]["terminal"] = tty
    c.spec = spec
    cgroups_path = (spec.get("linux") or {}).get("cgroupsPath") or f"/{c.id}"
    c.cgroup_dir = rt.p("/sys/fs/cgroup") + "/" + cgroups_path.lstrip("/")
    write_json(os.path.join(c.bundle, "config.json"), spec)

    stdio = Stdio(stdin=req.stdin, tty=tty, runtime=rt)
    pid_file = os.path.join(c.bundle, "init.pid")
    try:
        pid, tty_fd = await run_with_stdio(stdio, lambda: rt.crun.create(
            c.id, c.bundle, pid_file=pid_file, console_socket=stdio.socket_path,
            stdin=stdio.child["stdin"], stdout=stdio.child["stdout"], stderr=stdio.child["stderr"]))
    except CrunError as exc:
        stdio.close_all()
        raise crun_error(exc, f"creating container {c.id}") from exc
    except BaseException:
        stdio.close_all()
        raise
    c.init.pid = pid
    c.created_at_ns = time.time_ns()
    c.status = CREATED
    stdio.attach(c.init, tty_fd)
    c.oom_base = rt.read_oom_kills(c)
    rt.reaper.watch(pid, lambda code: rt.on_init_exit(c, code))


async def _teardown(rt: Runtime, c: Container) -> None:
    c.deleted = True
    for proc in [c.init, *c.execs.values()]:
        proc.close()
    for target in reversed(c.mounts):
        try:
            rt.system.umount(target)
        except OSError as exc:
            log.warning("container %s: unmounting %s: %s", c.id, target, exc)
    c.mounts.clear()
    try:
        os.rmdir(os.path.join(c.bundle, "rootfs"))
    except OSError:
        pass
    if os.path.isdir(c.bundle):  # noqa: ASYNC240 - tmpfs
        import shutil

        shutil.rmtree(c.bundle, ignore_errors=True)
    image = rt.images.get(c.image_id)
    if image is not None:
        image["users"].discard(c.id)
    rt.events.drop_container(c.id)


async def start_container(rt: Runtime, req: pb.StartContainerRequest, call: ServerCall) -> pb.StartContainerResponse:
    c = rt.get(req.container_id)
    async with c.lock:
        if c.status == RUNNING:
            return pb.StartContainerResponse(started_at_ns=c.started_at_ns)
        if c.status != CREATED:
            raise err(Code.FAILED_PRECONDITION, f"container {c.id} is {c.status}, it cannot be started")
        started = time.time_ns()  # before: a quick init may exit before crun start returns
        try:
            await rt.crun.start(c.id)
        except CrunError as exc:
            raise crun_error(exc, f"starting container {c.id}") from exc
        c.started_at_ns = started
        if c.status == CREATED:
            c.status = RUNNING
    return pb.StartContainerResponse(started_at_ns=c.started_at_ns)


async def signal_container(rt: Runtime, req: pb.SignalContainerRequest, call: ServerCall) -> pb.SignalContainerResponse:
    c = rt.get(req.container_id)
    sig = signal_number(req.signal)
    if req.exec_id:
        proc = c.proc(req.exec_id)
        if not proc.exited.is_set() and proc.pid:
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass
        return pb.SignalContainerResponse()
    if c.status == EXITED and not req.all:
        return pb.SignalContainerResponse()
    try:
        await rt.crun.kill(c.id, sig, all=req.all)
    except CrunError as exc:
        if c.status == EXITED or c.init.exited.is_set():
            return pb.SignalContainerResponse()
        raise crun_error(exc, f"signalling container {c.id}") from exc
    return pb.SignalContainerResponse()


async def delete_container(rt: Runtime, req: pb.DeleteContainerRequest, call: ServerCall) -> pb.DeleteContainerResponse:
    check_id("container id", req.container_id)
    c = rt.containers.get(req.container_id)
    if c is None:
        return pb.DeleteContainerResponse()
    async with c.lock:
        if rt.containers.get(c.id) is not c:
            return pb.DeleteContainerResponse()
        try:
            await rt.crun.delete(c.id)
        except CrunError as exc:
            if not exc.not_found:
                raise crun_error(exc, f"deleting container {c.id}") from exc
        rt.containers.pop(c.id, None)
        await _teardown(rt, c)
    log.info("container %s deleted", c.id)
    return pb.DeleteContainerResponse()


async def container_state(rt: Runtime, req: pb.ContainerStateRequest, call: ServerCall) -> pb.ContainerStateResponse:
    c = rt.get(req.container_id)
    init = c.init
    return pb.ContainerStateResponse(
        container_id=c.id, status=STATUS.get(c.status, pb.CONTAINER_STATUS_UNKNOWN), pid=init.pid,
        exit_code=init.exit_code or 0, created_at_ns=c.created_at_ns, started_at_ns=c.started_at_ns,
        finished_at_ns=init.exited_at_ns, oom_killed=init.oom_killed, output_offset=init.buffer.end,
        termination_message=_termination_message(c) if c.status == EXITED else b"")


TERMINATION_MESSAGE_MAX = 4096  # what kubelet reads of a termination-log


def _termination_message(c: Container) -> bytes:
    try:
        with open(os.path.join(c.bundle, gp.TERMINATION_LOG), "rb") as f:  # noqa: ASYNC230 - tmpfs
            return f.read(TERMINATION_MESSAGE_MAX)
    except OSError:
        return b""


async def update_resources(rt: Runtime, req: pb.UpdateContainerResourcesRequest,
                           call: ServerCall) -> pb.UpdateContainerResourcesResponse:
    c = rt.get(req.container_id)
    try:
        resources = json.loads(req.resources_json)
    except ValueError as exc:
        raise err(Code.INVALID_ARGUMENT, f"resources_json is not JSON: {exc}") from exc
    if c.status == EXITED:
        raise err(Code.FAILED_PRECONDITION, f"container {c.id} has exited")
    path = os.path.join(c.bundle, f"resources-{rt.next_n()}.json")
    write_json(path, resources)
    try:
        await rt.crun.update(c.id, path)
    except CrunError as exc:
        raise crun_error(exc, f"updating container {c.id}") from exc
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    c.spec.setdefault("linux", {})["resources"] = resources
    return pb.UpdateContainerResourcesResponse()


async def events(rt: Runtime, req: pb.EventsRequest, call: ServerCall):  # type: ignore[no-untyped-def]
    async for e in rt.events.stream(req.after_seq):
        yield pb.Event(kind=pb.EVENT_KIND_EXIT, **e)


async def ack_events(rt: Runtime, req: pb.AckEventsRequest, call: ServerCall) -> pb.AckEventsResponse:
    rt.events.ack(req.up_to_seq)
    return pb.AckEventsResponse()
