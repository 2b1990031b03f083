"""CRI mounts through a real daemon: host paths bound into the pod's virtio-9p share."""

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
from .test_containers import container_config, create, cstatus, pod_config, wait_state

_missing = vm_requirements() or requirements_missing()
pytestmark = pytest.mark.skipif(_missing is not None, reason=_missing or "")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("volumes")
    with dfx.daemon_with_image(work) as (d, image, base):
        yield d, image, work, base


def sh(c, cid: str, script: str) -> pb.ExecSyncResponse:
    return c.call(c.runtime.ExecSync, pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", script], timeout=30))


def out(c, cid: str, script: str) -> str:
    r = sh(c, cid, script)
    assert r.exit_code == 0, (script, r.stdout, r.stderr)
    return r.stdout.decode()


def in_volume_ns(under: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in the daemon's volume mount namespace (<run_dir>/shares.mntns)."""
    nsfile = under.parent.parent / "shares.mntns" if under.parent.name == "shares" else under / "shares.mntns"
    return subprocess.run(["nsenter", f"--mount={nsfile}", *cmd], capture_output=True, text=True, check=check)


def mount_lines(under: Path) -> list[str]:
    """Mounts at or below ``under`` (a share dir) in the volume namespace, and in the node's."""
    ns = in_volume_ns(under, "cat", "/proc/self/mountinfo").stdout.splitlines()
    with open("/proc/self/mountinfo") as f:
        host = f.read().splitlines()
    return [line for line in ns + host if line.split()[4].startswith(str(under))]


def host_mount_lines(under: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if line.split()[4].startswith(str(under))]


def share_of(base: Path, pod_id: str) -> Path:
    return base / "run" / "shares" / pod_id


def run_pod(c, name: str, work: Path) -> tuple[str, pb.PodSandboxConfig]:
    sb_cfg = pod_config(name, work / f"logs-{name}")
    return c.call(c.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=sb_cfg)).pod_sandbox_id, sb_cfg


def host_tree(work: Path, name: str) -> dict[str, Path]:
    root = work / name
    (root / "vol").mkdir(parents=True)
    (root / "ro").mkdir()
    (root / "ro" / "given").write_text("read me\n")
    (root / "hosts").write_text("10.9.8.7 volume-test-host\n")
    (root / "resolv.conf").write_text("nameserver 10.9.8.53\n")
    (root / "sub.txt").write_text("sub v1\n")
    (root / "termination-log").write_text("")
    return {p.name: p for p in root.iterdir()}


def test_volumes_end_to_end(env):
    d, image, work, base = env
    h = host_tree(work, "e2e")
    with d.client(timeout=120) as c:
        pod_id, sb_cfg = run_pod(c, "vols", work)
        share = share_of(base, pod_id)
        assert share.is_dir() and list(share.iterdir()) == []  # created at RunPodSandbox, empty

        cfg = container_config("app", image, ["sh", "-c", "sleep 600"])
        cfg.mounts.add(container_path="/vol", host_path=str(h["vol"]))
        cfg.mounts.add(container_path="/ro", host_path=str(h["ro"]), readonly=True)
        cfg.mounts.add(container_path="/etc/hosts", host_path=str(h["hosts"]))
        cfg.mounts.add(container_path="/etc/resolv.conf", host_path=str(h["resolv.conf"]), readonly=True)
        cfg.mounts.add(container_path="/data/sub.txt", host_path=str(h["sub.txt"]))  # subPath-style file
        cfg.mounts.add(container_path="/dev/termination-log", host_path=str(h["termination-log"]),
                       selinux_relabel=True)
        t0 = time.monotonic()
        cid = create(c, pod_id, sb_cfg, cfg)
        print(f"CreateContainer with 6 mounts (first in pod, mounts the share): {time.monotonic() - t0:.3f}s")
        c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
        assert wait_state(c, cid, pb.CONTAINER_RUNNING).state == pb.CONTAINER_RUNNING
        assert len([e for e in share.iterdir() if e.name.startswith(cid)]) == 6
        assert len(mount_lines(share)) >= 6
        # the node's view of the share: empty mount points only (rm -rf cannot reach volume data)
        assert host_mount_lines(share) == [] and os.listdir(share / f"{cid}-0") == []
        assert (share / f"{cid}-2").read_text() == ""

        mounts = out(c, cid, "grep ' /vol ' /proc/mounts")
        assert mounts.startswith("frakpy-share /vol 9p ") and ",mmap," in mounts, mounts  # cache=mmap
        # file mounts: content as on the host
        assert out(c, cid, "cat /etc/hosts") == "10.9.8.7 volume-test-host\n"
        assert out(c, cid, "cat /etc/resolv.conf") == "nameserver 10.9.8.53\n"
        # rw dir: both ways
        out(c, cid, "echo from-container > /vol/c.txt && mkdir -p /vol/d/e && echo deep > /vol/d/e/f")
        assert (h["vol"] / "c.txt").read_text() == "from-container\n"
        assert (h["vol"] / "d" / "e" / "f").read_text() == "deep\n"
        (h["vol"] / "h.txt").write_text("from-host\n")
        assert out(c, cid, "cat /vol/h.txt") == "from-host\n"
        (h["vol"] / "h.txt").write_text("from-host v2\n")  # rewritten in place: no stale cache
        assert out(c, cid, "cat /vol/h.txt") == "from-host v2\n"
        assert out(c, cid, "rm /vol/c.txt && ls /vol") == "d\nh.txt\n"
        assert not (h["vol"] / "c.txt").exists()
        # modes and owners set in the container reach the host
        out(c, cid, "touch /vol/m && chmod 640 /vol/m && chown 1234:5678 /vol/m")
        st = (h["vol"] / "m").stat()
        assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o640, 1234, 5678)
        assert out(c, cid, "stat -c '%a %u %g' /vol/m") == "640 1234 5678\n"
        # subPath-style rw file
        out(c, cid, "echo appended >> /data/sub.txt")
        assert h["sub.txt"].read_text() == "sub v1\nappended\n"
        with open(h["sub.txt"], "a") as f:
            f.write("host line\n")
        assert out(c, cid, "cat /data/sub.txt") == "sub v1\nappended\nhost line\n"
        # read-only dir: readable, not writable (in the guest and on the host side of the share)
        assert out(c, cid, "cat /ro/given") == "read me\n"
        r = sh(c, cid, "touch /ro/x")
        assert r.exit_code != 0 and b"Read-only" in r.stderr
        assert sh(c, cid, "echo x > /etc/resolv.conf").exit_code != 0
        assert not (h["ro"] / "x").exists() and h["resolv.conf"].read_text() == "nameserver 10.9.8.53\n"
        # mounts are bound in order: /ro is entry 1; read-only on the host side of the share too
        r = in_volume_ns(share, "touch", str(share / f"{cid}-1" / "host-side"), check=False)
        assert r.returncode != 0 and "Read-only" in r.stderr

        # a second container of the same pod: the share is already mounted; termination message
        cfg2 = container_config("term", image, ["sh", "-c", "echo -n 'bye from volume' > /dev/termination-log; exit 3"])
        cfg2.mounts.add(container_path="/dev/termination-log", host_path=str(h["termination-log"]))
        cfg2.mounts.add(container_path="/vol", host_path=str(h["vol"]), readonly=True)
        t0 = time.monotonic()
        cid2 = create(c, pod_id, sb_cfg, cfg2)
        print(f"CreateContainer with 2 mounts (share already mounted): {time.monotonic() - t0:.3f}s")
        c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid2))
        st2 = wait_state(c, cid2, pb.CONTAINER_EXITED)
        assert st2.exit_code == 3 and st2.message == "bye from volume"
        assert h["termination-log"].read_text() == "bye from volume"

        # removing a container removes its binds (and only its binds)
        c.call(c.runtime.RemoveContainer, pb.RemoveContainerRequest(container_id=cid2))
        assert not [e for e in share.iterdir() if e.name.startswith(cid2)]
        assert not [line for line in mount_lines(share) if cid2 in line]
        assert out(c, cid, "cat /vol/h.txt") == "from-host v2\n"  # the other container is unaffected
        c.call(c.runtime.RemoveContainer, pb.RemoveContainerRequest(container_id=cid))
        assert list(share.iterdir()) == [] and mount_lines(share) == []

        # host data is untouched by all the cleanup
        assert (h["vol"] / "d" / "e" / "f").read_text() == "deep\n"
        assert (h["ro"] / "given").read_text() == "read me\n"

        # the pod goes: so does its share dir, binds first
        cid3 = create(c, pod_id, sb_cfg, cfg)
        assert len(mount_lines(share)) >= 6
        c.call(c.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        assert not share.exists() and mount_lines(share) == []
        c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        with pytest.raises(CRIError):
            cstatus(c, cid3)
        assert not share.exists()
        assert (h["vol"] / "h.txt").read_text() == "from-host v2\n"
        assert h["hosts"].read_text() == "10.9.8.7 volume-test-host\n"


def test_missing_host_path_leaves_nothing(env):
    d, image, work, base = env
    h = host_tree(work, "missing")
    with d.client(timeout=120) as c:
        pod_id, sb_cfg = run_pod(c, "missing", work)
        share = share_of(base, pod_id)
        cfg = container_config("x", image, ["true"])
        cfg.mounts.add(container_path="/vol", host_path=str(h["vol"]))  # exists; must not stay bound
        cfg.mounts.add(container_path="/data", host_path=str(work / "does-not-exist"))
        with pytest.raises(CRIError) as exc:
            create(c, pod_id, sb_cfg, cfg)
        assert exc.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert exc.value.details == f"mount /data: host path {work / 'does-not-exist'} does not exist"
        assert list(share.iterdir()) == [] and mount_lines(share) == []
        listed = c.call(c.runtime.ListContainers, pb.ListContainersRequest()).containers
        assert all(x.pod_sandbox_id != pod_id for x in listed)
        # Bidirectional propagation is refused before anything is bound either
        cfg = container_config("y", image, ["true"])
        cfg.mounts.add(container_path="/vol", host_path=str(h["vol"]), propagation=pb.PROPAGATION_BIDIRECTIONAL)
        with pytest.raises(CRIError) as exc:
            create(c, pod_id, sb_cfg, cfg)
        assert exc.value.code == grpc.StatusCode.INVALID_ARGUMENT and "BIDIRECTIONAL" in exc.value.details
        assert list(share.iterdir()) == [] and mount_lines(share) == []
        c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        assert not share.exists()


def test_host_to_container_propagation(env):
    """A HostToContainer mount of a shared host mount: what the node mounts under it later shows
    in the container (through the slave bind in the share); a private one does not."""
    d, image, work, base = env
    h = host_tree(work, "propagation")
    shared, private = h["vol"], h["ro"]
    subprocess.run(["mount", "--bind", str(shared), str(shared)], check=True)
    subprocess.run(["mount", "--make-shared", str(shared)], check=True)
    (shared / "later").mkdir()
    (private / "later").mkdir()
    try:
        with d.client(timeout=120) as c:
            pod_id, sb_cfg = run_pod(c, "propagation", work)
            cfg = container_config("p", image, ["sh", "-c", "sleep 600"])
            cfg.mounts.add(container_path="/shared", host_path=str(shared),
                           propagation=pb.PROPAGATION_HOST_TO_CONTAINER)
            cfg.mounts.add(container_path="/private", host_path=str(private))
            cid = create(c, pod_id, sb_cfg, cfg)
            c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
            assert wait_state(c, cid, pb.CONTAINER_RUNNING).state == pb.CONTAINER_RUNNING
            for d_ in (shared, private):
                subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(d_ / "later")], check=True)
                (d_ / "later" / "f").write_text("mounted later\n")
            assert out(c, cid, "cat /shared/later/f") == "mounted later\n"
            assert sh(c, cid, "cat /private/later/f").exit_code != 0
            c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
            assert not share_of(base, pod_id).exists() and mount_lines(share_of(base, pod_id)) == []
    finally:
        for target in (shared / "later", private / "later", shared):
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


