"""VM templates: boot a handler's VM once, save it, and start pods by restoring the save.

A template is two files under ``<templates_dir>/<handler>-<key>/``:

* ``memory``: the guest RAM, built with ``memory-backend-file,share=on``; clones map it with
  ``share=off`` (MAP_PRIVATE), so every clone reads the template's pages from one page cache and
  copies only the pages it writes;
* ``state``: the device state, written by QMP ``migrate`` to an fd with the ``x-ignore-shared``
  capability (RAM in a shared named file is left out, so the file is a few hundred KiB).

A clone is a new QEMU with the same device set and ``-incoming fd:N``; what QEMU lets differ
between save and restore are the backends, and those are exactly the per-pod parts: the tap fd,
the QMP and agent sockets, the console file, the 9p share path. Everything the guest must know
about its pod (clock, entropy, hostname, MAC, addresses, DNS) reaches it through the agent after
the restore (SetupSandbox is the first call and reseeds the kernel CRNG).

The key hashes everything that must match on restore: QEMU binary and version, kernel and guest
image, the handler's VM profile (CPUs, memory, machine, accelerator, TCG cache, kernel command
line, transport) and the device variant (with or without a NIC). A template is never modified
once published (clones map its memory file privately; a change would show through in pages they
have not copied yet); superseded templates are unlinked, which running clones survive because
their mappings keep the inode alive.

Only one build per key runs at a time, in this process (an asyncio future shared by the callers)
and across processes (``flock`` on ``.lock-<key>``: the CLI's ``frakpy template build`` and
daemons sharing a templates dir).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frakpy.agent.client import AgentClient
from frakpy.errors import FailedPrecondition, FrakpyError, Unavailable
from frakpy.vm.qemu import QemuVM, is_our_qemu, pid_alive
from frakpy.vm.spec import VMSpec

FORMAT = 1  # bump when the way templates are made changes
TEMPLATE_MAC = "02:46:52:4b:00:01"  # the template NIC's MAC; clones take the pod's via the agent
SETTLE_S = 0.3  # after the host hangs up, let the agent return to waiting for a connection
PRUNE_AGE_S = 60.0  # superseded templates younger than this may still be opened by a restore
RETRY_BUILD_S = 300.0  # after a failed build, pods cold-boot without retrying it for this long

_qemu_versions: dict[str, str] = {}


def qemu_identity(binary: str) -> str:
    """``qemu --version`` plus the binary's size and mtime (a rebuilt QEMU is a new QEMU)."""
    path = shutil.which(binary) or binary
    try:
        st = os.stat(path)
    except OSError as exc:
        raise FailedPrecondition(f"QEMU binary {binary!r} not found: install qemu-system-x86") from exc
    cache_key = f"{path}:{st.st_size}:{st.st_mtime_ns}"
    if cache_key not in _qemu_versions:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
        _qemu_versions[cache_key] = f"{cache_key}:{out.splitlines()[0] if out else '?'}"
    return _qemu_versions[cache_key]


def _file_id(path: Path) -> str:
    st = path.stat()
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def variant(spec: VMSpec) -> dict[str, Any]:
    """What a pod's VM must have in common with the template it is restored from."""
    return {
        "format": FORMAT,
        "qemu": qemu_identity(spec.qemu_binary),
        "kernel": _file_id(spec.kernel),
        "rootfs": _file_id(spec.rootfs),
        "rootfs_fstype": spec.rootfs_fstype,
        "root_dax": spec.root_dax,
        "vcpus": spec.vcpus,
        "memory_mib": spec.memory_mib,
        "machine": spec.machine,
        "accel": spec.accel,
        "tb_size_mib": spec.tb_size_mib,
        "cmdline": spec.kernel_cmdline(),
        "transport": spec.transport,
        "seccomp": spec.seccomp,
        "nic": spec.tap_fd is not None or spec.net_placeholder,
        "share": spec.share_dir is not None,
        "extra_args": list(spec.extra_args),
    }


def unsupported(spec: VMSpec) -> str:
    """Why this VM cannot come from a template ('' when it can)."""
    if len(spec.tap_fds) > 1:
        return "a multi-queue NIC (a template's placeholder NIC has one queue)"
    if spec.transport == "vsock":
        return ("the vsock transport (a clone would restore the template's guest CID, and QEMU cannot save a "
                "vhost-user device)")
    if spec.free_page_reporting:
        return "free page reporting (QEMU would punch the reported pages out of the template's file)"
    return ""


