"""Capabilities, privileged, seccomp, masked paths, sysctls, LSM notes."""

from __future__ import annotations

import json

import pytest

from frakpy.agent.protocol import guestpaths as gp
from frakpy.container.spec import (
    ALL_CAPABILITIES,
    DEFAULT_CAPABILITIES,
    DEFAULT_MASKED_PATHS,
    DEFAULT_READONLY_PATHS,
)
from frakpy.errors import InvalidArgument
from tests.unit.container.cri import security, spec_for

PRIVILEGED_POD = {"linux": {"security_context": {"privileged": True}}}


def caps_of(spec):
    return spec["process"]["capabilities"]


@pytest.mark.parametrize(
    ("add", "drop", "expected"),
    [
        ([], [], set(DEFAULT_CAPABILITIES)),
        (["NET_ADMIN"], [], set(DEFAULT_CAPABILITIES) | {"CAP_NET_ADMIN"}),
        (["cap_sys_time"], ["kill", "CAP_NET_RAW"], set(DEFAULT_CAPABILITIES) - {"CAP_KILL", "CAP_NET_RAW"}
         | {"CAP_SYS_TIME"}),
        ([], ["ALL"], set()),
        (["NET_BIND_SERVICE"], ["ALL"], {"CAP_NET_BIND_SERVICE"}),
        (["ALL"], [], set(ALL_CAPABILITIES)),
        (["all"], ["SYS_ADMIN"], set(ALL_CAPABILITIES) - {"CAP_SYS_ADMIN"}),
        (["NET_ADMIN"], ["NET_ADMIN"], set(DEFAULT_CAPABILITIES)),
    ],
)
def test_capabilities_add_drop(add, drop, expected):
    spec = spec_for(security(capabilities={"add_capabilities": add, "drop_capabilities": drop}))
    caps = caps_of(spec)
    assert set(caps["bounding"]) == expected
    assert caps["effective"] == caps["permitted"] == caps["bounding"]
    assert caps["inheritable"] == [] and caps["ambient"] == []


def test_default_capabilities_are_the_docker_14():
    assert len(DEFAULT_CAPABILITIES) == 14
    assert len(caps_of(spec_for())["bounding"]) == 14


def test_unknown_capability_is_rejected():
    with pytest.raises(InvalidArgument, match="add_capabilities.*NOPE"):
        spec_for(security(capabilities={"add_capabilities": ["NOPE"]}))


def test_ambient_capabilities_are_inheritable_too():
    spec = spec_for(security(capabilities={"add_ambient_capabilities": ["NET_ADMIN"]}))
    caps = caps_of(spec)
    assert caps["ambient"] == caps["inheritable"] == ["CAP_NET_ADMIN"]
    assert "CAP_NET_ADMIN" in caps["bounding"]


def test_privileged():
    spec = spec_for(security(privileged=True), sandbox=PRIVILEGED_POD)
    assert caps_of(spec)["bounding"] == list(ALL_CAPABILITIES)
    assert "seccomp" not in spec["linux"]
    assert "maskedPaths" not in spec["linux"] and "readonlyPaths" not in spec["linux"]
    mounts = {m["destination"]: m for m in spec["mounts"]}
    assert "ro" not in mounts["/sys"]["options"]
    assert "ro" not in mounts["/sys/fs/cgroup"]["options"]
    assert spec["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert spec["annotations"][gp.ANN_HOST_DEVICES] == "all"


def test_privileged_container_needs_privileged_sandbox():
    with pytest.raises(InvalidArgument, match="privileged sandbox"):
        spec_for(security(privileged=True))


def test_unprivileged_defaults():
    spec = spec_for()
    mounts = {m["destination"]: m for m in spec["mounts"]}
    assert "ro" in mounts["/sys"]["options"] and "ro" in mounts["/sys/fs/cgroup"]["options"]
    devices = spec["linux"]["resources"]["devices"]
    assert devices[0] == {"allow": False, "access": "rwm"}
    assert {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"} in devices
    assert spec["root"]["readonly"] is False
    assert spec["process"]["noNewPrivileges"] is False
    assert gp.ANN_HOST_DEVICES not in spec["annotations"]


def test_readonly_rootfs_and_no_new_privs():
    spec = spec_for(security(readonly_rootfs=True, no_new_privs=True))
    assert spec["root"]["readonly"] is True
    assert spec["process"]["noNewPrivileges"] is True
    mounts = {m["destination"]: m for m in spec["mounts"]}
    assert "ro" in mounts["/etc/hosts"]["options"]


# --- seccomp --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sc", "expected"),
    [
        ({}, None),
        ({"seccomp": {}}, "default"),  # RuntimeDefault is the enum's zero value
        ({"seccomp": {"profile_type": "RuntimeDefault"}}, "default"),
        ({"seccomp": {"profile_type": "Unconfined"}}, None),
        ({"seccomp_profile_path": "runtime/default"}, "default"),
        ({"seccomp_profile_path": "docker/default"}, "default"),
        ({"seccomp_profile_path": "unconfined"}, None),
        ({"seccomp": {"profile_type": "Unconfined"}, "seccomp_profile_path": "runtime/default"}, None),
    ],
)
def test_seccomp_choices(sc, expected):
    spec = spec_for(security(**sc))
    if expected is None:
        assert "seccomp" not in spec["linux"]
    else:
        assert spec["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ALLOW"


def test_seccomp_default_follows_capabilities():
    def denied(spec):
        return {n for r in spec["linux"]["seccomp"]["syscalls"] if "args" not in r for n in r["names"]}

    plain = spec_for(security(seccomp={}))
    admin = spec_for(security(seccomp={}, capabilities={"add_capabilities": ["SYS_ADMIN"]}))
    assert "mount" in denied(plain) and "mount" not in denied(admin)
    assert "clone3" in denied(plain) and "clone3" not in denied(admin)
    assert "keyctl" in denied(admin)


PROFILE = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
                {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
    "syscalls": [
        {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
        {"name": "mount", "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["arm_only"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm64"]}},
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_ADMIN"]},
         "args": [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}]},
    ],
}


