"""Boot a pod's VM until its agent answers, and keep the handles of a running one.

Boot stages, named in the DEADLINE_EXCEEDED error when a VM does not make it in time:
``starting QEMU`` → ``guest kernel booting`` → ``guest agent starting`` → ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from frakpy.agent.client import AgentClient
from frakpy.config import Config, HandlerConfig
from frakpy.errors import DeadlineExceeded, FrakpyError, Unavailable
from frakpy.sandbox.model import Sandbox, VMInfo
from frakpy.vm import accel, template, vsock
from frakpy.vm.guest import resolve as resolve_guest
from frakpy.vm.qemu import QemuVM
from frakpy.vm.spec import VMSpec, root_dax_problem
from frakpy.vm.template import TemplateStore

AGENT_READY_MARK = "frakpy-agent"


def choose_transport(requested: str) -> str:
    if requested == "auto":
        return "vsock" if os.path.exists("/dev/vhost-vsock") else "serial"
    return requested


@dataclass
class RunningVM:
    """The live handles of one sandbox's VM: QEMU (with QMP) and the agent connection."""

    vm: QemuVM
    agent: AgentClient | None = None
    watcher: asyncio.Task[None] | None = None
    extra: dict[str, object] = field(default_factory=dict)

    async def close(self) -> None:
        """Drop our connections; the VM keeps running (daemon shutdown)."""
        if self.watcher is not None:
            self.watcher.cancel()
        if self.agent is not None:
            with contextlib.suppress(Exception):
                await self.agent.close()
        await self.vm.close()


def handler_spec(cfg: Config, handler: HandlerConfig, vm_id: str, run_dir: Path) -> tuple[VMSpec, accel.AccelChoice]:
    """The VM a handler gives its pods, before any pod-specific backend is attached."""
    guest = resolve_guest(cfg.guest_manifest, handler)
    choice = accel.choose(handler.accelerator)
    root_dax = handler.root_dax and not _dax_refused(guest.rootfs, guest.rootfs_fstype, handler.memory_mib,
                                                     handler.machine)
    spec = VMSpec(
        vm_id=vm_id,
        run_dir=run_dir,
        kernel=guest.kernel,
        rootfs=guest.rootfs,
        rootfs_fstype=guest.rootfs_fstype,
        root_dax=root_dax,
        vcpus=handler.vcpus,
        memory_mib=handler.memory_mib,
        machine=handler.machine,
        accel=choice.name,
        tb_size_mib=handler.tb_size_mib,
        tsc_khz=accel.host_tsc_khz() if choice.name == "tcg" else None,
        kernel_params=handler.kernel_params,
        transport=choose_transport(handler.agent_transport),
        vsock_backend=vsock.backend_kind(),
        vsock_port=handler.vsock_port,
        seccomp=handler.seccomp,
        qemu_binary=handler.qemu_binary,
        qemu_lib_dir=None if handler.qemu_capstone else guest.qemu_lib_dir,
        free_page_reporting=handler.free_page_reporting and not handler.template,
    )
    return spec, choice


_dax_warned: set[tuple[str, str]] = set()


def _dax_refused(rootfs: Path, fstype: str, memory_mib: int, machine: str) -> str:
    """root_dax_problem(), logged once per image and reason when the handler asked for a DAX root."""
    why = root_dax_problem(rootfs, fstype, memory_mib, machine)
    if why and (str(rootfs), why) not in _dax_warned:
        _dax_warned.add((str(rootfs), why))
        logging.getLogger("frakpy.vm").warning("root_dax: %s; booting %s from a virtio-blk disk", why, rootfs)
    return why


def build_spec(cfg: Config, sb: Sandbox, handler: HandlerConfig, run_dir: Path) -> VMSpec:
    spec, choice = handler_spec(cfg, handler, sb.id, run_dir)
    sb.vm = VMInfo(
        run_dir=str(run_dir), accel=choice.name, accel_reason=choice.reason, transport=spec.transport,
        machine=handler.machine, vcpus=handler.vcpus, memory_mib=handler.memory_mib,
        kernel=str(spec.kernel), rootfs=str(spec.rootfs), root_device="pmem" if spec.root_dax else "virtio-blk",
    )
    return spec


def spec_from_record(sb: Sandbox) -> VMSpec:
    """Enough of the spec to adopt a running VM (paths and ids; argv is not re-rendered)."""
    vm = sb.vm
    return VMSpec(
        vm_id=sb.id, run_dir=Path(vm.run_dir), kernel=Path(vm.kernel), rootfs=Path(vm.rootfs),
        machine=vm.machine, accel=vm.accel, transport=vm.transport,
    )