def key_of(v: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(v, sort_keys=True).encode()).hexdigest()[:20]


@dataclass
class Template:
    handler: str
    key: str
    dir: Path

    @property
    def memory(self) -> Path:
        return self.dir / "memory"

    @property
    def state(self) -> Path:
        return self.dir / "state"

    @property
    def meta_path(self) -> Path:
        return self.dir / "meta.json"

    def meta(self) -> dict[str, Any]:
        return dict(json.loads(self.meta_path.read_text()))

    def pin(self) -> Pinned:
        """Open the template's files for one restore, checking them (sizes as recorded, device
        state hash). All three are opened through one directory fd, so they come from the same
        build even if the template is replaced meanwhile; once pinned, a concurrent discard or
        prune only unlinks names. Raises TemplateGone when the template was removed before it
        could be opened, FailedPrecondition when its files are damaged."""
        try:
            dir_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise TemplateGone(f"template {self.dir.name} was removed") from exc
        fds: list[int] = []
        try:
            try:
                with open(os.open("meta.json", os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd), "rb") as f:
                    meta = json.loads(f.read())
                for name in ("memory", "state"):
                    fds.append(os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd))
            except FileNotFoundError as exc:
                raise TemplateGone(f"template {self.dir.name} was removed") from exc
            except ValueError as exc:
                raise FailedPrecondition(f"template {self.dir.name}: unreadable meta.json: {exc}") from exc
            for name, fd in zip(("memory", "state"), fds, strict=True):
                size = os.fstat(fd).st_size
                if size != meta["sizes"][name]:
                    raise FailedPrecondition(f"template {self.dir.name}: {name} is {size} bytes, "
                                             f"{meta['sizes'][name]} were written")
            h = hashlib.sha256()
            while chunk := os.read(fds[1], 1 << 20):
                h.update(chunk)
            if h.hexdigest() != meta["state_sha256"]:
                raise FailedPrecondition(f"template {self.dir.name}: the saved device state is corrupted")
            os.lseek(fds[1], 0, os.SEEK_SET)
            return Pinned(self, meta["state_sha256"], fds[0], fds[1])
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        finally:
            os.close(dir_fd)

    def build_id(self) -> str | None:
        """Which build of the key is published now (None: none is)."""
        try:
            return str(self.meta()["state_sha256"])
        except (OSError, ValueError, KeyError):
            return None


class TemplateGone(FailedPrecondition):
    """The template was discarded or replaced between finding and opening it."""


