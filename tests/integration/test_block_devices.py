"""CRI devices (raw block volumes) through a real daemon: a host block device (a loop device
here) hot-added to the pod VM as a scsi-hd disk and exposed at ``container_path``."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from frakpy.cri.client import CRIError
from frakpy.cri.proto import api_pb2 as pb

from . import daemon_fixture as dfx
from .conftest import vm_requirements
from .registry_fixtures import requirements_missing
from .test_containers import container_config, create, wait_state
from .test_volumes import out, run_pod, sh

_missing = vm_requirements() or requirements_missing()
if _missing is None and (os.geteuid() != 0 or subprocess.run(["which", "losetup"], capture_output=True).returncode):
    _missing = "needs root and losetup"
pytestmark = pytest.mark.skipif(_missing is not None, reason=_missing or "")

OFFSET = 1024 * 1024  # where the container writes its marker
SLEEP = ["sh", "-c", "sleep 600"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("blockdev")
    with dfx.daemon_with_image(work) as (d, image, base):
        yield d, image, work, base


@pytest.fixture
def loopdev(tmp_path: Path):
    backing = tmp_path / "disk.img"
    with open(backing, "wb") as f:
        f.truncate(8 * 1024 * 1024)
    dev = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True,
                         check=True).stdout.strip()
    try:
        yield dev, backing
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def with_device(cfg: pb.ContainerConfig, host: str, path: str = "/dev/xvdb", perms: str = "rwm") -> pb.ContainerConfig:
    cfg.devices.add(container_path=path, host_path=host, permissions=perms)
    return cfg


def started(c, pod_id: str, sb_cfg: pb.PodSandboxConfig, cfg: pb.ContainerConfig) -> str:
    cid = create(c, pod_id, sb_cfg, cfg)
    c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
    assert wait_state(c, cid, pb.CONTAINER_RUNNING).state == pb.CONTAINER_RUNNING
    return cid


def vm_disks(c, watcher: str) -> list[str]:
    """The SCSI disks the pod VM sees (the image disk and hot-added devices)."""
    return sorted(out(c, watcher, "ls /sys/block | grep '^sd' || true").split())


def watched_pod(c, name: str, work: Path, image: str) -> tuple[str, pb.PodSandboxConfig, str, list[str]]:
    """A pod with a plain container that lists the VM's disks, and the disks it starts with."""
    pod_id, sb_cfg = run_pod(c, name, work)
    watcher = started(c, pod_id, sb_cfg, container_config("watch", image, SLEEP))
    return pod_id, sb_cfg, watcher, vm_disks(c, watcher)


def host_read(path: str, offset: int, n: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, n, offset)
    finally:
        os.close(fd)


def remove(c, cid: str) -> None:
    c.call(c.runtime.RemoveContainer, pb.RemoveContainerRequest(container_id=cid))


def test_block_device_read_write_and_detach(env, loopdev):
    d, image, work, base = env
    dev, backing = loopdev
    with d.client(timeout=120) as c:
        pod_id, sb_cfg, watcher, before = watched_pod(c, "blk", work, image)

        t0 = time.monotonic()
        cid = started(c, pod_id, sb_cfg, with_device(container_config("rw", image, SLEEP), dev))
        print(f"create+start with a block device: {time.monotonic() - t0:.3f}s")
        assert len(vm_disks(c, watcher)) == len(before) + 1
        assert out(c, cid, "ls -l /dev/xvdb").startswith("b")
        assert out(c, cid, "blockdev --getsize64 /dev/xvdb 2>/dev/null || wc -c < /dev/xvdb").split()[-1] \
            == str(8 * 1024 * 1024)
        out(c, cid, f"printf FRAKPY-BLOCK | dd of=/dev/xvdb bs=1 seek={OFFSET} conv=notrunc,fsync && sync")
        assert out(c, cid, f"dd if=/dev/xvdb bs=1 skip={OFFSET} count=12 2>/dev/null") == "FRAKPY-BLOCK"
        assert host_read(dev, OFFSET, 12) == b"FRAKPY-BLOCK"
        assert host_read(str(backing), OFFSET, 12) == b"FRAKPY-BLOCK"
        # another container of the pod does not get the device
        assert sh(c, watcher, "ls /dev/xvdb").exit_code != 0

        # removal detaches the disk from the VM; the device can be attached again afterwards
        remove(c, cid)
        assert vm_disks(c, watcher) == before
        cid = started(c, pod_id, sb_cfg, with_device(container_config("ro", image, SLEEP), dev, perms="r"))
        assert out(c, cid, f"dd if=/dev/xvdb bs=1 skip={OFFSET} count=12 2>/dev/null") == "FRAKPY-BLOCK"
        r = sh(c, cid, f"printf nope | dd of=/dev/xvdb bs=1 seek={OFFSET} conv=notrunc,fsync")
        assert r.exit_code != 0, r.stderr
        r = sh(c, cid, "echo nope > /dev/xvdb")
        assert r.exit_code != 0, r.stderr
        assert host_read(dev, OFFSET, 12) == b"FRAKPY-BLOCK"
        remove(c, cid)
        assert vm_disks(c, watcher) == before


