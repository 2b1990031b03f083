"""Thin typed helpers over qemu.qmp's async QMPClient.

QMP errors and connection failures are wrapped into frakpy.errors here, at the boundary.
For commands whose completion is an event (device_del → DEVICE_DELETED), the listener is
registered before the command is sent so the event cannot be missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from qemu.qmp import EventListener, QMPClient
from qemu.qmp.error import QMPError
from qemu.qmp.qmp_client import ExecuteError

from frakpy.errors import DeadlineExceeded, FailedPrecondition, Unavailable


class QMP:
    def __init__(self, vm_id: str, log: logging.Logger) -> None:
        self.vm_id = vm_id
        self.log = log
        self._client: QMPClient | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def connect(self, path: Path, timeout: float = 10.0) -> None:
        client = QMPClient(f"vm-{self.vm_id[:12]}")
        try:
            await asyncio.wait_for(client.connect(str(path)), timeout)
        except (QMPError, OSError, TimeoutError) as exc:
            with contextlib.suppress(Exception):
                await client.disconnect()
            raise Unavailable(f"VM {self.vm_id[:12]}: cannot connect to QMP at {path}: {exc}") from exc
        self._client = client

    async def disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.disconnect()

    async def execute(self, cmd: str, args: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        if self._client is None:
            raise Unavailable(f"VM {self.vm_id[:12]}: QMP is not connected")
        self.log.debug("qmp -> %s %s", cmd, args or "")
        try:
            result = await asyncio.wait_for(self._client.execute(cmd, args), timeout)
        except ExecuteError as exc:
            raise FailedPrecondition(f"VM {self.vm_id[:12]}: QMP {cmd} failed: {exc}") from exc
        except TimeoutError as exc:
            raise DeadlineExceeded(f"VM {self.vm_id[:12]}: QMP {cmd} got no answer in {timeout:.0f}s") from exc
        except (QMPError, OSError, EOFError) as exc:
            raise Unavailable(f"VM {self.vm_id[:12]}: QMP {cmd}: {exc}") from exc
        self.log.debug("qmp <- %s %s", cmd, result)
        return result

    async def status(self) -> str:
        """QEMU's run state: 'running', 'paused', 'inmigrate', 'shutdown', ..."""
        return str((await self.execute("query-status"))["status"])

    async def quit(self) -> None:
        with contextlib.suppress(Unavailable):  # QEMU may close the socket before answering
            await self.execute("quit", timeout=3.0)

    async def powerdown(self) -> None:
        await self.execute("system_powerdown")

    # -- disk hotplug: a read-only or writable raw file on the VM's virtio-scsi controller ---
    async def add_disk(self, disk_id: str, path: Path, *, serial: str, readonly: bool = True,
                       driver: str = "file") -> None:
        """Attach ``path`` as a SCSI disk the guest finds by ``serial``; undone by remove_disk.
        ``driver`` is the protocol driver: ``file`` for an image file, ``host_device`` for a
        node block device."""
        node = f"node-{disk_id}"
        await self.execute("blockdev-add", {
            "driver": "raw", "node-name": node, "read-only": readonly,
            "file": {"driver": driver, "filename": str(path), "read-only": readonly},
        })
        try:
            await self.execute("device_add", {
                "driver": "scsi-hd", "id": disk_id, "drive": node, "bus": "scsi0.0", "serial": serial,
            })
        except BaseException:
            with contextlib.suppress(Exception):
                await self.execute("blockdev-del", {"node-name": node})
            raise

    async def remove_disk(self, disk_id: str, timeout: float = 10.0) -> None:
        """Detach a disk: device_del, wait for DEVICE_DELETED, then drop the block node."""
        if self._client is None:
            raise Unavailable(f"VM {self.vm_id[:12]}: QMP is not connected")
        listener = EventListener("DEVICE_DELETED")
        with self._client.listen(listener):
            try:
                await self.execute("device_del", {"id": disk_id})
            except FailedPrecondition as exc:
                if "not found" not in str(exc).lower():
                    raise
            else:
                async def deleted() -> None:
                    async for event in listener:
                        if event.get("data", {}).get("device") == disk_id:
                            return
                try:
                    await asyncio.wait_for(deleted(), timeout)
                except TimeoutError as exc:
                    raise DeadlineExceeded(
                        f"VM {self.vm_id[:12]}: the guest did not release disk {disk_id} in {timeout:.0f}s"
                    ) from exc
        with contextlib.suppress(FailedPrecondition):
            await self.execute("blockdev-del", {"node-name": f"node-{disk_id}"})

    # -- save (VM templates) ----------------------------------------------------------------
    async def save_to_fd(self, fd: int, *, timeout: float = 60.0) -> dict[str, Any]:
        """Migrate the VM's state into ``fd`` (a file) and wait until it completed.

        The fd is handed over with SCM_RIGHTS (``getfd``) and used as ``fd:<name>``: with
        ``-sandbox spawn=deny`` QEMU may not fork, so ``exec:`` migration is not an option.
        Guest RAM is left out when it lives in a shared named file and the x-ignore-shared
        capability is on (the VM template case). The VM is paused afterwards.
        """
        if self._client is None:
            raise Unavailable(f"VM {self.vm_id[:12]}: QMP is not connected")
        await self.set_ignore_shared()
        self._client.send_fd_scm(fd)
        await self.execute("getfd", {"fdname": "frakpy-save"})
        await self.execute("migrate", {"uri": "fd:frakpy-save"})
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            info = await self.execute("query-migrate")
            status = info.get("status", "")
            if status == "completed":
                return dict(info)
            if status in ("failed", "cancelled"):
                raise FailedPrecondition(
                    f"VM {self.vm_id[:12]}: saving the VM state {status}: {info.get('error-desc', '')}")
            if asyncio.get_running_loop().time() > deadline:
                with contextlib.suppress(Exception):
                    await self.execute("migrate_cancel")
                raise DeadlineExceeded(f"VM {self.vm_id[:12]}: saving the VM state took over {timeout:.0f}s")
            await asyncio.sleep(0.02)

    async def set_ignore_shared(self) -> None:
        """Leave RAM that lives in a shared named file out of the migration stream (both ends)."""
        await self.execute("migrate-set-capabilities", {
            "capabilities": [{"capability": "x-ignore-shared", "state": True}]})

    async def restore_from_fd(self, fd: int) -> None:
        """Start loading a saved state from ``fd`` (inherited by QEMU, started with -incoming defer).
        The VM runs by itself once the load completed; a failed load makes QEMU exit."""
        await self.set_ignore_shared()
        await self.execute("migrate-incoming", {"uri": f"fd:{fd}"})