@pytest.mark.parametrize("how", ["field", "deprecated"])
def test_seccomp_localhost(tmp_path, how):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(PROFILE))
    sc = ({"seccomp": {"profile_type": "Localhost", "localhost_ref": str(path)}} if how == "field"
          else {"seccomp_profile_path": f"localhost/{path}"})
    section = spec_for(security(**sc))["linux"]["seccomp"]
    assert section["defaultAction"] == "SCMP_ACT_ERRNO"
    assert section["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    assert [r["names"] for r in section["syscalls"]] == [["read", "write"], ["clone"]]
    assert section["syscalls"][1]["args"] == [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}]


def test_seccomp_localhost_missing_names_the_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(InvalidArgument, match=f"seccomp.localhost_ref.*{missing}"):
        spec_for(security(seccomp={"profile_type": "Localhost", "localhost_ref": str(missing)}))
    with pytest.raises(InvalidArgument, match="seccomp_profile_path"):
        spec_for(security(seccomp_profile_path=f"localhost/{missing}"))


@pytest.mark.parametrize("path", ["localhost/relative.json", "bogus"])
def test_seccomp_bad_paths(path):
    with pytest.raises(InvalidArgument, match="seccomp_profile_path"):
        spec_for(security(seccomp_profile_path=path))


# --- masked paths, sysctls, LSM -----------------------------------------------------------------


def test_masked_and_readonly_defaults():
    spec = spec_for()
    assert spec["linux"]["maskedPaths"] == list(DEFAULT_MASKED_PATHS)
    assert spec["linux"]["readonlyPaths"] == list(DEFAULT_READONLY_PATHS)


def test_masked_and_readonly_overrides():
    spec = spec_for(security(masked_paths=["/proc/x"], readonly_paths=["/proc/y"]))
    assert spec["linux"]["maskedPaths"] == ["/proc/x"]
    assert spec["linux"]["readonlyPaths"] == ["/proc/y"]


def test_unmasked_when_keys_present_but_empty():
    from frakpy.container.spec import ImageConfig, build_spec

    container = {"metadata": {"name": "a"}, "command": ["sh"],
                 "linux": {"security_context": {"masked_paths": [], "readonly_paths": []}}}
    spec = build_spec(container, {}, ImageConfig(), container_id="c", sandbox_id="s",
                      resolve_mount=lambda p: p)
    assert "maskedPaths" not in spec["linux"] and "readonlyPaths" not in spec["linux"]


def test_sysctls_split_between_spec_and_vm():
    sysctls = {"kernel.shmmax": "1000", "fs.mqueue.msg_max": "20", "net.core.somaxconn": "1024",
               "vm.max_map_count": "262144"}
    spec = spec_for(sandbox={"linux": {"sysctls": sysctls}})
    assert spec["linux"]["sysctl"] == {"kernel.shmmax": "1000", "fs.mqueue.msg_max": "20"}
    assert json.loads(spec["annotations"][gp.ANN_VM_SYSCTLS]) == {
        "net.core.somaxconn": "1024", "vm.max_map_count": "262144"}


def test_ipc_sysctls_go_to_vm_when_sharing_the_vm_ipc_namespace():
    spec = spec_for(security(namespace_options={"ipc": "NODE"}),
                    sandbox={"linux": {"sysctls": {"kernel.shmmax": "1"}}})
    assert "sysctl" not in spec["linux"]
    assert json.loads(spec["annotations"][gp.ANN_VM_SYSCTLS]) == {"kernel.shmmax": "1"}


def test_lsm_settings_are_noted_not_enforced():
    spec = spec_for(security(apparmor={"profile_type": "RuntimeDefault"},
                             selinux_options={"type": "spc_t"}))
    notes = json.loads(spec["annotations"][gp.ANN_NOTES])
    assert any("apparmor" in n for n in notes) and any("selinux" in n for n in notes)
    assert gp.ANN_NOTES not in spec_for()["annotations"]
