"""Run, stop, remove and list pod sandboxes.

RunPodSandbox is a sequence of named steps in an AsyncExitStack; each acquisition pushes
its undo, and success pops them all. So a failure at any step leaves no VM, netns, run dir,
name reservation or database row behind. List and Status are served from memory and
never touch a VM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from frakpy.config import Config
from frakpy.errors import FrakpyError, InvalidArgument, Unavailable
from frakpy.sandbox import share as sandbox_share
from frakpy.sandbox import vmboot
from frakpy.sandbox.model import Sandbox, SandboxMetadata, SandboxState
from frakpy.sandbox.vmboot import RunningVM
from frakpy.store.index import IdIndex, NameIndex
from frakpy.store.records import SandboxRecords
from frakpy.vm.template import TEMPLATE_MAC, TemplateStore

T = TypeVar("T")
log = logging.getLogger("frakpy.sandbox")

NAMESPACE_NODE = 2  # CRI NamespaceMode.NODE: the host's namespace


@dataclass
class DNS:
    servers: list[str] = field(default_factory=list)
    searches: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)


@dataclass
class RunRequest:
    """RunPodSandbox in domain terms (built by cri/convert.py)."""

    metadata: SandboxMetadata
    runtime_handler: str = ""
    hostname: str = ""
    log_directory: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    dns: DNS = field(default_factory=DNS)
    port_mappings: list[dict[str, Any]] = field(default_factory=list)
    network_mode: int = 0
    pid_mode: int = 0
    ipc_mode: int = 0
    config: dict[str, Any] = field(default_factory=dict)


class PodNetworkPort(Protocol):
    """What the sandbox manager needs from pod networking (frakpy.network.pod)."""

    async def prepare(self, sb: Sandbox) -> tuple[tuple[int, ...], dict[str, Any]]:
        """The pod's netns and tap: (fds QEMU inherits, VMSpec overrides such as tap_fd)."""
        ...

    async def attach(self, sb: Sandbox, req: RunRequest) -> dict[str, Any]:
        """The CNI plugins for a prepared pod (runs while its VM starts): the record for sb.network."""
        ...

    async def guest_config(self, sb: Sandbox) -> dict[str, Any]: ...

    async def teardown(self, sb: Sandbox) -> None: ...

    async def cleanup_orphans(self, known: dict[str, Sandbox]) -> list[str]: ...


StopHook = Callable[[Sandbox, RunningVM | None], Awaitable[None]]