async def boot(sb: Sandbox, spec: VMSpec, timeout: float, log: logging.Logger,
               extra_fds: tuple[int, ...] = (), *, restoring: str = "") -> RunningVM:
    """Start QEMU and wait for the agent; on any failure the VM is killed before raising.

    With ``restoring`` (a template's name) QEMU loads the saved state given as
    ``spec.incoming_fd`` instead of booting, and GuestDetails is not asked: in a clone nothing
    may read the kernel's randomness (boot_id) before SetupSandbox reseeded it."""
    vm = QemuVM(spec, log)
    running = RunningVM(vm)
    stage = ["starting QEMU"]
    t0 = time.monotonic()
    if spec.transport == "vsock":
        attach_vsock(sb, spec)
        extra_fds = (*extra_fds, spec.vsock_fd) if spec.vsock_fd is not None else extra_fds

    async def steps() -> None:
        try:
            await vm.start(extra_fds)
        finally:
            _close_vsock_fd(spec)  # QEMU holds its own copy
        t_qmp = time.monotonic()
        stage[0] = "restoring the VM state" if restoring else "guest kernel booting"
        if spec.incoming_fd is not None:
            await vm.qmp.restore_from_fd(spec.incoming_fd)
        running.agent = await AgentClient.connect(spec.agent_uri, timeout=timeout, sandbox_id=sb.id)
        stage[0] = "guest agent answering" if restoring else "guest agent starting"
        await running.agent.health(timeout=timeout)
        t_ready = time.monotonic()
        if restoring:
            sb.vm.boot = {
                "mode": "template", "template": restoring,
                "total_s": round(t_ready - t0, 3),
                "qemu_spawn_to_qmp_s": round(t_qmp - vm.spawned_at, 3),
                "restore_to_agent_s": round(t_ready - t_qmp, 3),
            }
            return
        details = await running.agent.guest_details()
        t_details = time.monotonic()
        # times since the kernel started: guest uptime corrected by what it lost in early boot
        lag = details.clock_lag
        ready_k = details.agent_ready_uptime + lag
        sb.vm.boot = {
            "mode": "cold",
            "total_s": round(t_ready - t0, 3),
            "qemu_spawn_to_qmp_s": round(t_qmp - vm.spawned_at, 3),
            "qemu_to_kernel_s": round(max(0.0, (t_ready - vm.spawned_at) - ready_k), 3),
            "kernel_to_init_s": round(details.init_started + lag, 3) if details.init_started else 0.0,
            "kernel_to_agent_start_s": round(details.agent_start_uptime + lag, 3),
            "kernel_to_agent_ready_s": round(ready_k, 3),
            "guest_clock_lag_s": round(lag, 3),
            "agent_rpc_roundtrip_s": round(t_details - t_ready, 4),
            "root_mount": details.root_mount,
        }

    task = asyncio.ensure_future(steps())
    died = asyncio.ensure_future(vm.exited.wait())
    try:
        done, _ = await asyncio.wait({task, died}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if task in done and task.exception() is None:
            sb.vm.pid = vm.pid or 0
            sb.vm.agent_uri = spec.agent_uri
            return running
        if task in done and not await vm.wait_exit(0.5):
            task.result()  # a failure of the steps while the VM still runs: re-raise it
        if vm.exited.is_set():
            raise Unavailable(
                f"sandbox {sb.id[:12]}: the VM exited while {stage[0]}; "
                f"qemu: {vm.stderr_tail() or '-'}; console: {vm.console_tail() or '-'}"
            )
        if stage[0] == "guest kernel booting" and AGENT_READY_MARK in vm.console_tail(100_000):
            stage[0] = "guest agent starting"
        raise DeadlineExceeded(
            f"sandbox {sb.id[:12]}: the VM did not {'restore' if restoring else 'boot'} within {timeout:.0f}s "
            f"(stage reached: {stage[0]}); console: {vm.console_tail() or '(empty)'}"
        )
    except BaseException:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        if running.agent is not None:
            with contextlib.suppress(Exception):
                await running.agent.close()
        await vm.kill()
        _close_vsock_fd(spec)
        await release_vsock(sb)
        raise
    finally:
        died.cancel()


def attach_vsock(sb: Sandbox, spec: VMSpec) -> None:
    """The host end of the VM's vsock device, before QEMU starts: a kernel CID on a vhost-vsock fd,
    or the userspace backend process (its pidfile and socket in the run dir)."""
    sb.vm.vsock_backend = spec.vsock_backend
    if spec.vsock_backend == "kernel":
        spec.vsock_cid, spec.vsock_fd = vsock.CIDS.reserve()
    else:
        spec.vsock_cid = vsock.USER_GUEST_CID
        spec.vsock_fd = vsock.start_backend(spec)
    sb.vm.vsock_cid = spec.vsock_cid


def _close_vsock_fd(spec: VMSpec) -> None:
    if spec.vsock_fd is not None:
        os.close(spec.vsock_fd)
        spec.vsock_fd = None


async def release_vsock(sb: Sandbox) -> None:
    """Undo attach_vsock once the VM is gone (idempotent): the backend process and its files, the CID."""
    if sb.vm.vsock_backend == "user" and sb.vm.run_dir:
        await vsock.stop_backend(Path(sb.vm.run_dir), sb.id)
    elif sb.vm.vsock_backend == "kernel":
        vsock.CIDS.release(sb.vm.vsock_cid)


async def launch(sb: Sandbox, spec: VMSpec, handler_name: str, handler: HandlerConfig,
                 templates: TemplateStore | None, log: logging.Logger,
                 extra_fds: tuple[int, ...] = ()) -> RunningVM:
    """Start the pod's VM: restored from the handler's template when enabled, else booted.

    Any failure on the template path (building it, its files, the restore itself) falls back
    to a cold boot for this pod, logged with the reason and counted; a template that failed to
    restore is discarded so the next pod rebuilds it."""
    if templates is None or not handler.template:
        return await boot(sb, spec, handler.boot_timeout_s, log, extra_fds)
    why = template.unsupported(spec)
    if why:
        log.info("no VM template for %s: cold boot", why)
        return await boot(sb, spec, handler.boot_timeout_s, log, extra_fds)
    pinned = None
    for attempt in (1, 2):  # a second time when a sibling's failed restore removed it meanwhile
        try:
            t = await templates.get(handler_name, spec, handler.boot_timeout_s)
        except (FrakpyError, OSError) as exc:
            templates.counters.fallbacks += 1
            templates.counters.last_fallback = str(exc)
            log.warning("VM template unavailable, cold boot instead: %s", exc)
            return await boot(sb, spec, handler.boot_timeout_s, log, extra_fds)
        try:
            pinned = t.pin()
            break
        except template.TemplateGone as exc:
            if attempt == 2:
                templates.counters.fallbacks += 1
                templates.counters.last_fallback = str(exc)
                log.warning("VM template %s, cold boot instead: %s", t.dir.name, exc)
                return await boot(sb, spec, handler.boot_timeout_s, log, extra_fds)
        except (FrakpyError, OSError) as exc:  # damaged files: rebuild for the next pod
            templates.counters.fallbacks += 1
            templates.counters.last_fallback = str(exc)
            templates.discard(t, str(exc), retry_now=True)
            log.warning("VM template %s is damaged, cold boot instead: %s", t.dir.name, exc)
            return await boot(sb, spec, handler.boot_timeout_s, log, extra_fds)
    assert pinned is not None
    try:
        clone = template.clone_spec(spec, pinned)
        running = await boot(sb, clone, handler.boot_timeout_s, log,
                             (*extra_fds, pinned.memory_fd, pinned.state_fd), restoring=t.dir.name)
    except (FrakpyError, OSError) as exc:
        templates.counters.fallbacks += 1
        templates.counters.last_fallback = str(exc)
        templates.discard(t, f"restore failed: {exc}", build=pinned.build)
        log.warning("restoring from VM template %s failed, cold boot instead: %s", t.dir.name, exc)
        return await boot(sb, spec, handler.boot_timeout_s, log, extra_fds)
    finally:
        pinned.close()
    templates.restored(t)
    return running


async def adopt(sb: Sandbox, log: logging.Logger, timeout: float = 10.0, attempts: int = 2) -> RunningVM:
    """Reconnect to a VM started before a daemon restart; raises when it is not usable.

    A second connection is tried when the first gets no answer: the agent starts a fresh session
    (and frame decoder) whenever the host side hangs up, which clears whatever the dead daemon's
    connection may have left half-sent on the channel."""
    vm = QemuVM(spec_from_record(sb), log)
    if sb.vm.vsock_backend == "kernel":
        vsock.CIDS.mark(sb.vm.vsock_cid)  # the kernel holds it for QEMU; never hand it out again
    await vm.adopt(sb.vm.pid)
    running = RunningVM(vm)
    for attempt in range(1, attempts + 1):
        try:
            running.agent = await AgentClient.connect(sb.vm.agent_uri, timeout=timeout, sandbox_id=sb.id)
            await running.agent.health(timeout=timeout)
            return running
        except (FrakpyError, OSError) as exc:
            if running.agent is not None:
                with contextlib.suppress(Exception):
                    await running.agent.close()
                running.agent = None
            if attempt == attempts:
                await running.close()
                raise Unavailable(
                    f"sandbox {sb.id[:12]}: the VM is running but its agent does not answer: {exc}") from exc
            log.warning("sandbox %s: agent did not answer after the restart (%s); reconnecting", sb.id[:12], exc)
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")
