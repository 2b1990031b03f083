"""CRI mounts: planning the share entries, the host-side binds of the 9p share, the QEMU device."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from frakpy.container.manager import _host_termination_file, _plan_volumes
from frakpy.container.model import Container, ContainerMetadata
from frakpy.errors import InvalidArgument
from frakpy.sandbox import share
from frakpy.vm.qemu import render_argv
from frakpy.vm.spec import VMSpec

CID = "c" * 64


def test_missing_host_path_is_invalid_argument(tmp_path):
    with pytest.raises(InvalidArgument, match=r"mount /data: host path .*/nope does not exist"):
        _plan_volumes(CID, [{"container_path": "/data", "host_path": str(tmp_path / "nope")}])


def test_relative_host_path_is_invalid_argument():
    with pytest.raises(InvalidArgument, match="host path 'data' must be absolute"):
        _plan_volumes(CID, [{"container_path": "/data", "host_path": "data"}])


def test_dangling_symlink_does_not_exist(tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    with pytest.raises(InvalidArgument, match="does not exist"):
        _plan_volumes(CID, [{"container_path": "/l", "host_path": str(tmp_path / "link")}])


def test_one_entry_per_host_path(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.write_text("x")
    plan = _plan_volumes(CID, [
        {"container_path": "/a1", "host_path": str(a), "readonly": True},
        {"container_path": "/a2", "host_path": str(a), "propagation": "PROPAGATION_HOST_TO_CONTAINER"},
        {"container_path": "/b", "host_path": str(b), "readonly": True, "selinux_relabel": True},
        {"container_path": "/empty"},  # left to build_spec to refuse
    ])
    assert list(plan) == [str(a), str(b)]
    assert plan[str(a)].name == f"{CID}-0" and plan[str(b)].name == f"{CID}-1"
    assert not plan[str(a)].readonly and plan[str(a)].slave  # rw if any mount of it is rw
    assert plan[str(b)].readonly and not plan[str(b)].slave
    assert share.container_of(plan[str(b)].name) == CID


def _container(config):
    return Container(id=CID, sandbox_id="s" * 64, metadata=ContainerMetadata("x"), image_ref="i", image_id="sha256:1",
                     config=config)


def test_termination_file_on_the_host_only_when_mounted():
    assert _host_termination_file(_container({})) == ""
    mounts = [{"container_path": "/dev/termination-log", "host_path": "/var/lib/kubelet/t"}]
    assert _host_termination_file(_container({"mounts": mounts})) == "/var/lib/kubelet/t"
    custom = {"mounts": [{"container_path": "/tmp/msg/", "host_path": "/h/msg"}, *mounts],
              "annotations": {"io.kubernetes.container.terminationMessagePath": "/tmp/msg"}}
    assert _host_termination_file(_container(custom)) == "/h/msg"


def test_argv_has_the_9p_device_only_with_a_share(tmp_path):
    spec = VMSpec(vm_id="v" * 64, run_dir=tmp_path, kernel=Path("/k"), rootfs=Path("/r"), qmp_fd=3, agent_fd=4)
    argv = render_argv(spec)
    assert "-fsdev" not in argv and not any("virtio-9p" in a for a in argv)
    spec.share_dir = tmp_path / "a,b"
    argv = render_argv(spec)
    i = argv.index("-fsdev")
    assert argv[i + 1] == f"local,id=share,path={tmp_path}/a,,b,security_model=none,multidevs=remap"
    assert argv[i + 2:i + 4] == ["-device", "virtio-9p-device,fsdev=share,mount_tag=frakpy-share"]
    assert argv[i - 1] == "virtio-scsi-device,id=scsi0"  # right after the SCSI controller


# --- real bind mounts in the volume namespace (root only) ---------------------------------------

def _can_mount(tmp: Path) -> bool:
    if os.geteuid() != 0:
        return False
    d = tmp / "probe"
    d.mkdir()
    ok = subprocess.run(["mount", "--bind", str(d), str(d)], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(d)], check=True)
    return ok


@pytest.fixture
def ns(tmp_path):
    if not _can_mount(tmp_path):
        pytest.skip("needs root and mount(2)")
    v = share.VolumeNamespace(tmp_path / "run")
    yield v
    v.destroy()


def _host_mounts(under: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(under))]


def test_binds_live_only_in_the_volume_namespace(tmp_path, ns):
    vol, f = tmp_path / "vol", tmp_path / "hosts"
    vol.mkdir()
    (vol / "keep").write_text("data")
    f.write_text("127.0.0.1 x\n")
    sh = share.create(share.share_dir(ns.run_dir, "sb1"))
    d = ns.bind(sh, f"{CID}-0", str(vol))
    fi = ns.bind(sh, f"{CID}-1", str(f), readonly=True)
    assert ns.mounted(sh) == [str(d), str(fi)]
    # the node sees empty mount points only; the namespace (and QEMU's fd) sees the host paths
    assert _host_mounts(sh) == [] and os.listdir(d) == [] and fi.read_text() == ""
    assert ns.run(lambda: ((d / "keep").read_text(), fi.read_text())) == ("data", "127.0.0.1 x\n")
    root_fd = ns.open_root(sh)
    try:
        entry = os.open(f"{CID}-0", os.O_RDONLY | os.O_DIRECTORY, dir_fd=root_fd)
        assert os.listdir(entry) == ["keep"]
        os.close(entry)
    finally:
        os.close(root_fd)
    ns.run(lambda: (d / "new").write_text("w"))  # rw: reaches the host dir
    assert (vol / "new").read_text() == "w"
    with pytest.raises(OSError):
        ns.run(lambda: fi.write_text("nope"))  # read-only on the host side of the share too
    # a daemon restart finds the same namespace and binds
    again = share.VolumeNamespace(ns.run_dir)
    assert again.mounted(sh) == [str(d), str(fi)]
    # rm -rf of the run dir cannot reach volume data (the entries are plain in the node's view)
    import shutil

    shutil.rmtree(sh)
    assert (vol / "keep").read_text() == "data" and f.read_text() == "127.0.0.1 x\n"
    sh.mkdir()


def test_unbind_container_and_destroy(tmp_path, ns):
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "keep").write_text("data")
    sh = share.create(share.share_dir(ns.run_dir, "sb1"))
    ns.bind(sh, f"{CID}-0", str(vol))
    ns.bind(sh, f"{'d' * 64}-0", str(vol))
    ns.unbind_container(sh, "other")
    assert share.entries(sh) == [f"{CID}-0", f"{'d' * 64}-0"]
    ns.unbind_container(sh, CID)
    assert share.entries(sh) == [f"{'d' * 64}-0"] and ns.mounted(sh) == [str(sh / f"{'d' * 64}-0")]
    ns.destroy_share(sh)
    assert not sh.exists() and ns.mounted(sh) == []
    assert (vol / "keep").read_text() == "data"  # sources untouched
    ns.destroy_share(sh)  # idempotent


def test_readonly_is_recursive(tmp_path, ns):
    vol = tmp_path / "vol"
    (vol / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(vol / "sub")], check=True)
    try:
        sh = share.create(share.share_dir(ns.run_dir, "sb1"))
        d = ns.bind(sh, f"{CID}-0", str(vol), readonly=True)
        with pytest.raises(OSError):
            ns.run(lambda: (d / "sub" / "x").write_text("no"))  # the submount is read-only too
        (vol / "sub" / "y").write_text("host")  # the node's own view stays writable
        assert ns.run(lambda: (d / "sub" / "y").read_text()) == "host"
        ns.destroy_share(sh)
    finally:
        subprocess.run(["umount", "-l", str(vol / "sub")], check=False)


def test_failed_bind_leaves_nothing(tmp_path, ns):
    sh = share.create(share.share_dir(ns.run_dir, "sb1"))
    with pytest.raises(FileNotFoundError):
        ns.bind(sh, f"{CID}-0", str(tmp_path / "missing"))
    assert share.entries(sh) == [] and ns.mounted(sh) == []
