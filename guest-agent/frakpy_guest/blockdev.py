"""Finding a hot-added disk by its serial number.

The host hot-adds images as QEMU ``scsi-hd`` disks (``serial=<s>``) on the VM's virtio-scsi
controller. QEMU answers the SCSI VPD page 0x80 (unit serial number) with that serial, and Linux
(6.x) exposes the raw page as ``/sys/block/sdX/device/vpd_pg80``: a 4-byte header, then the
serial (QEMU pads nothing, but trailing spaces/NULs are stripped anyway). devtmpfs creates
``/dev/sdX`` without udev. QEMU truncates serials longer than 36 bytes (20 for page 0x83): keep
serials at most 20 characters.

Waiting is event-driven: a NETLINK_KOBJECT_UEVENT socket is opened before the first scan and
any ``add`` uevent triggers a rescan; a slow rescan (every 0.25 s) runs only during the wait as
a fallback. Nothing stays open afterwards.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

NETLINK_KOBJECT_UEVENT = 15
RESCAN_INTERVAL = 0.25


def read_serial(dev_sysfs: str) -> str | None:
    """The serial of one ``/sys/block/<name>`` entry, from VPD page 0x80 (or a ``serial`` file)."""
    try:
        with open(os.path.join(dev_sysfs, "device", "vpd_pg80"), "rb") as f:
            raw = f.read()
        if len(raw) >= 4:
            length = int.from_bytes(raw[2:4], "big")
            return raw[4:4 + length].decode("ascii", "replace").strip(" \x00")
    except OSError:
        pass
    for name in ("serial", os.path.join("device", "serial")):
        try:
            with open(os.path.join(dev_sysfs, name)) as f:
                return f.read().strip()
        except OSError:
            continue
    return None


def find_by_serial(serial: str, sysfs: str = "/sys", dev: str = "/dev") -> str | None:
    block = os.path.join(sysfs, "block")
    try:
        names = sorted(os.listdir(block))
    except OSError:
        return None
    for name in names:
        if not name.startswith(("sd", "vd")):
            continue
        if read_serial(os.path.join(block, name)) == serial:
            return os.path.join(dev, name)
    return None


def _uevent_socket() -> socket.socket | None:
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
        s.bind((0, 1))  # group 1: kernel uevents
        s.setblocking(False)
        return s
    except (OSError, AttributeError):
        return None


async def wait_for_serial(serial: str, timeout: float, sysfs: str = "/sys",  # noqa: ASYNC109
                          dev: str = "/dev") -> str:
    """The /dev path of the disk with ``serial``; TimeoutError when it does not show up."""
    loop = asyncio.get_running_loop()
    sock = _uevent_socket()
    wake = asyncio.Event()
    if sock is not None:
        def on_uevent() -> None:
            try:
                while True:
                    sock.recv(8192)
            except OSError:
                pass
            wake.set()

        loop.add_reader(sock.fileno(), on_uevent)
    deadline = time.monotonic() + timeout
    try:
        while True:
            path = find_by_serial(serial, sysfs, dev)
            if path is not None and os.path.exists(path):  # noqa: ASYNC240 - sysfs/devtmpfs
                return path
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no disk with serial {serial!r} appeared within {timeout:g}s")
            wake.clear()
            try:
                await asyncio.wait_for(wake.wait(), min(left, RESCAN_INTERVAL))
            except TimeoutError:
                pass
    finally:
        if sock is not None:
            loop.remove_reader(sock.fileno())
            sock.close()
