"""Namespaces, resources, mounts, annotations and the overall shape of the spec."""

from __future__ import annotations

import json
import re

import pytest

from frakpy.agent.protocol import guestpaths as gp
from frakpy.container.spec import block_device_serial, plan_block_devices
from frakpy.errors import InvalidArgument
from tests.unit.container.cri import CID, SID, security, spec_for


def test_shape():
    spec = spec_for()
    assert spec["ociVersion"] == "1.0.2"
    assert spec["root"] == {"path": gp.container_rootfs(CID), "readonly": False}
    assert spec["linux"]["cgroupsPath"] == f"/frakpy/{SID[:12]}/{CID}"
    assert "hostname" not in spec  # no UTS namespace: the VM hostname is the pod's
    json.dumps(spec)  # plain JSON all the way down


def ns_of(spec):
    return {n["type"]: n.get("path") for n in spec["linux"]["namespaces"]}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, {"mount": None, "cgroup": None, "ipc": "@sandbox", "pid": "@sandbox"}),
        ({"pid": "CONTAINER"}, {"mount": None, "cgroup": None, "ipc": "@sandbox", "pid": None}),
        ({"ipc": "CONTAINER", "pid": "CONTAINER"}, {"mount": None, "cgroup": None, "ipc": None, "pid": None}),
        ({"pid": "TARGET", "target_id": "other"},
         {"mount": None, "cgroup": None, "ipc": "@sandbox", "pid": "@container:other"}),
        ({"ipc": "NODE", "pid": "NODE"}, {"mount": None, "cgroup": None}),
        ({"network": "NODE", "pid": "CONTAINER"}, {"mount": None, "cgroup": None, "ipc": "@sandbox", "pid": None}),
    ],
)
def test_namespace_modes(options, expected):
    spec = spec_for(security(namespace_options=options))
    assert ns_of(spec) == expected
    for path in ns_of(spec).values():
        if path:
            assert gp.parse_placeholder(path) is not None


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"pid": "TARGET"}, "target_id"),
        ({"ipc": "TARGET", "target_id": "x"}, "namespace_options.ipc"),
        ({"userns_options": {"mode": "POD", "uids": [{"host_id": 1, "container_id": 0, "length": 1}]}},
         "user namespaces"),
    ],
)
def test_namespace_errors(options, match):
    with pytest.raises(InvalidArgument, match=match):
        spec_for(security(namespace_options=options))


def test_placeholder_parsing():
    assert gp.parse_placeholder("/proc/1/ns/pid") is None
    assert gp.parse_placeholder("@sandbox") == ("sandbox", "")
    assert gp.parse_placeholder("@container:abc") == ("container", "abc")
    with pytest.raises(ValueError, match="placeholder"):
        gp.parse_placeholder("@bogus")


def test_resources_mapping():
    resources = {
        "cpu_shares": 512, "cpu_quota": 50000, "cpu_period": 100000, "cpuset_cpus": "0-1",
        "cpuset_mems": "0", "memory_limit_in_bytes": 268435456, "oom_score_adj": 1000,
        "unified": {"memory.high": "200000000"},
        "hugepage_limits": [{"page_size": "2MB", "limit": 1}],
    }
    spec = spec_for({"linux": {"resources": resources}}, pids_limit=512)
    out = spec["linux"]["resources"]
    assert out["cpu"] == {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"}
    assert out["memory"] == {"limit": 268435456, "swap": 268435456}
    assert out["pids"] == {"limit": 512}
    assert out["unified"] == {"memory.high": "200000000"}
    assert "hugepageLimits" not in out
    assert any("hugepage" in n for n in json.loads(spec["annotations"][gp.ANN_NOTES]))


def test_resources_empty_and_explicit_swap():
    out = spec_for()["linux"]["resources"]
    assert set(out) == {"devices"}
    out = spec_for({"linux": {"resources": {"memory_limit_in_bytes": 100, "memory_swap_limit_in_bytes": 300}}})
    assert out["linux"]["resources"]["memory"] == {"limit": 100, "swap": 300}


def test_block_devices_become_an_agent_annotation(tmp_path, block_device):
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * 4096)
    blk = block_device
    spec = spec_for({"devices": [{"container_path": "/dev/xvda", "host_path": blk, "permissions": "rwm"},
                                 {"container_path": "/dev/xvdb/", "host_path": str(disk), "permissions": "mr"}]})
    assert json.loads(spec["annotations"][gp.ANN_BLOCK_DEVICES]) == [
        {"serial": block_device_serial(blk), "path": "/dev/xvda", "access": "rwm"},
        {"serial": block_device_serial(str(disk)), "path": "/dev/xvdb", "access": "rm"},
    ]
    assert gp.ANN_BLOCK_DEVICES in gp.CONSUMED_ANNOTATIONS
    assert "devices" not in spec["linux"]  # the agent adds the guest node (major/minor are the guest's)
    plan = plan_block_devices(CID, [{"container_path": "/dev/xvda", "host_path": blk, "permissions": "rwm"},
                                    {"container_path": "/dev/xvdb", "host_path": str(disk), "permissions": "r"}])
    assert [(b.driver, b.readonly) for b in plan] == [("host_device", False), ("file", True)]
    assert all(len(b.serial) <= 20 and b.serial.startswith("blk-") for b in plan)
    # one serial per node device: the same device under two paths (or in two containers) is one disk
    link = tmp_path / "disk-link.img"
    link.symlink_to(disk)
    assert block_device_serial(str(link)) == block_device_serial(str(disk)) != block_device_serial(blk)