class SandboxManager:
    def __init__(self, cfg: Config, records: SandboxRecords, network: PodNetworkPort | None = None) -> None:
        self.cfg = cfg
        self.records = records
        self.network = network
        self.sandboxes: IdIndex[Sandbox] = IdIndex("sandbox")
        self.names = NameIndex("sandbox")
        self.running: dict[str, RunningVM] = {}
        self.templates = TemplateStore(cfg.templates_dir, cfg.run_dir)
        # where the volume binds of every sandbox's 9p share live (frakpy.sandbox.share)
        self.volumes = sandbox_share.VolumeNamespace(cfg.run_dir)
        self._locks: dict[str, asyncio.Lock] = {}
        # Called before a sandbox's VM is stopped (the container manager stops containers there).
        self.before_stop: list[StopHook] = []
        # Called when a sandbox is removed (container records go with it).
        self.on_remove: list[Callable[[Sandbox], Awaitable[None]]] = []

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    def share_dir(self, sandbox_id: str) -> Path:
        """The host dir exported to the sandbox's VM for CRI mounts (frakpy.sandbox.share)."""
        return sandbox_share.share_dir(self.cfg.run_dir, sandbox_id)

    # -- queries (memory only) ----------------------------------------------------------------
    def get(self, sandbox_id: str) -> Sandbox:
        sb = self.sandboxes.get(sandbox_id)
        if sb.state is SandboxState.CREATING:
            raise InvalidArgument(f"sandbox {sb.id} is still being created")
        return sb

    def list(self, id_prefix: str = "", state: SandboxState | None = None,
             labels: dict[str, str] | None = None) -> list[Sandbox]:
        out = []
        for sb in self.sandboxes.values():
            if sb.state is SandboxState.CREATING:
                continue
            if id_prefix and not sb.id.startswith(id_prefix):
                continue
            if state is not None and sb.state is not state:
                continue
            if labels and any(sb.labels.get(k) != v for k, v in labels.items()):
                continue
            out.append(sb)
        return sorted(out, key=lambda s: s.created_at)

    # -- RunPodSandbox ----------------------------------------------------------------------------
    async def run(self, req: RunRequest) -> Sandbox:
        handler = self.cfg.handler(req.runtime_handler)
        handler_name = req.runtime_handler or self.cfg.daemon.default_handler
        _refuse_host_namespaces(req)
        md = req.metadata
        if not md.name or not md.namespace or not md.uid:
            raise InvalidArgument("pod metadata needs name, namespace and uid")
        sb = Sandbox(
            id=secrets.token_hex(32), metadata=md, runtime_handler=handler_name,
            hostname=req.hostname or md.name, log_directory=req.log_directory,
            labels=dict(req.labels), annotations=dict(req.annotations), config=req.config,
        )
        slog = logging.getLogger(f"frakpy.sandbox.{sb.id[:12]}")
        self.names.reserve(md.key, sb.id)  # AlreadyExists when the same pod attempt runs twice
        async with AsyncExitStack() as undo:
            undo.callback(self.names.release, md.key)
            run_dir = self.cfg.run_dir / "sandboxes" / sb.id
            _check_socket_path(run_dir)
            run_dir.mkdir(parents=True, exist_ok=False)
            undo.callback(shutil.rmtree, run_dir, True)
            spec = vmboot.build_spec(self.cfg, sb, handler, run_dir)
            # the 9p export for CRI mounts; mounted in the guest only when a container needs it
            share = sandbox_share.create(self.share_dir(sb.id))
            undo.callback(self.volumes.destroy_share, share)
            share_fd = [self.volumes.open_root(share)]  # QEMU opens the share in the volume namespace
            undo.callback(_close_fd, share_fd)
            spec.share_dir = Path(f"/proc/self/fd/{share_fd[0]}")

            self.sandboxes.add(sb.id, sb)
            undo.callback(self.sandboxes.remove, sb.id)
            self.records.save(sb)  # CREATING: a crash from here on is finished by recover()
            undo.callback(self.records.delete, sb.id)

            fds: tuple[int, ...] = ()
            t_start = time.monotonic()
            cni: asyncio.Future[dict[str, Any]] | None = None
            cni_took: list[float] = []
            if self.network is not None:
                fds, overrides = await self.network.prepare(sb)
                sb.network = {"prepared": True}  # a crash from here on tears the netns down in recover()
                undo.push_async_callback(self.network.teardown, sb)
                for key, value in overrides.items():
                    setattr(spec, key, value)
                spec.mac = TEMPLATE_MAC  # eth0's MAC is known after CNI ADD; the agent gives it to the NIC
                self.records.save(sb)
                # The CNI plugins run while the VM boots or restores (it needs only the tap).
                cni = asyncio.ensure_future(_timed(self.network.attach(sb, req), cni_took))
                undo.push_async_callback(_settle, cni)  # never tear down under a running CNI ADD

            t_net = time.monotonic()
            fds = (*fds, share_fd[0])
            running = await vmboot.launch(sb, spec, handler_name, handler, self.templates, slog, fds)
            _close_fd(share_fd)  # QEMU holds its own copy
            t_vm = time.monotonic()
            undo.push_async_callback(vmboot.release_vsock, sb)  # after the VM is killed
            undo.push_async_callback(running.vm.kill)
            undo.push_async_callback(running.close)
            if cni is not None:
                sb.network = await cni
                self.records.save(sb)
                await _failpoint("after-cni-add")
            t_cni = time.monotonic()

            assert running.agent is not None
            net_guest = await self.network.guest_config(sb) if self.network is not None else {}
            if net_guest:
                net_guest["nic_mac"] = TEMPLATE_MAC  # the NIC takes the pod's MAC from the agent
            await running.agent.setup_sandbox(
                sb.id,
                hostname=sb.hostname,
                dns_servers=req.dns.servers, dns_searches=req.dns.searches, dns_options=req.dns.options,
                hosts=_hosts_entries(sb, net_guest),
                realtime_ns=time.time_ns(),
                rng_seed=os.urandom(64),
            )
            t_setup = time.monotonic()
            if net_guest:
                await running.agent.setup_network(net_guest, hostname=sb.hostname,
                                                  pod_ips=list(sb.network.get("ips", [])))
            t_done = time.monotonic()
            sb.vm.boot.update(net_prepare_s=round(t_net - t_start, 3), vm_s=round(t_vm - t_net, 3),
                              cni_setup_s=round(cni_took[0], 3) if cni_took else 0.0,
                              cni_wait_s=round(t_cni - t_vm, 3), setup_sandbox_s=round(t_setup - t_cni, 3),
                              setup_network_s=round(t_done - t_setup, 3), run_total_s=round(t_done - t_start, 3))
            sb.transition(SandboxState.READY)
            self.records.save(sb)
            undo.pop_all()
        self.running[sb.id] = running
        running.watcher = asyncio.ensure_future(self._watch(sb, running))
        slog.info("sandbox %s/%s ready in %.2fs (%s, %s)", md.namespace, md.name,
                  sb.vm.boot.get("total_s", 0.0), sb.vm.accel, sb.vm.transport)
        return sb

    async def _watch(self, sb: Sandbox, running: RunningVM) -> None:
        """Mark the sandbox NOTREADY the moment its QEMU exits without being asked to."""
        await running.vm.exited.wait()
        if sb.state is SandboxState.READY and self.running.get(sb.id) is running:
            log.warning("sandbox %s: VM exited unexpectedly; marking NOTREADY", sb.id[:12])
            sb.transition(SandboxState.NOTREADY, "VM exited unexpectedly")
            self.records.save(sb)
            if running.agent is not None:
                with contextlib.suppress(Exception):
                    await running.agent.close()

    # -- StopPodSandbox ---------------------------------------------------------------------------
    async def stop(self, sandbox_id: str) -> None:
        """Stop containers, the VM and the network; idempotent, unknown ids succeed."""
        sb = self.sandboxes.find(sandbox_id)
        if sb is None:
            log.debug("StopPodSandbox %s: unknown, nothing to do", sandbox_id)
            return
        async with self._lock(sb.id):
            running = self.running.get(sb.id)
            for hook in self.before_stop:
                await hook(sb, running)
            await self._stop_vm(sb, running)
            self.volumes.destroy_share(self.share_dir(sb.id))  # the VM is gone: drop the volume binds
            if self.network is not None and sb.network:
                await self.network.teardown(sb)
                sb.network = {**sb.network, "torn_down": True}
            if sb.state is SandboxState.READY:
                sb.transition(SandboxState.NOTREADY, "stopped")
            self.records.save(sb)

    async def _stop_vm(self, sb: Sandbox, running: RunningVM | None) -> None:
        self.running.pop(sb.id, None)
        if running is None:
            # not adopted (QEMU gone, or never reachable): make sure nothing of it survives
            await _kill_stray(sb)
            await vmboot.release_vsock(sb)
            return
        if running.watcher is not None:
            running.watcher.cancel()
        vm = running.vm
        if running.agent is not None and not vm.exited.is_set():
            with contextlib.suppress(FrakpyError, OSError):
                await running.agent.shutdown(timeout=2.0)
        if not await vm.wait_exit(3.0) and not await vm.quit(3.0):
            log.warning("sandbox %s: VM ignored shutdown and quit; killing it", sb.id[:12])
        await vm.kill()
        await running.close()
        await vmboot.release_vsock(sb)

    # -- RemovePodSandbox -------------------------------------------------------------------------
    async def remove(self, sandbox_id: str) -> None:
        """Stop if needed, then delete every trace; idempotent, unknown ids succeed."""
        sb = self.sandboxes.find(sandbox_id)
        if sb is None:
            return
        if sb.state is SandboxState.READY or sb.id in self.running or (sb.network and not sb.network.get("torn_down")):
            await self.stop(sb.id)
        async with self._lock(sb.id):
            for hook in self.on_remove:
                await hook(sb)
            self.volumes.destroy_share(self.share_dir(sb.id))
            if sb.vm.run_dir:
                shutil.rmtree(sb.vm.run_dir, ignore_errors=True)
            self.records.delete(sb.id)
            self.sandboxes.remove(sb.id)
            self.names.release(sb.metadata.key)
        self._locks.pop(sb.id, None)

    # -- restart ----------------------------------------------------------------------------------
    async def recover(self) -> None:
        """Re-adopt after a daemon restart.

        Assumptions: every VM we started has a record (saved before QEMU was spawned); a
        record in CREATING means the daemon died mid-RunPodSandbox, so that sandbox is
        undone completely (kubelet retries); a READY record whose QEMU is alive and whose
        agent answers is re-adopted untouched; any other READY record becomes NOTREADY and
        keeps its resources until StopPodSandbox/RemovePodSandbox release them.
        """
        self.templates.cleanup()
        for sb in self.records.load_all():
            if sb.state is SandboxState.CREATING:
                log.info("sandbox %s was being created when frakpyd stopped; undoing it", sb.id[:12])
                await _kill_stray(sb)
                await vmboot.release_vsock(sb)
                if self.network is not None and sb.network:
                    with contextlib.suppress(Exception):
                        await self.network.teardown(sb)
                self.volumes.destroy_share(self.share_dir(sb.id))
                if sb.vm.run_dir:
                    shutil.rmtree(sb.vm.run_dir, ignore_errors=True)
                self.records.delete(sb.id)
                continue
            self.sandboxes.add(sb.id, sb)
            self.names.reserve(sb.metadata.key, sb.id)
            if sb.state is not SandboxState.READY:
                self.volumes.destroy_share(self.share_dir(sb.id))  # no VM uses it any more
                continue
            slog = logging.getLogger(f"frakpy.sandbox.{sb.id[:12]}")
            try:
                running = await vmboot.adopt(sb, slog)
            except (FrakpyError, OSError) as exc:
                log.warning("sandbox %s cannot be re-adopted: %s", sb.id[:12], exc)
                sb.transition(SandboxState.NOTREADY, f"not re-adopted after restart: {exc}")
                self.records.save(sb)
                continue
            self.running[sb.id] = running
            running.watcher = asyncio.ensure_future(self._watch(sb, running))
            log.info("sandbox %s re-adopted (qemu pid %s)", sb.id[:12], sb.vm.pid)
        known = {sb.id for sb in self.sandboxes.values()}
        for stray in sandbox_share.entries(sandbox_share.root(self.cfg.run_dir)):
            if stray not in known:  # the share of a sandbox whose record is gone
                self.volumes.destroy_share(self.share_dir(stray))
        if self.network is not None:
            # netns whose sandbox record is gone (crash between CNI ADD and the first save)
            alive = {sb.id: sb for sb in self.sandboxes.values() if not sb.network.get("torn_down")}
            await self.network.cleanup_orphans(alive)

    async def close(self) -> None:
        """Daemon shutdown: drop connections, leave every VM running."""
        for running in list(self.running.values()):
            await running.close()
        self.running.clear()

    def agent_of(self, sandbox_id: str) -> RunningVM:
        sb = self.get(sandbox_id)
        running = self.running.get(sb.id)
        if running is None or running.agent is None:
            raise Unavailable(f"sandbox {sb.id} has no running VM")
        return running