@dataclass
class Pinned:
    """A template's files held open by one restore (QEMU maps the memory through /proc/self/fd,
    so it reads this build even if the name is unlinked meanwhile)."""

    template: Template
    build: str  # the build's state hash: tells two builds of one key apart
    memory_fd: int
    state_fd: int

    def close(self) -> None:
        for fd in (self.memory_fd, self.state_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass
class Counters:
    builds: int = 0
    build_failures: int = 0
    restores: int = 0
    fallbacks: int = 0
    last_fallback: str = ""


class TemplateStore:
    def __init__(self, root: Path, run_dir: Path, log: logging.Logger | None = None) -> None:
        self.root = root
        self.run_dir = run_dir
        self.log = log or logging.getLogger("frakpy.template")
        self.counters = Counters()
        self._building: dict[str, asyncio.Future[Template]] = {}
        self._failed: dict[str, tuple[float, str]] = {}  # key -> (monotonic time, reason)
        self._restore_failures: dict[str, set[str]] = {}  # key -> builds whose restore failed, in a row

    def cleanup(self) -> list[str]:
        """Remove what a build interrupted by a crash left (daemon start): its template QEMU, which
        runs in its own session and would outlive us, its runtime dir, and its half-written files.
        Builds still running elsewhere (their key's lock is held) are left alone."""
        removed: list[str] = []
        for run in sorted((self.run_dir / "templates").glob("*")):
            with self._unless_building(run.name) as free:
                if not free:
                    continue
                removed += _reap_build_run(run)
        for work in sorted(self.root.glob(".build-*")):
            key, _, pid = work.name[len(".build-"):].rpartition("-")
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(work, ignore_errors=True)
                removed.append(work.name)
        for item in removed:
            self.log.info("template build left over by a crash removed: %s", item)
        return removed

    @contextlib.contextmanager
    def _unless_building(self, key_prefix: str) -> Iterator[bool]:
        """Yields False while a build of the key starting with ``key_prefix`` holds its lock."""
        locks = list(self.root.glob(f".lock-{key_prefix}*"))
        fds = []
        try:
            for lock in locks:
                fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
                fds.append(fd)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    yield False
                    return
            yield True
        finally:
            for fd in fds:
                os.close(fd)

    def _dir(self, handler: str, key: str) -> Path:
        return self.root / f"{handler}-{key}"

    def find(self, handler: str, key: str) -> Template | None:
        t = Template(handler, key, self._dir(handler, key))
        return t if t.meta_path.exists() else None

    def entries(self) -> list[dict[str, Any]]:
        out = []
        for meta_path in sorted(self.root.glob("*/meta.json")):
            with contextlib.suppress(OSError, ValueError):
                meta = json.loads(meta_path.read_text())
                meta["dir"] = str(meta_path.parent)
                out.append(meta)
        return out

    def discard(self, t: Template, reason: str, *, build: str | None = None, retry_now: bool = False) -> None:
        """Remove a template that failed; the next pod rebuilds it. ``build`` is the build the
        failure happened with: a failure of a build that is no longer published (a sibling restore
        already discarded it, or it was rebuilt meanwhile) removes nothing. When restores of two
        builds in a row fail, restoring does not work here: pods cold-boot for RETRY_BUILD_S
        instead of each paying a build and a failed restore. Several pods failing with one build
        count once."""
        current = t.build_id()
        if build is None or current == build:
            if current is not None or t.dir.exists():
                self.log.warning("template %s discarded: %s", t.dir.name, reason)
            shutil.rmtree(t.dir, ignore_errors=True)
        else:
            self.log.info("template %s: a restore failed with a build already replaced: %s", t.dir.name, reason)
        if retry_now:
            return
        failed = self._restore_failures.setdefault(t.key, set())
        failed.add(build or current or reason)
        if len(failed) >= 2:
            why = f"restore failed with {len(failed)} builds in a row: {reason}"
            self._failed[t.key] = (time.monotonic(), why[:300])

    def restored(self, t: Template) -> None:
        self.counters.restores += 1
        self._restore_failures.pop(t.key, None)

    async def get(self, handler: str, spec: VMSpec, boot_timeout: float) -> Template:
        """The template for ``spec``'s variant, built now when missing (one build per key)."""
        key = key_of(variant(spec))
        t = self.find(handler, key)
        if t is not None:
            return t
        failed = self._failed.get(key)
        if failed is not None and time.monotonic() - failed[0] < RETRY_BUILD_S:
            raise FailedPrecondition(f"the VM template of handler {handler!r} failed to build "
                                     f"{time.monotonic() - failed[0]:.0f}s ago ({failed[1]}); "
                                     f"retrying after {RETRY_BUILD_S:.0f}s")
        fut = self._building.get(key)
        if fut is None:
            fut = asyncio.ensure_future(self._build_locked(handler, key, spec, boot_timeout))
            self._building[key] = fut
            fut.add_done_callback(lambda _f: self._building.pop(key, None))
        return await asyncio.shield(fut)

    async def _build_locked(self, handler: str, key: str, spec: VMSpec, boot_timeout: float) -> Template:
        self.root.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(self.root / f".lock-{key}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            await asyncio.to_thread(fcntl.flock, lock_fd, fcntl.LOCK_EX)
            t = self.find(handler, key)  # another process may have built it meanwhile
            if t is not None:
                return t
            try:
                t = await self._build(handler, key, spec, boot_timeout)
            except Exception as exc:
                self.counters.build_failures += 1
                self._failed[key] = (time.monotonic(), str(exc)[:300])
                raise
            self._failed.pop(key, None)
            self.counters.builds += 1
            self.prune(handler, keep=key)
            return t
        finally:
            os.close(lock_fd)  # releases the flock

    async def _build(self, handler: str, key: str, pod_spec: VMSpec, boot_timeout: float) -> Template:
        t0 = time.monotonic()
        final = self._dir(handler, key)
        work = self.root / f".build-{key}-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        run_dir = self.run_dir / "templates" / key[:16]
        _reap_build_run(run_dir)
        spec = template_spec(pod_spec, key, run_dir, work)
        vm = QemuVM(spec, self.log)
        agent: AgentClient | None = None
        try:
            await vm.start()
            agent = await asyncio.wait_for(
                AgentClient.connect(spec.agent_uri, timeout=boot_timeout, sandbox_id=spec.vm_id),
                boot_timeout)
            await agent.health(timeout=boot_timeout)
            t_booted = time.monotonic()
            # Hang up first: the agent goes back to waiting for a host, which is the state every
            # clone starts in. Nothing random has been handed out to anyone yet (no GuestDetails:
            # the kernel makes boot_id on its first read, so each clone makes its own).
            await agent.close()
            agent = None
            await asyncio.sleep(SETTLE_S)
            fd = os.open(work / "state", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                info = await vm.qmp.save_to_fd(fd)
                os.fsync(fd)
            finally:
                os.close(fd)
            await vm.quit()
            if not await vm.wait_exit(5.0):
                await vm.kill()
            mem_fd = os.open(work / "memory", os.O_RDONLY)
            try:
                os.fsync(mem_fd)
            finally:
                os.close(mem_fd)
            meta = {
                "handler": handler, "key": key, "created": time.time(),
                "variant": variant(pod_spec),
                "boot_s": round(t_booted - t0, 3), "build_s": round(time.monotonic() - t0, 3),
                "sizes": {n: (work / n).stat().st_size for n in ("memory", "state")},
                "memory_allocated": (work / "memory").stat().st_blocks * 512,
                "state_sha256": hashlib.sha256((work / "state").read_bytes()).hexdigest(),
                "migrated_bytes": (info.get("ram") or {}).get("transferred", 0),
            }
            (work / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
            shutil.rmtree(final, ignore_errors=True)
            os.rename(work, final)
            self.log.info("template %s built in %.2fs (boot %.2fs, state %d KiB, RAM written %d MiB)",
                          final.name, meta["build_s"], meta["boot_s"], meta["sizes"]["state"] // 1024,
                          meta["memory_allocated"] >> 20)
            return Template(handler, key, final)
        except FrakpyError as exc:
            raise Unavailable(f"building the VM template for handler {handler!r} failed: {exc}; "
                              f"console: {vm.console_tail(500) or '-'}") from exc
        finally:
            if agent is not None:
                with contextlib.suppress(Exception):
                    await agent.close()
            await vm.kill()
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(run_dir, ignore_errors=True)

    def prune(self, handler: str, keep: str) -> list[str]:
        """Remove this handler's superseded templates (old enough that no restore is opening them)."""
        removed = []
        now = time.time()
        for d in self.root.glob(f"{handler}-*"):
            if d.name == f"{handler}-{keep}" or not d.is_dir():
                continue
            try:
                if now - d.stat().st_mtime < PRUNE_AGE_S:
                    continue
            except OSError:
                continue
            shutil.rmtree(d, ignore_errors=True)
            with contextlib.suppress(OSError):
                (self.root / f".lock-{d.name.rsplit('-', 1)[-1]}").unlink()
            removed.append(d.name)
            self.log.info("template %s removed (superseded)", d.name)
        return removed


def _reap_build_run(run: Path) -> list[str]:
    """Kill the template QEMU of an interrupted build (its pidfile in ``run``) and remove ``run``."""
    killed = []
    try:
        pid = int((run / "qemu.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pid = 0
    if pid and is_our_qemu(pid, f"tmpl{run.name}"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        killed.append(f"template QEMU {pid}")
    shutil.rmtree(run, ignore_errors=True)
    return killed


def template_spec(pod: VMSpec, key: str, run_dir: Path, work: Path) -> VMSpec:
    """The template VM: the pod's device set with backends that lead nowhere."""
    spec = dataclasses.replace(
        pod, vm_id=f"tmpl{key}", run_dir=run_dir, qmp_fd=None, agent_fd=None,
        tap_fd=None, tap_fds=[], net_placeholder=pod.tap_fd is not None or pod.net_placeholder,
        mac=TEMPLATE_MAC, mem_path=work / "memory", mem_share=True, incoming_fd=None,
        # read by the agent at boot only (clones never boot): warm up for the pods to come
        kernel_params=f"{pod.kernel_params} frakpy.template=1".strip(),
    )
    if pod.share_dir is not None:
        empty = work / "share"
        empty.mkdir(exist_ok=True)
        spec.share_dir = empty
    return spec


def clone_spec(pod: VMSpec, p: Pinned) -> VMSpec:
    """The pod's own spec, restoring from the pinned template ``p`` (QEMU inherits both fds under
    the same numbers and opens the memory file through its own /proc/self/fd)."""
    return dataclasses.replace(pod, mem_path=Path(f"/proc/self/fd/{p.memory_fd}"), mem_share=False,
                               incoming_fd=p.state_fd)