def test_refused_devices_leave_nothing_behind(env, loopdev):
    d, image, work, base = env
    dev, _ = loopdev
    with d.client(timeout=120) as c:
        pod_id, sb_cfg, watcher, before = watched_pod(c, "blkbad", work, image)
        missing = str(work / "no-such-disk")
        cases = [
            (missing, "rwm", f"device /dev/xvdc: host path {missing} is not usable"),
            ("/dev/null", "rwm", "node character devices cannot enter a pod VM"),
            (dev, "rwx", "subset of 'rwm'"),
        ]
        for host, perms, message in cases:
            cfg = with_device(container_config("bad", image, SLEEP), dev)  # valid, must not stay
            with_device(cfg, host, "/dev/xvdc", perms)
            with pytest.raises(CRIError) as exc:
                create(c, pod_id, sb_cfg, cfg)
            assert exc.value.code == grpc.StatusCode.INVALID_ARGUMENT, exc.value.details
            assert message in exc.value.details
        assert vm_disks(c, watcher) == before
        listed = c.call(c.runtime.ListContainers, pb.ListContainersRequest(
            filter=pb.ContainerFilter(pod_sandbox_id=pod_id))).containers
        assert [x.metadata.name for x in listed] == ["watch"]

        # a failure after a first disk went in: the device is held read-only by another container,
        # so a writer is refused (FAILED_PRECONDITION) and the image file attached before it goes again
        ro = started(c, pod_id, sb_cfg, with_device(container_config("ro", image, SLEEP), dev, perms="r"))
        held = vm_disks(c, watcher)
        assert len(held) == len(before) + 1
        img = work / "extra.img"
        img.write_bytes(b"\0" * (1024 * 1024))
        cfg = with_device(with_device(container_config("writer", image, SLEEP), str(img)), dev, "/dev/xvdc")
        with pytest.raises(CRIError) as exc:
            create(c, pod_id, sb_cfg, cfg)
        assert exc.value.code == grpc.StatusCode.FAILED_PRECONDITION, exc.value.details
        assert "device /dev/xvdc" in exc.value.details and "read-only" in exc.value.details
        assert vm_disks(c, watcher) == held
        remove(c, ro)
        assert vm_disks(c, watcher) == before
        # and the same device works for the next container
        cid = started(c, pod_id, sb_cfg, with_device(container_config("ok", image, SLEEP), dev))
        out(c, cid, "dd if=/dev/xvdb bs=512 count=1 of=/dev/null")
        remove(c, cid)
        assert vm_disks(c, watcher) == before


def test_containers_of_a_pod_share_one_disk_per_device(env, loopdev):
    d, image, work, base = env
    dev, _ = loopdev
    with d.client(timeout=120) as c:
        pod_id, sb_cfg, watcher, before = watched_pod(c, "blkshare", work, image)
        # the same device twice in one container and once in another: one disk in the VM
        a = started(c, pod_id, sb_cfg, with_device(with_device(container_config("a", image, SLEEP), dev), dev,
                                                   "/dev/xvdc"))
        b = started(c, pod_id, sb_cfg, with_device(container_config("b", image, SLEEP), dev, perms="r"))
        assert len(vm_disks(c, watcher)) == len(before) + 1
        out(c, a, f"printf SHARED-DISK | dd of=/dev/xvdc bs=1 seek={OFFSET} conv=notrunc,fsync && sync")
        assert out(c, a, f"dd if=/dev/xvdb bs=1 skip={OFFSET} count=11 2>/dev/null") == "SHARED-DISK"
        assert out(c, b, f"dd if=/dev/xvdb bs=1 skip={OFFSET} count=11 2>/dev/null") == "SHARED-DISK"
        assert sh(c, b, f"printf x | dd of=/dev/xvdb bs=1 seek={OFFSET} conv=notrunc").exit_code != 0
        remove(c, a)
        assert len(vm_disks(c, watcher)) == len(before) + 1  # b still uses it
        assert out(c, b, f"dd if=/dev/xvdb bs=1 skip={OFFSET} count=11 2>/dev/null") == "SHARED-DISK"
        remove(c, b)
        assert vm_disks(c, watcher) == before
        c.call(c.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def test_remove_after_daemon_restart_detaches(env, loopdev):
    d, image, work, base = env
    dev, _ = loopdev
    with d.client(timeout=120) as c:
        pod_id, sb_cfg, watcher, before = watched_pod(c, "blkrestart", work, image)
        cid = started(c, pod_id, sb_cfg, with_device(container_config("rw", image, SLEEP), dev))
        assert len(vm_disks(c, watcher)) == len(before) + 1
    dfx.stop(d, signal.SIGKILL)
    d2 = dfx.start(d.socket.parent, d.config)
    d.proc, d.log = d2.proc, d2.log  # the module fixture stops and cleans up through ``d``
    with d.client(timeout=120) as c:
        remove(c, cid)
        assert vm_disks(c, watcher) == before
        cid = started(c, pod_id, sb_cfg, with_device(container_config("again", image, SLEEP), dev))
        remove(c, cid)
        c.call(c.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