def _close_fd(box: list[int]) -> None:
    if box and box[0] >= 0:
        os.close(box[0])
        box[0] = -1


async def _failpoint(name: str) -> None:
    """Crash-recovery tests park RunPodSandbox here (FRAKPY_FAILPOINT=<name>) and SIGKILL the daemon."""
    if os.environ.get("FRAKPY_FAILPOINT") == name:
        log.warning("failpoint %s: parking RunPodSandbox", name)
        await asyncio.sleep(3600)


def _refuse_host_namespaces(req: RunRequest) -> None:
    asked = [name for name, mode in (("network", req.network_mode), ("PID", req.pid_mode),
                                     ("IPC", req.ipc_mode)) if mode == NAMESPACE_NODE]
    if asked:
        raise InvalidArgument(
            f"pod {req.metadata.namespace}/{req.metadata.name} asks for the host's "
            f"{' and '.join(asked)} namespace, which a VM sandbox cannot share; "
            "run it with a non-VM RuntimeClass (e.g. runc) or drop hostNetwork/hostPID/hostIPC"
        )


def _check_socket_path(run_dir: Path) -> None:
    longest = run_dir / "agent.sock"
    if len(str(longest).encode()) > 107:
        raise InvalidArgument(
            f"run dir {run_dir} is too deep for unix socket paths (108 bytes max); "
            "set daemon.run_dir to a shorter path"
        )


