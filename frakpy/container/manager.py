"""Create, start, stop, remove and list containers inside pod VMs.

The guest agent runs the containers; this side keeps the records, attaches each image to
a sandbox's VM once (a read-only SCSI disk, refcounted per sandbox), pumps output into the
CRI log file and learns about exits from one ``Events`` stream per sandbox.

CRI mounts (volumes): each ``host_path`` must exist (INVALID_ARGUMENT before any VM work); it
is bind-mounted into the sandbox's virtio-9p share as ``<container id>-<n>``, in the volume
mount namespace of frakpy.sandbox.share (read-only on the host when every mount of it is
readonly; a slave of the node's mount for HostToContainer) and
the spec binds ``SHARES_DIR/<entry>`` at ``container_path`` (rprivate; Bidirectional refused,
see frakpy.container.spec). The guest mounts the share at the pod's first container with
mounts. A container's binds go with it (RemoveContainer, a failed create, recover() for
containers without a record). A termination-message path that is a CRI mount is read on the
host, where the container's writes landed through 9p.

CRI devices (raw block volumes, ``volumeMode: Block``): each ``host_path`` must be a block
device (or a disk image file); checked by frakpy.container.spec.plan_block_devices before any VM
work (character devices are refused). Each node device is hot-added once per sandbox as a
``scsi-hd`` (QEMU driver ``host_device``/``file``, read-only without ``w``, id = serial =
``blk-<hash of the host path>``) before the agent's CreateContainer and shared by every container
of the pod that names it (refcounted; a read-only attachment cannot serve a later writer:
FAILED_PRECONDITION); the agent finds the disk by serial and puts the guest's node in the spec
(annotation ``io.frakpy.block-devices``). A container's uses are recorded
(``Container.block_disks``, ``<serial>`` or ``<serial>:ro``) and released at RemoveContainer
(also after a daemon restart) and on a failed create; the last release hot-removes the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import posixpath
import secrets
import signal as signals
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frakpy.agent.client import AgentClient, ContainerStats, ExecResult, SandboxStats
from frakpy.agent.protocol import guestpaths as gp
from frakpy.config import Config
from frakpy.container.logs import CriLogWriter
from frakpy.container.model import Container, ContainerMetadata, ContainerState
from frakpy.container.spec import (
    DEFAULT_TERMINATION_PATH,
    TERMINATION_PATH_ANNOTATION,
    BlockDevice,
    ImageConfig,
    build_spec,
    oci_resources,
    plan_block_devices,
)
from frakpy.errors import DeadlineExceeded, FailedPrecondition, FrakpyError, InvalidArgument, NotFound
from frakpy.events import ContainerEvent, ContainerEventType, EventBus
from frakpy.image.store import ImageStore
from frakpy.sandbox import share as sandbox_share
from frakpy.sandbox.manager import SandboxManager
from frakpy.sandbox.model import Sandbox, SandboxState
from frakpy.sandbox.vmboot import RunningVM
from frakpy.store.index import IdIndex, NameIndex
from frakpy.store.records import ContainerRecords

log = logging.getLogger("frakpy.container")

KILL_WAIT_S = 10.0  # how long to wait for the exit event after SIGKILL
TERMINATION_MESSAGE_MAX = 4096  # kubelet's cap on a termination message
FALLBACK_LOG_LINES = 80  # FallbackToLogsOnError: the last lines of the log (kubelet's numbers)
POLICY_ANNOTATION = "io.kubernetes.container.terminationMessagePolicy"


def image_hex(image_id: str) -> str:
    return image_id.split(":", 1)[-1]


@dataclass
class _SandboxState:
    images: dict[str, int] = field(default_factory=dict)  # image mount id -> containers using it
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    events: asyncio.Task[None] | None = None
    share_mounted: bool = False  # the guest mounted the volume share (MountShare)
    disks: dict[str, list[Any]] = field(default_factory=dict)  # CRI device serial -> [users, readonly]


@dataclass
class _Volume:
    """One host path of a container's CRI mounts, bound into the sandbox share as ``name``."""

    name: str
    host_path: str
    readonly: bool = True  # every mount of it is readonly
    slave: bool = False  # some mount of it asks for HostToContainer propagation