@pytest.mark.parametrize(
    ("device", "match"),
    [
        ({"container_path": "/dev/xvda", "host_path": "/nonexistent/disk", "permissions": "rwm"},
         "/dev/xvda: host path /nonexistent/disk is not usable"),
        ({"container_path": "/dev/null2", "host_path": "/dev/null", "permissions": "rwm"},
         "character device; node character devices cannot enter a pod VM"),
        ({"container_path": "/dev/xvda", "host_path": "/", "permissions": "rwm"}, "neither a block device"),
        ({"container_path": "/dev/xvda", "host_path": "/dev/null", "permissions": "rwx"}, "subset of 'rwm'"),
        ({"container_path": "xvda", "host_path": "/dev/null", "permissions": "r"}, "absolute"),
        ({"container_path": "/dev/xvda", "host_path": "dev/sda", "permissions": "r"}, "absolute"),
    ],
)
def test_unusable_devices_are_refused(device, match):
    with pytest.raises(InvalidArgument, match=re.escape(match)):
        spec_for({"devices": [device]})


def test_cdi_devices_are_refused():
    with pytest.raises(InvalidArgument, match="CDI_devices"):
        spec_for({"CDI_devices": [{"name": "vendor.com/gpu=0"}]})


# --- mounts ---------------------------------------------------------------------------------

DEFAULT_ORDER = ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup",
                 "/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/dev/termination-log"]


def by_dest(spec):
    return {m["destination"]: m for m in spec["mounts"]}


def test_default_mounts():
    spec = spec_for(security(namespace_options={"ipc": "CONTAINER"}))
    assert [m["destination"] for m in spec["mounts"]] == DEFAULT_ORDER
    mounts = by_dest(spec)
    assert mounts["/dev/shm"]["type"] == "tmpfs" and "size=67108864" in mounts["/dev/shm"]["options"]
    assert mounts["/etc/hosts"]["source"] == f"{gp.SANDBOX_DIR}/hosts"
    assert mounts["/etc/resolv.conf"]["options"] == ["rbind", "rw", "rprivate"]
    assert mounts["/dev/termination-log"]["source"] == gp.termination_log(CID)
    assert mounts["/sys/fs/cgroup"]["type"] == "cgroup"


def test_shm_shared_with_pod_ipc():
    shm = by_dest(spec_for())["/dev/shm"]
    assert shm["type"] == "bind" and shm["source"] == gp.sandbox_shm()


def test_termination_path_from_kubelet_annotation():
    spec = spec_for({"annotations": {"io.kubernetes.container.terminationMessagePath": "/tmp/term"}})
    assert by_dest(spec)["/tmp/term"]["source"] == gp.termination_log(CID)
    assert "/dev/termination-log" not in by_dest(spec)