def _hosts_entries(sb: Sandbox, net_guest: dict[str, Any]) -> list[tuple[str, list[str]]]:
    entries = [("127.0.0.1", ["localhost"]), ("::1", ["localhost", "ip6-localhost", "ip6-loopback"])]
    for addr in net_guest.get("addresses", [])[:1]:
        entries.append((str(addr["address"]), [sb.hostname]))
    return entries


async def _kill_stray(sb: Sandbox) -> None:
    """Kill a QEMU of this sandbox that we hold no handle for (crash leftovers)."""
    from frakpy.vm.qemu import is_our_qemu

    pid = sb.vm.pid
    if pid and is_our_qemu(pid, sb.id):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
        for _ in range(50):
            if not is_our_qemu(pid, sb.id):
                break
            await asyncio.sleep(0.1)
    pidfile = Path(sb.vm.run_dir) / "qemu.pid" if sb.vm.run_dir else None
    if not pid and pidfile is not None and pidfile.exists():
        with contextlib.suppress(ValueError, OSError):
            stray = int(pidfile.read_text().strip())
            if is_our_qemu(stray, sb.id):
                os.kill(stray, 9)


async def _timed(aw: Awaitable[T], took: list[float]) -> T:
    t0 = time.monotonic()
    try:
        return await aw
    finally:
        took.append(time.monotonic() - t0)


async def _settle(fut: asyncio.Future[Any]) -> None:
    """Wait for a background step to end before undoing it (its own error, if any, is not the one
    to report: the failure that started the undo is). Bounded by the step's own timeout."""
    while not fut.done():
        with contextlib.suppress(BaseException):
            await asyncio.shield(fut)
    if not fut.cancelled():
        fut.exception()  # mark it retrieved