class ContainerManager:
    def __init__(self, cfg: Config, records: ContainerRecords, sandboxes: SandboxManager,
                 images: ImageStore) -> None:
        # CPU usage rate per container (usage_nano_cores), from the last two stats samples
        self.nano_cores: dict[str, int] = {}
        self._cpu_samples: dict[str, tuple[int, int]] = {}
        self.cfg = cfg
        self.records = records
        self.sandboxes = sandboxes
        self.images = images
        self.containers: IdIndex[Container] = IdIndex("container")
        self.names = NameIndex("container")
        self._sb: dict[str, _SandboxState] = {}
        self._exited: dict[str, asyncio.Event] = {}
        self._pumps: dict[str, asyncio.Task[None]] = {}
        self._writers: dict[str, CriLogWriter] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._attached: dict[str, set[Any]] = {}  # container id -> attach subscribers (streams.py)
        self.events = EventBus()
        sandboxes.before_stop.append(self._before_sandbox_stop)
        sandboxes.on_remove.append(self._on_sandbox_remove)

    # -- helpers ----------------------------------------------------------------------------------
    def _lock(self, cid: str) -> asyncio.Lock:
        return self._locks.setdefault(cid, asyncio.Lock())

    def _sbstate(self, sandbox_id: str) -> _SandboxState:
        return self._sb.setdefault(sandbox_id, _SandboxState())

    def _exit_event(self, cid: str) -> asyncio.Event:
        return self._exited.setdefault(cid, asyncio.Event())

    def _publish(self, kind: ContainerEventType, c: Container) -> None:
        self.events.publish(ContainerEvent(kind, c.id, c.sandbox_id, time.time_ns(), dataclasses.replace(c)))

    def image_in_use(self, image_id: str) -> bool:
        return any(c.image_id == image_id for c in self.containers.values())

    def get(self, container_id: str) -> Container:
        return self.containers.get(container_id)

    def _running_vm(self, sandbox_id: str) -> RunningVM | None:
        running = self.sandboxes.running.get(sandbox_id)
        if running is None or running.agent is None or _agent(running).closed:
            return None
        return running

    def _vm_of(self, c: Container) -> RunningVM:
        running = self._running_vm(c.sandbox_id)
        if running is None:
            raise FailedPrecondition(f"container {c.id}: its sandbox {c.sandbox_id[:12]} has no running VM")
        return running

    # -- CreateContainer --------------------------------------------------------------------------
    async def create(self, sandbox_id: str, config: dict[str, Any], sandbox_config: dict[str, Any]) -> Container:
        sb = self.sandboxes.sandboxes.find(sandbox_id) if sandbox_id else None
        if sb is None or sb.state is SandboxState.CREATING:
            raise NotFound(f"sandbox {sandbox_id!r} not found")
        if sb.state is not SandboxState.READY:
            raise FailedPrecondition(f"sandbox {sb.id} is not ready ({sb.state.value})")
        running = self._running_vm(sb.id)
        if running is None:
            raise FailedPrecondition(f"sandbox {sb.id} has no running VM")
        md = config.get("metadata") or {}
        name = md.get("name", "")
        if not name:
            raise InvalidArgument("container metadata needs a name")
        attempt = int(md.get("attempt", 0) or 0)
        ref = (config.get("image") or {}).get("image", "")
        if not ref:
            raise InvalidArgument("container config has no image")
        img = self.images.status(ref)
        if img is None:
            raise NotFound(f"image {ref!r} not found; pull it first")

        cid = secrets.token_hex(32)
        volumes = _plan_volumes(cid, config.get("mounts") or [])  # host paths checked: no VM work yet
        block_devices = plan_block_devices(cid, config.get("devices"))  # likewise for raw block volumes
        log_path = ""
        if sb.log_directory and config.get("log_path"):
            log_path = str(Path(sb.log_directory) / config["log_path"])
        c = Container(
            id=cid, sandbox_id=sb.id, metadata=ContainerMetadata(name, attempt), image_ref=ref, image_id=img.id,
            labels=dict(config.get("labels") or {}), annotations=dict(config.get("annotations") or {}),
            log_path=log_path, tty=bool(config.get("tty")), stdin=bool(config.get("stdin")), config=config,
        )
        self.names.reserve(c.name_key, cid)
        async with AsyncExitStack() as undo:
            undo.callback(self.names.release, c.name_key)
            image_cfg = ImageConfig(entrypoint=list(img.entrypoint), cmd=list(img.cmd), env=list(img.env),
                                    working_dir=img.working_dir, user=img.user, stop_signal=img.stop_signal,
                                    labels=dict(img.labels))
            spec = build_spec(config, sandbox_config or sb.config, image_cfg, container_id=cid, sandbox_id=sb.id,
                              resolve_mount=lambda host: f"{gp.SHARES_DIR}/{volumes[host].name}",
                              hostname=sb.hostname)
            c.stop_signal = spec.get("annotations", {}).get(gp.ANN_STOP_SIGNAL, "SIGTERM")
            if volumes:
                share = self.sandboxes.share_dir(sb.id)
                undo.callback(self.sandboxes.volumes.unbind_container, share, cid)
                for v in volumes.values():
                    try:
                        self.sandboxes.volumes.bind(share, v.name, v.host_path, readonly=v.readonly,
                                                    slave=v.slave)
                    except OSError as exc:
                        raise FrakpyError(f"host path {v.host_path} not shared with sandbox {sb.id[:12]}: "
                                          f"{exc}") from exc
                await self._ensure_share(sb.id, running)
            c.image_mount_id = await self._acquire_image(sb.id, running, img.id, img.fsimage_path)
            undo.push_async_callback(self._release_image, sb.id, c.image_mount_id)
            for dev in block_devices:
                await self._acquire_block(sb.id, running, dev)
                use = dev.serial + (":ro" if dev.readonly else "")
                undo.push_async_callback(self._release_block, sb.id, use)
                c.block_disks.append(use)
            self._ensure_events(sb.id, running)
            c.pid = await _agent(running).create_container(cid, spec, image_mount_id=c.image_mount_id,
                                                         stdin=c.stdin, tty=c.tty)
            undo.push_async_callback(_suppressed, _agent(running).delete_container, cid)
            c.created_at = time.time_ns()
            self.records.save(c)
            self.containers.add(cid, c)
            undo.pop_all()
        self._publish(ContainerEventType.CREATED, c)
        log.info("container %s (%s) created in sandbox %s", cid[:12], name, sb.id[:12])
        return c

    async def _acquire_image(self, sandbox_id: str, running: RunningVM, image_id: str, path: str) -> str:
        hexid = image_hex(image_id)
        mount_id, disk_id, serial = hexid[:12], f"img-{hexid[:12]}", hexid[:20]
        st = self._sbstate(sandbox_id)
        async with st.lock:
            if st.images.get(mount_id, 0) > 0:
                st.images[mount_id] += 1
                return mount_id
            async with AsyncExitStack() as undo:
                await running.vm.qmp.add_disk(disk_id, Path(path), serial=serial, readonly=True)
                undo.push_async_callback(_suppressed, running.vm.qmp.remove_disk, disk_id)
                await _agent(running).mount_image(mount_id, serial)
                undo.pop_all()
            st.images[mount_id] = 1
            return mount_id

    async def _ensure_share(self, sandbox_id: str, running: RunningVM) -> None:
        """Mount the sandbox's 9p share in the guest (once; MountShare is idempotent, so after a
        daemon restart asking again is harmless)."""
        st = self._sbstate(sandbox_id)
        async with st.lock:
            if st.share_mounted:
                return
            t0 = time.monotonic()
            await _agent(running).mount_share(sandbox_share.TAG, gp.SHARES_DIR, msize=sandbox_share.MSIZE)
            st.share_mounted = True
            log.info("sandbox %s: volume share mounted in the guest in %.1f ms", sandbox_id[:12],
                     (time.monotonic() - t0) * 1000)

    async def _release_image(self, sandbox_id: str, mount_id: str) -> None:
        st = self._sb.get(sandbox_id)
        if st is None or not mount_id:
            return
        async with st.lock:
            left = st.images.get(mount_id, 0) - 1
            if left > 0:
                st.images[mount_id] = left
                return
            st.images.pop(mount_id, None)
            running = self._running_vm(sandbox_id)
            if running is None:
                return
            try:
                await _agent(running).unmount_image(mount_id)
                await running.vm.qmp.remove_disk(f"img-{mount_id}")
            except (FrakpyError, OSError) as exc:
                log.warning("sandbox %s: releasing image %s failed: %s", sandbox_id[:12], mount_id, exc)

    async def _acquire_block(self, sandbox_id: str, running: RunningVM, dev: BlockDevice) -> None:
        """Attach a CRI device's node device to the VM, or count one more user of it."""
        st = self._sbstate(sandbox_id)
        async with st.lock:
            held = st.disks.get(dev.serial)
            if held is not None:
                if held[1] and not dev.readonly:
                    raise FailedPrecondition(
                        f"device {dev.container_path}: {dev.host_path} is attached read-only to this pod "
                        "by another container; it cannot also be written (give it 'rwm' everywhere)")
                held[0] += 1
                return
            try:
                await running.vm.qmp.add_disk(dev.serial, Path(dev.host_path), serial=dev.serial,
                                              readonly=dev.readonly, driver=dev.driver)
            except FrakpyError as exc:
                raise type(exc)(f"device {dev.container_path}: attaching {dev.host_path} to the pod "
                                f"VM failed: {exc}") from exc
            st.disks[dev.serial] = [1, dev.readonly]

    async def _release_block(self, sandbox_id: str, use: str) -> None:
        serial = use.split(":", 1)[0]
        st = self._sb.get(sandbox_id)
        if st is None:
            return
        async with st.lock:
            held = st.disks.get(serial)
            if held is None:
                return
            held[0] -= 1
            if held[0] > 0:
                return
            del st.disks[serial]
            running = self._running_vm(sandbox_id)
            if running is None:
                return
            try:
                await running.vm.qmp.remove_disk(serial)
            except (FrakpyError, OSError) as exc:
                log.warning("sandbox %s: detaching device disk %s failed: %s", sandbox_id[:12], serial, exc)

    async def _detach_block_disks(self, c: Container) -> None:
        """Release the container's CRI devices (the container is deleted in the guest already);
        a disk no other container of the pod uses is hot-removed from the VM."""
        for use in c.block_disks:
            await self._release_block(c.sandbox_id, use)
        c.block_disks = []

    # -- exit events ------------------------------------------------------------------------------
    def _ensure_events(self, sandbox_id: str, running: RunningVM) -> None:
        st = self._sbstate(sandbox_id)
        if st.events is None or st.events.done():
            st.events = asyncio.ensure_future(self._watch_events(sandbox_id, running))

    async def _watch_events(self, sandbox_id: str, running: RunningVM) -> None:
        agent = running.agent
        assert agent is not None
        try:
            async for ev in agent.events():
                c = self.containers.find(ev.container_id) if ev.container_id else None
                if ev.exec_id == "" and c is not None and c.id == ev.container_id and not c.finished_at:
                    message = await self._termination_message(c, running, ev.exit_code)
                    if not c.finished_at:
                        c.mark_exited(ev.exit_code, ev.exited_at_ns, oom_killed=ev.oom_killed)
                        c.message = message
                        self._exited_now(c)
                        log.info("container %s exited with %d (%s)", c.id[:12], c.exit_code, c.reason)
                with contextlib.suppress(FrakpyError, OSError):
                    await agent.ack_events(ev.seq)
        except asyncio.CancelledError:
            raise
        except (FrakpyError, OSError) as exc:
            log.debug("sandbox %s: event stream ended: %s", sandbox_id[:12], exc)
        except Exception:
            log.exception("sandbox %s: event stream failed", sandbox_id[:12])

    def _exited_now(self, c: Container) -> None:
        self.records.save(c)
        self._exit_event(c.id).set()
        self._publish(ContainerEventType.STOPPED, c)

    async def _termination_message(self, c: Container, running: RunningVM, exit_code: int) -> str:
        """The container's termination-log (first 4096 bytes), read from the guest once it exited;
        with FallbackToLogsOnError and an empty file after a failure, the tail of its log."""
        data = b""
        host_file = _host_termination_file(c)
        if host_file:  # a CRI mount: the container wrote it through 9p into the host file
            data = _read_head(host_file, TERMINATION_MESSAGE_MAX)
        else:
            try:
                st = await _agent(running).container_state(c.id, timeout=5.0)
                data = st.termination_message[:TERMINATION_MESSAGE_MAX]
            except (FrakpyError, OSError, TimeoutError) as exc:
                log.debug("container %s: termination message not read: %s", c.id[:12], exc)
        if data or exit_code == 0 or not c.log_path:
            return data.decode(errors="replace")
        policy = c.annotations.get(POLICY_ANNOTATION) or (c.config.get("annotations") or {}).get(POLICY_ANNOTATION)
        if policy != "FallbackToLogsOnError":
            return ""
        pump = self._pumps.get(c.id)
        if pump is not None:  # let the output of its last moments reach the log
            await asyncio.wait({pump}, timeout=2.0)
        w = self._writers.get(c.id)
        if w is not None:
            w.flush_partial()
        return _log_tail(c.log_path)

    # -- StartContainer ---------------------------------------------------------------------------
    async def start(self, container_id: str) -> None:
        c = self.get(container_id)
        async with self._lock(c.id):
            if c.state is not ContainerState.CREATED:
                raise FailedPrecondition(f"container {c.id} is {c.state.value}, not created")
            running = self._vm_of(c)
            self._ensure_events(c.sandbox_id, running)
            if c.log_path:
                self._writers[c.id] = CriLogWriter(c.log_path)
                c.log_size = self._writers[c.id].size()
            self._pumps[c.id] = asyncio.ensure_future(self._pump(c, running))
            try:
                started = await _agent(running).start_container(c.id)
            except BaseException:
                self._pumps.pop(c.id).cancel()
                w = self._writers.pop(c.id, None)
                if w is not None:
                    w.close()
                raise
            if not c.finished_at:  # an exit event may already have arrived
                c.started_at = started or time.time_ns()
            self.records.save(c)
            self._publish(ContainerEventType.STARTED, c)
        log.info("container %s started", c.id[:12])

    async def _pump(self, c: Container, running: RunningVM) -> None:
        """Copy the container's output to its CRI log until it exited and all was read."""
        agent = running.agent
        assert agent is not None
        try:
            async for chunk in agent.read_output(c.id, from_offset=c.output_offset):
                for sub in list(self._attached.get(c.id, ())):
                    if not sub.offer(chunk):  # never blocks; False: too slow, dropped
                        self.unsubscribe_output(c.id, sub)
                w = self._writers.get(c.id)
                if w is not None:
                    w.write(chunk.stream.value, chunk.data, time_ns=chunk.time_ns or None, offset=chunk.offset)
                    pending = w.pending_offset()
                else:
                    pending = None
                done = chunk.end if pending is None else pending
                if done > c.output_offset:
                    c.output_offset = done
                    if w is not None:
                        c.log_size = w.size()
                    c.stream_offsets[chunk.stream.value] = chunk.end
                    self.records.save(c)
                    with contextlib.suppress(FrakpyError, OSError):
                        await agent.ack_output(c.id, done)
        except asyncio.CancelledError:
            raise
        except (FrakpyError, OSError) as exc:
            log.debug("container %s: output stream ended: %s", c.id[:12], exc)
        except Exception:
            log.exception("container %s: output pump failed", c.id[:12])
        finally:
            w = self._writers.get(c.id)
            if w is not None:
                w.flush_partial()
            for sub in self._attached.pop(c.id, ()):
                sub.end()

    def subscribe_output(self, container_id: str, sub: Any) -> bool:
        """Attach: ``_pump`` also hands every chunk of the main process to ``sub.offer(chunk)``
        (must not block; returning False unsubscribes it) and calls ``sub.end()`` when the
        output ended. False when no pump runs (the container's output already ended)."""
        pump = self._pumps.get(container_id)
        if pump is None or pump.done():
            return False
        self._attached.setdefault(container_id, set()).add(sub)
        return True

    def unsubscribe_output(self, container_id: str, sub: Any) -> None:
        subs = self._attached.get(container_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                self._attached.pop(container_id, None)

    # -- StopContainer ----------------------------------------------------------------------------
    async def stop(self, container_id: str, timeout: int = 0) -> None:  # noqa: ASYNC109
        c = self.containers.find(container_id)
        if c is None:
            raise NotFound(f"container {container_id!r} not found")
        await self._stop(c, timeout)

    async def _stop(self, c: Container, timeout: float) -> None:  # noqa: ASYNC109
        if c.state is not ContainerState.RUNNING:
            return
        running = self._running_vm(c.sandbox_id)
        if running is None:
            c.mark_unknown("sandbox VM is not running")
            self._exited_now(c)
            return
        exited = self._exit_event(c.id)
        if timeout > 0:
            sig = _signal_number(c.stop_signal)
            try:
                await _agent(running).signal_container(c.id, sig)
            except NotFound:
                pass
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(exited.wait(), timeout)
        if not c.finished_at:
            with contextlib.suppress(NotFound):
                await _agent(running).signal_container(c.id, signals.SIGKILL, all=True)
            try:
                await asyncio.wait_for(exited.wait(), KILL_WAIT_S)
            except TimeoutError:
                await self._poll_state(c, running)
        if not c.finished_at:
            raise DeadlineExceeded(f"container {c.id} did not exit {KILL_WAIT_S}s after SIGKILL")

    async def _poll_state(self, c: Container, running: RunningVM) -> None:
        """The exit event did not come: ask the agent directly."""
        try:
            st = await _agent(running).container_state(c.id)
        except (FrakpyError, OSError):
            return
        if st.finished_at_ns and not c.finished_at:
            c.mark_exited(st.exit_code, st.finished_at_ns, oom_killed=st.oom_killed)
            host_file = _host_termination_file(c)
            data = _read_head(host_file, TERMINATION_MESSAGE_MAX) if host_file else st.termination_message
            c.message = data[:TERMINATION_MESSAGE_MAX].decode(errors="replace")
            self._exited_now(c)

    # -- RemoveContainer --------------------------------------------------------------------------
    async def remove(self, container_id: str) -> None:
        c = self.containers.find(container_id)
        if c is None:
            return
        async with self._lock(c.id):
            if c.state is ContainerState.RUNNING:
                await self._stop(c, 0)
            running = self._running_vm(c.sandbox_id)
            if running is not None:
                with contextlib.suppress(NotFound):
                    await _agent(running).delete_container(c.id)
            await self._forget(c)
        self._locks.pop(c.id, None)

    async def _forget(self, c: Container) -> None:
        pump = self._pumps.pop(c.id, None)
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(BaseException):
                await pump
        w = self._writers.pop(c.id, None)
        if w is not None:
            w.close()
        await self._release_image(c.sandbox_id, c.image_mount_id)
        await self._detach_block_disks(c)
        if c.config.get("mounts"):
            self.sandboxes.volumes.unbind_container(self.sandboxes.share_dir(c.sandbox_id), c.id)
        self.records.delete(c.id)
        self.containers.remove(c.id)
        self.names.release(c.name_key)
        self._exited.pop(c.id, None)
        self._publish(ContainerEventType.DELETED, c)

    # -- ExecSync / logs / stats ------------------------------------------------------------------
    async def exec_sync(self, container_id: str, cmd: list[str], timeout: int = 0) -> ExecResult:  # noqa: ASYNC109
        c = self.get(container_id)
        if c.state is not ContainerState.RUNNING:
            raise FailedPrecondition(f"container {c.id} is not running ({c.state.value})")
        if not cmd:
            raise InvalidArgument("exec: cmd is empty")
        running = self._vm_of(c)
        result = await _agent(running).exec_sync(c.id, cmd, timeout_s=max(0, int(timeout)))
        if result.timed_out:
            raise DeadlineExceeded(f"command {cmd!r} in container {c.id[:12]} timed out after {timeout}s")
        return result

    async def reopen_log(self, container_id: str) -> None:
        c = self.get(container_id)
        if c.state is not ContainerState.RUNNING:
            raise FailedPrecondition(f"container {c.id} is not running")
        w = self._writers.get(c.id)
        if w is None:
            if not c.log_path:
                return
            w = self._writers[c.id] = CriLogWriter(c.log_path)
        else:
            w.reopen()
        c.log_size = w.size()  # the resume point now covers the new file
        self.records.save(c)

    async def update_resources(self, container_id: str, linux: dict[str, Any]) -> None:
        """UpdateContainerResources: the CRI LinuxContainerResources as OCI resources, applied
        with ``crun update`` in the guest; the record keeps them for ContainerStatus."""
        c = self.get(container_id)
        async with self._lock(c.id):
            if c.state not in (ContainerState.CREATED, ContainerState.RUNNING):
                raise FailedPrecondition(f"container {c.id} is {c.state.value}: its resources cannot change")
            running = self._vm_of(c)
            resources = oci_resources(linux)
            await _agent(running).update_container_resources(c.id, resources)
            c.config.setdefault("linux", {})["resources"] = dict(linux)
            self.records.save(c)
        log.info("container %s: resources updated: %s", c.id[:12], resources)

    async def stats(self, container_id: str) -> ContainerStats:
        c = self.get(container_id)
        running = self._vm_of(c)
        return self._rate(c.id, await _agent(running).container_stats(c.id))

    def _rate(self, container_id: str, s: ContainerStats) -> ContainerStats:
        prev = self._cpu_samples.get(container_id)
        self._cpu_samples[container_id] = (s.timestamp_ns, s.cpu_usage_ns)
        if prev is not None and s.timestamp_ns > prev[0] and s.cpu_usage_ns >= prev[1]:
            self.nano_cores[container_id] = int((s.cpu_usage_ns - prev[1]) * 1e9 / (s.timestamp_ns - prev[0]))
        return s

    async def sandbox_stats(self, sandbox_id: str) -> tuple[SandboxStats, list[tuple[Container, ContainerStats]]]:
        """The pod VM's own numbers and those of its running containers."""
        running = self._running_vm(sandbox_id)
        if running is None:
            raise FailedPrecondition(f"sandbox {sandbox_id[:12]} has no running VM")
        agent = _agent(running)
        vm = await agent.sandbox_stats()
        per: list[tuple[Container, ContainerStats]] = []
        for c in self.list(sandbox_id=sandbox_id, state=ContainerState.RUNNING):
            if c.sandbox_id != sandbox_id:
                continue
            try:
                per.append((c, self._rate(c.id, await agent.container_stats(c.id))))
            except FrakpyError:
                continue  # exited meanwhile
        return vm, per

    # -- listing ----------------------------------------------------------------------------------
    def list(self, id_prefix: str = "", state: ContainerState | None = None, sandbox_id: str = "",
             labels: dict[str, str] | None = None) -> list[Container]:
        out = []
        for c in self.containers.values():
            if id_prefix and not c.id.startswith(id_prefix):
                continue
            if state is not None and c.state is not state:
                continue
            if sandbox_id and not c.sandbox_id.startswith(sandbox_id):
                continue
            if labels and any(c.labels.get(k) != v for k, v in labels.items()):
                continue
            out.append(c)
        return sorted(out, key=lambda c: c.created_at)

    # -- sandbox hooks ----------------------------------------------------------------------------
    async def _before_sandbox_stop(self, sb: Sandbox, running: RunningVM | None) -> None:
        mine = [c for c in self.containers.values() if c.sandbox_id == sb.id]
        for c in mine:
            try:
                await self._stop(c, 0)
            except (FrakpyError, OSError) as exc:
                log.warning("container %s: stop with its sandbox failed: %s", c.id[:12], exc)
                c.mark_unknown(f"stopped with its sandbox: {exc}")
                self._exited_now(c)
        # give the pumps a moment to drain what is left, then close them
        pumps = [self._pumps[c.id] for c in mine if c.id in self._pumps]
        if pumps:
            await asyncio.wait(pumps, timeout=2.0)
        for c in mine:
            pump = self._pumps.pop(c.id, None)
            if pump is not None:
                pump.cancel()
            w = self._writers.pop(c.id, None)
            if w is not None:
                w.close()
        st = self._sb.pop(sb.id, None)
        if st is not None and st.events is not None:
            st.events.cancel()

    async def _on_sandbox_remove(self, sb: Sandbox) -> None:
        for c in [c for c in self.containers.values() if c.sandbox_id == sb.id]:
            await self._forget(c)
        self._sb.pop(sb.id, None)

    # -- restart ----------------------------------------------------------------------------------
    async def recover(self) -> None:
        """Reload records after a daemon restart (run after the sandbox manager's recover)."""
        for c in self.records.load_all():
            self.containers.add(c.id, c)
            self.names.reserve(c.name_key, c.id)
            running = self._running_vm(c.sandbox_id)
            if running is None:
                if c.state is ContainerState.RUNNING:
                    c.mark_unknown("sandbox VM is not running after restart")
                    self.records.save(c)
                continue
            st = self._sbstate(c.sandbox_id)
            st.images[c.image_mount_id] = st.images.get(c.image_mount_id, 0) + 1
            for use in c.block_disks:
                serial, _, ro = use.partition(":")
                held = st.disks.setdefault(serial, [0, ro == "ro"])
                held[0] += 1
                held[1] = held[1] and ro == "ro"
            self._ensure_events(c.sandbox_id, running)
            if c.state is ContainerState.RUNNING or (c.state is ContainerState.EXITED and c.started_at):
                if c.log_path:
                    _truncate_unrecorded(c)
                    self._writers[c.id] = CriLogWriter(c.log_path)
                self._pumps[c.id] = asyncio.ensure_future(self._pump(c, running))
        # volume binds live in the pinned volume mount namespace and survived the restart: keep
        # those of known containers, drop those of containers without a record (crash mid-create)
        known = {c.id for c in self.containers.values()}
        for sb in self.sandboxes.sandboxes.values():
            share = self.sandboxes.share_dir(sb.id)
            for name in sandbox_share.entries(share):
                if sandbox_share.container_of(name) not in known:
                    log.info("sandbox %s: dropping volume bind %s of a removed container", sb.id[:12], name)
                    self.sandboxes.volumes.unbind(share / name)

    async def close(self) -> None:
        for task in [*self._pumps.values(), *(s.events for s in self._sb.values() if s.events)]:
            task.cancel()
        for w in self._writers.values():
            w.close()
        self._writers.clear()


def _agent(running: RunningVM) -> AgentClient:
    if running.agent is None:
        raise FailedPrecondition("the sandbox's agent is not connected")
    return running.agent


def _log_tail(path: str, lines: int = FALLBACK_LOG_LINES, limit: int = TERMINATION_MESSAGE_MAX) -> str:
    """The text of the last ``lines`` CRI log lines (at most ``limit`` bytes), as kubelet does."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            raw = f.read()
    except OSError:
        return ""
    out: list[bytes] = []
    for line in raw.splitlines()[-lines:]:
        parts = line.split(b" ", 3)
        if len(parts) == 4:
            out.append(parts[3] + (b"\n" if parts[2] == b"F" else b""))
    return b"".join(out)[-limit:].decode(errors="replace")


def _truncate_unrecorded(c: Container) -> None:
    """Log lines past the recorded resume point were written before a crash could record
    them: the agent still holds that output (it was never acknowledged) and sends it again."""
    if c.log_size < 0:
        return
    try:
        with open(c.log_path, "r+b") as f:
            f.seek(0, 2)
            if f.tell() > c.log_size:
                log.info("container %s: dropping %d unrecorded log bytes", c.id[:12], f.tell() - c.log_size)
                f.truncate(c.log_size)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("container %s: log %s not truncated: %s", c.id[:12], c.log_path, exc)


def _plan_volumes(container_id: str, mounts: list[dict[str, Any]]) -> dict[str, _Volume]:
    """One share entry per distinct host path; a missing host path is INVALID_ARGUMENT."""
    out: dict[str, _Volume] = {}
    for m in mounts:
        host = m.get("host_path", "")
        if not host:
            continue  # build_spec says what is wrong with it
        if not host.startswith("/"):
            raise InvalidArgument(f"mount {m.get('container_path', '')}: host path {host!r} must be absolute")
        if not os.path.exists(host):
            raise InvalidArgument(f"mount {m.get('container_path', '')}: host path {host} does not exist")
        v = out.get(host)
        if v is None:
            v = out[host] = _Volume(sandbox_share.entry_name(container_id, len(out)), host)
        v.readonly = v.readonly and bool(m.get("readonly"))
        v.slave = v.slave or m.get("propagation") == "PROPAGATION_HOST_TO_CONTAINER"
        if m.get("selinux_relabel"):
            log.debug("mount %s: selinux_relabel ignored (no SELinux in the guest)", m.get("container_path", ""))
    return out


def _host_termination_file(c: Container) -> str:
    """The host file behind the container's termination-message path when a CRI mount covers it."""
    annotations = c.config.get("annotations") or {}
    dest = posixpath.normpath(annotations.get(TERMINATION_PATH_ANNOTATION) or DEFAULT_TERMINATION_PATH)
    for m in c.config.get("mounts") or []:
        if m.get("container_path") and posixpath.normpath(m["container_path"]) == dest:
            return str(m.get("host_path", ""))
    return ""


def _read_head(path: str, limit: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return b""


def _signal_number(name: str) -> int:
    try:
        return int(signals.Signals[name if name.startswith("SIG") else f"SIG{name}"])
    except KeyError:
        with contextlib.suppress(ValueError):
            return int(name)
        return int(signals.SIGTERM)


async def _suppressed(fn: Any, *args: Any) -> None:
    try:
        await fn(*args)
    except (TimeoutError, FrakpyError, OSError) as exc:
        log.warning("undo %s failed: %s", getattr(fn, "__name__", fn), exc)

