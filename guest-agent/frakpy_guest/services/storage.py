"""Storage RPCs: MountImage / UnmountImage (hot-added scsi-hd disks) and MountShare (9p)."""

from __future__ import annotations

import logging
import os

from frakpy.agent.protocol import agent_pb2 as pb
from frakpy.agent.protocol import guestpaths as gp
from frakpy.agent.protocol.ttrpc import Code, ServerCall
from frakpy_guest import blockdev
from frakpy_guest.runtime import MS_RDONLY, Runtime, check_id, err

log = logging.getLogger("frakpy_guest.storage")

DEFAULT_WAIT = 10.0
FSTYPES = ("erofs", "ext4", "squashfs", "xfs")
DEFAULT_MSIZE = 512000


async def mount_image(rt: Runtime, req: pb.MountImageRequest, call: ServerCall) -> pb.MountImageResponse:
    check_id("mount id", req.mount_id)
    fstype = req.fstype or "erofs"
    if fstype not in FSTYPES:
        raise err(Code.INVALID_ARGUMENT, f"file system type {fstype!r} is not one of {', '.join(FSTYPES)}")
    if not req.serial:
        raise err(Code.INVALID_ARGUMENT, "serial is empty: give the scsi-hd serial of the image disk")
    async with rt._image_lock:
        found = rt.images.get(req.mount_id)
        if found is not None:
            return pb.MountImageResponse(path=found["guest_path"], device=found["device"], already_mounted=True)
        timeout = req.timeout_ms / 1000 if req.timeout_ms else DEFAULT_WAIT
        try:
            device = await blockdev.wait_for_serial(req.serial, timeout, rt.p("/sys"), rt.p("/dev"))
        except TimeoutError as exc:
            raise err(Code.DEADLINE_EXCEEDED, f"image {req.mount_id}: {exc} (was the disk hot-added "
                                              "to the VM's virtio-scsi controller?)") from exc
        guest_path = gp.image_mount(req.mount_id)
        path = rt.p(guest_path)
        os.makedirs(path, exist_ok=True)
        flags = 0 if req.read_write else MS_RDONLY
        try:
            rt.system.mount(device, path, fstype, flags, None)
        except OSError as exc:
            raise err(Code.INTERNAL,
                      f"image {req.mount_id}: mounting {device} ({fstype}) on {guest_path}: {exc}") from exc
        rt.images[req.mount_id] = {"path": path, "guest_path": guest_path, "device": device, "users": set()}
        log.info("image %s: %s mounted on %s", req.mount_id, device, guest_path)
        return pb.MountImageResponse(path=guest_path, device=device)


async def unmount_image(rt: Runtime, req: pb.UnmountImageRequest, call: ServerCall) -> pb.UnmountImageResponse:
    async with rt._image_lock:
        image = rt.images.get(req.mount_id)
        if image is None:
            return pb.UnmountImageResponse()
        if image["users"]:
            raise err(Code.FAILED_PRECONDITION, f"image {req.mount_id} is in use by container(s) "
                                                f"{', '.join(sorted(image['users']))}")
        try:
            rt.system.umount(image["path"])
        except OSError as exc:
            raise err(Code.INTERNAL, f"image {req.mount_id}: {exc}") from exc
        del rt.images[req.mount_id]
        try:
            os.rmdir(image["path"])
        except OSError:
            pass
    return pb.UnmountImageResponse()


async def mount_share(rt: Runtime, req: pb.MountShareRequest, call: ServerCall) -> pb.MountShareResponse:
    if not req.tag or len(req.tag) > 31 or not req.tag.isprintable() or " " in req.tag:
        raise err(Code.INVALID_ARGUMENT, f"9p tag {req.tag!r} is empty or malformed (at most 31 characters)")
    guest_path = req.path or gp.SHARES_DIR
    if not guest_path.startswith("/") or ".." in guest_path.split("/"):
        raise err(Code.INVALID_ARGUMENT, f"share path {guest_path!r} must be absolute, without '..'")
    if rt.shares.get(guest_path) == req.tag:
        return pb.MountShareResponse(path=guest_path)
    if guest_path in rt.shares:
        raise err(Code.ALREADY_EXISTS, f"{guest_path} already has share {rt.shares[guest_path]} mounted")
    path = rt.p(guest_path)
    os.makedirs(path, exist_ok=True)
    # cache=mmap: reads and writes go straight to the host (changes visible both ways at once),
    # and only mmap uses the page cache, so MAP_SHARED writable mappings work (cache=none
    # refuses them: sqlite WAL and the like on a volume would fail)
    opts = f"trans=virtio,version=9p2000.L,msize={req.msize or DEFAULT_MSIZE},cache=mmap"
    try:
        rt.system.mount(req.tag, path, "9p", 0, opts)
    except OSError as exc:
        raise err(Code.INTERNAL, f"mounting 9p share {req.tag} on {guest_path}: {exc}") from exc
    rt.shares[guest_path] = req.tag
    return pb.MountShareResponse(path=guest_path)