def test_cri_mounts_resolved_ordered_and_overriding():
    mounts = [
        {"container_path": "/data/sub", "host_path": "/var/lib/kubelet/b"},
        {"container_path": "/data", "host_path": "/var/lib/kubelet/a", "readonly": True},
        {"container_path": "/etc/hosts", "host_path": "/var/lib/kubelet/hosts"},
        {"container_path": "/dev/termination-log", "host_path": "/var/lib/kubelet/term",
         "selinux_relabel": True},
    ]
    spec = spec_for({"mounts": mounts}, resolve_mount=lambda h: "/run/frakpy/shares" + h)
    dests = [m["destination"] for m in spec["mounts"]]
    assert dests.count("/etc/hosts") == 1 and dests.count("/dev/termination-log") == 1
    assert dests[-4:] == ["/data", "/data/sub", "/etc/hosts", "/dev/termination-log"]  # parents first
    m = by_dest(spec)
    assert m["/etc/hosts"]["source"] == "/run/frakpy/shares/var/lib/kubelet/hosts"
    assert m["/data"]["options"] == ["rbind", "ro", "rprivate"]
    assert m["/data/sub"]["options"] == ["rbind", "rw", "rprivate"]
    assert any("selinux_relabel" in n for n in json.loads(spec["annotations"][gp.ANN_NOTES]))


def test_bidirectional_propagation_refused_unless_emulated():
    mounts = [{"container_path": "/m", "host_path": "/h", "propagation": "PROPAGATION_BIDIRECTIONAL"}]
    with pytest.raises(InvalidArgument, match="propagation.*VM"):
        spec_for({"mounts": mounts})
    spec = spec_for({"mounts": mounts}, allow_propagation_emulation=True)
    assert by_dest(spec)["/m"]["options"] == ["rbind", "rw", "rprivate"]
    assert any("Bidirectional" in n for n in json.loads(spec["annotations"][gp.ANN_NOTES]))


@pytest.mark.parametrize("propagation", [None, "PROPAGATION_PRIVATE", "PROPAGATION_HOST_TO_CONTAINER"])
def test_private_and_host_to_container_are_rprivate_in_the_guest(propagation):
    mount = {"container_path": "/m", "host_path": "/h", "readonly": True}
    if propagation:
        mount["propagation"] = propagation
    spec = spec_for({"mounts": [mount]}, resolve_mount=lambda h: "/run/frakpy/shares/c-0")
    assert by_dest(spec)["/m"] == {"destination": "/m", "type": "bind", "source": "/run/frakpy/shares/c-0",
                                   "options": ["rbind", "ro", "rprivate"]}


def test_recursive_read_only_is_ro_and_needs_readonly():
    mount = {"container_path": "/m", "host_path": "/h", "readonly": True, "recursive_read_only": True}
    assert by_dest(spec_for({"mounts": [mount]}))["/m"]["options"] == ["rbind", "ro", "rprivate"]


@pytest.mark.parametrize(
    ("mount", "match"),
    [
        ({"container_path": "rel", "host_path": "/h"}, "absolute"),
        ({"container_path": "/m"}, "host_path"),
        ({"container_path": "/m", "host_path": "/h", "recursive_read_only": True}, "recursive_read_only needs"),
        ({"container_path": "/m", "image": {"image": "busybox"}}, "image volumes"),
    ],
)
def test_bad_mounts(mount, match):
    with pytest.raises(InvalidArgument, match=match):
        spec_for({"mounts": [mount]})


# --- annotations ----------------------------------------------------------------------------


def test_annotations():
    spec = spec_for({"annotations": {"team": "a", "io.frakpy.user": '{"user": "0"}',
                                     "io.kubernetes.cri.sandbox-id": "spoofed"}},
                    image=None)
    ann = spec["annotations"]
    assert ann["team"] == "a"
    assert ann["io.kubernetes.cri.container-type"] == "container"
    assert ann["io.kubernetes.cri.container-name"] == "app"
    assert ann["io.kubernetes.cri.sandbox-id"] == SID
    assert ann["io.kubernetes.cri.sandbox-namespace"] == "default"
    assert ann["io.kubernetes.cri.image-name"] == "docker.io/library/busybox:1.36"
    # A pod cannot talk to the agent through annotations.
    assert json.loads(ann[gp.ANN_USER])["user"] == ""
    assert any("io.frakpy.user" in n for n in json.loads(ann[gp.ANN_NOTES]))
