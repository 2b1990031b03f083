"""Our RuntimeDefault seccomp profile and profile conversion."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from frakpy.container import seccomp
from frakpy.container.spec import DEFAULT_CAPABILITIES
from frakpy.errors import InvalidArgument

UNISTD_64 = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
KNOWN_OPS = {"SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
             "SCMP_CMP_MASKED_EQ"}


def x86_64_syscalls() -> set[str]:
    if not UNISTD_64.exists():
        pytest.skip(f"{UNISTD_64} not installed (linux-libc-dev)")
    return set(re.findall(r"#define __NR_(\w+)\s+\d+", UNISTD_64.read_text()))


def test_every_name_is_a_real_x86_64_syscall():
    known = x86_64_syscalls()
    profile = seccomp.default_profile([])
    used = {n for rule in profile["syscalls"] for n in rule["names"]}
    assert used == seccomp.denied_syscall_names()
    assert not used - known, f"not x86_64 syscalls: {sorted(used - known)}"


def test_profile_shape():
    profile = seccomp.default_profile(DEFAULT_CAPABILITIES)
    assert profile["defaultAction"] == "SCMP_ACT_ALLOW"
    assert profile["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    for rule in profile["syscalls"]:
        assert rule["action"] == "SCMP_ACT_ERRNO"
        assert rule["errnoRet"] in (seccomp.EPERM, seccomp.ENOSYS)
        for arg in rule.get("args", []):
            assert arg["op"] in KNOWN_OPS and 0 <= arg["index"] < 6
            assert set(arg) <= {"index", "value", "valueTwo", "op"}


def _denied(profile, name, arg0):
    """Evaluate the profile for one call the way libseccomp would (only arg0 rules exist)."""
    for rule in profile["syscalls"]:
        if name not in rule["names"]:
            continue
        args = rule.get("args", [])
        if all((arg0 & a["value"]) == a["valueTwo"] for a in args):
            return True
    return False


@pytest.mark.parametrize(
    ("name", "arg0", "denied"),
    [
        ("clone", 0x11, False),  # fork(): SIGCHLD only
        ("clone", 0x003D0F00, False),  # pthread_create flags
        ("clone", seccomp.NAMESPACE_FLAGS["CLONE_NEWUSER"] | 0x11, True),
        ("unshare", 0x00000400, False),  # CLONE_FILES
        ("unshare", seccomp.NAMESPACE_FLAGS["CLONE_NEWNET"], True),
        ("personality", 0xFFFFFFFF, False),  # query
        ("personality", 0x0, False),
        ("personality", 0x8, False),  # PER_LINUX32
        ("personality", 0x0040000, True),  # ADDR_NO_RANDOMIZE
        ("personality", 0x0400000, True),  # READ_IMPLIES_EXEC
        ("mount", 0, True),
        ("ptrace", 0, False),
        ("clone3", 0, True),
    ],
)
def test_conditional_rules(name, arg0, denied):
    assert _denied(seccomp.default_profile(DEFAULT_CAPABILITIES), name, arg0) is denied


@pytest.mark.parametrize(
    ("cap", "syscall"),
    [("CAP_SYS_ADMIN", "mount"), ("CAP_SYS_ADMIN", "clone3"), ("CAP_SYS_MODULE", "init_module"),
     ("CAP_SYS_BOOT", "reboot"), ("CAP_SYS_TIME", "clock_settime"), ("CAP_BPF", "bpf"),
     ("CAP_PERFMON", "perf_event_open"), ("CAP_SYS_PTRACE", "userfaultfd")],
)
def test_capabilities_lift_rules(cap, syscall):
    assert _denied(seccomp.default_profile(DEFAULT_CAPABILITIES), syscall, 0)
    assert not _denied(seccomp.default_profile([*DEFAULT_CAPABILITIES, cap]), syscall, 0)


def test_keyrings_stay_denied_with_every_capability():
    from frakpy.container.spec import ALL_CAPABILITIES

    assert _denied(seccomp.default_profile(ALL_CAPABILITIES), "keyctl", 0)


def test_convert_oci_profile_passes_through():
    raw = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1, "architectures": ["SCMP_ARCH_X86_64"],
           "flags": ["SECCOMP_FILTER_FLAG_LOG"],
           "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "errnoRet": 0}]}
    assert seccomp.convert_profile(raw, []) == raw


@pytest.mark.parametrize(
    ("raw", "match"),
    [({"syscalls": []}, "defaultAction"),
     ({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/x.sock"}, "listenerPath"),
     ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ERRNO"}]}, "names")],
)
def test_convert_rejects(raw, match):
    with pytest.raises(InvalidArgument, match=match):
        seccomp.convert_profile(raw, [])


def test_localhost_not_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(InvalidArgument, match="cannot read"):
        seccomp.load_localhost(str(bad), [])