def test_daemon_restart_keeps_and_cleans_binds(env):
    d, image, work, base = env
    h = host_tree(work, "restart")
    with d.client(timeout=120) as c:
        pod_id, sb_cfg = run_pod(c, "restart", work)
        share = share_of(base, pod_id)
        cfg = container_config("keep", image, ["sh", "-c", "sleep 600"])
        cfg.mounts.add(container_path="/vol", host_path=str(h["vol"]))
        cid = create(c, pod_id, sb_cfg, cfg)
        c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
        assert wait_state(c, cid, pb.CONTAINER_RUNNING).state == pb.CONTAINER_RUNNING
    # a bind left by a container that has no record (as after a crash in CreateContainer)
    stray = share / f"{'e' * 64}-0"
    stray.mkdir()
    in_volume_ns(share, "mount", "--bind", str(h["ro"]), str(stray))
    dfx.stop(d, signal.SIGKILL)
    d2 = dfx.start(base, d.config)
    with d2.client(timeout=120) as c:
        assert not stray.exists() and not [line for line in mount_lines(share) if "e" * 64 in line]
        assert [e.name for e in share.iterdir()] == [f"{cid}-0"]
        (h["vol"] / "after").write_text("after restart\n")
        assert out(c, cid, "cat /vol/after") == "after restart\n"
        # a new container after the restart: MountShare again is harmless
        cfg2 = container_config("new", image, ["sh", "-c", "cat /v/after"])
        cfg2.mounts.add(container_path="/v", host_path=str(h["vol"]), readonly=True)
        cid2 = create(c, pod_id, sb_cfg, cfg2)
        c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid2))
        assert wait_state(c, cid2, pb.CONTAINER_EXITED).exit_code == 0
        c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        assert not share.exists() and mount_lines(share) == []
        assert (h["vol"] / "after").read_text() == "after restart\n"
