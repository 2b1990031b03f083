"""Seccomp for frakpy containers: our RuntimeDefault profile and Localhost profile loading.

Design choice: a *denylist*, not Docker's allowlist
---------------------------------------------------
Docker's default profile starts from "deny everything" (SCMP_ACT_ERRNO) and allowlists some
350 syscalls. In frakpy every pod runs in its own VM and the VM is the isolation boundary: a
syscall that escapes the container lands in a guest kernel that holds nothing but this pod.
Seccomp here is defence in depth, so we prefer a short, reviewable profile that never breaks a
workload using a new-but-harmless syscall:

* default action SCMP_ACT_ALLOW;
* EPERM for the syscalls that change kernel-global state, load code into the kernel, or are
  favourite exploitation primitives (module loading, kexec, reboot, swap, the mount API,
  namespace creation and joining, bpf, perf, userfaultfd, keyrings, io_uring, clock setting,
  raw port I/O, open_by_handle_at, acct, quotactl, syslog, hostname changes...);
* most groups are lifted when the container holds the capability that legitimately needs
  them (as Docker does with ``includes.caps``), e.g. CAP_SYS_ADMIN re-enables mount;
* clone/unshare are only denied when a namespace flag is set (one rule per flag bit, since a
  single seccomp comparison cannot express "any of these bits"); clone3 gets ENOSYS because
  its flags live in memory seccomp cannot read, and libc falls back to clone on ENOSYS;
* personality is denied for the flags that weaken the address space (MMAP_PAGE_ZERO,
  READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE) but the query value 0xffffffff stays allowed.

Trade-off: a denylist lets through syscalls added to future kernels until we list them, and
it allows ptrace/process_vm_* (safe since Linux 4.8, where seccomp is re-checked after
ptrace changes a syscall; Docker allows them on such kernels too). The guest kernel is ours
and recent, and the blast radius is one VM, so we accept that for compatibility.

The rules apply to the x86_64, i386 and x32 ABIs; libseccomp resolves each name per ABI, so a
32-bit ``int 0x80`` cannot bypass them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from frakpy.errors import InvalidArgument

EPERM = 1
ENOSYS = 38

ARCHES = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]

# (syscalls, capabilities any of which lifts the rule; empty = always denied)
_DENY_GROUPS: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
    (("keyctl", "add_key", "request_key"), ()),
    (("uselib", "_sysctl", "nfsservctl", "create_module", "get_kernel_syms", "query_module"), ()),
    (("io_uring_setup", "io_uring_enter", "io_uring_register"), ()),
    (("init_module", "finit_module", "delete_module"), ("CAP_SYS_MODULE",)),
    (("reboot", "kexec_load", "kexec_file_load"), ("CAP_SYS_BOOT",)),
    (
        (
            "mount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen", "fsconfig",
            "fsmount", "fspick", "mount_setattr", "swapon", "swapoff", "setns", "sethostname",
            "setdomainname", "quotactl", "quotactl_fd", "lookup_dcookie", "fanotify_init",
        ),
        ("CAP_SYS_ADMIN",),
    ),
    (("bpf",), ("CAP_SYS_ADMIN", "CAP_BPF")),
    (("perf_event_open",), ("CAP_SYS_ADMIN", "CAP_PERFMON")),
    (("settimeofday", "clock_settime", "clock_adjtime"), ("CAP_SYS_TIME",)),
    (("iopl", "ioperm"), ("CAP_SYS_RAWIO",)),
    (("open_by_handle_at",), ("CAP_DAC_READ_SEARCH",)),
    (("acct",), ("CAP_SYS_PACCT",)),
    (("syslog",), ("CAP_SYSLOG",)),
    (("userfaultfd",), ("CAP_SYS_PTRACE",)),
    (("vhangup",), ("CAP_SYS_TTY_CONFIG",)),
]

# Namespace creation flags of clone(2)/unshare(2) (linux/sched.h).
NAMESPACE_FLAGS = {
    "CLONE_NEWTIME": 0x00000080,
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}

# personality(2) flags that weaken the process's address space (linux/personality.h).
PERSONALITY_DENIED = {"ADDR_NO_RANDOMIZE": 0x0040000, "MMAP_PAGE_ZERO": 0x0100000, "READ_IMPLIES_EXEC": 0x0400000}
_PERSONALITY_QUERY_BIT = 0x80000000  # set only in the query value 0xffffffff


def default_profile(capabilities: Iterable[str]) -> dict[str, Any]:
    """Our RuntimeDefault profile as an OCI ``linux.seccomp`` section, for these capabilities."""
    caps = set(capabilities)
    syscalls = [
        _deny(list(names), EPERM)
        for names, lifted_by in _DENY_GROUPS
        if not caps.intersection(lifted_by)
    ]
    if "CAP_SYS_ADMIN" not in caps:
        syscalls += _namespace_flag_rules()
        syscalls.append(_deny(["clone3"], ENOSYS))
    syscalls += _personality_rules()
    return {"defaultAction": "SCMP_ACT_ALLOW", "architectures": list(ARCHES), "syscalls": syscalls}


def denied_syscall_names() -> set[str]:
    """Every syscall name the default profile can mention (for tests and docs)."""
    names = {n for group, _ in _DENY_GROUPS for n in group}
    return names | {"clone", "clone3", "unshare", "personality"}


def _deny(names: list[str], errno: int, args: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": errno}
    if args:
        rule["args"] = args
    return rule


def _masked(index: int, mask: int, value: int) -> dict[str, Any]:
    """``(arg[index] & mask) == value``: OCI puts the mask in ``value``, the datum in ``valueTwo``."""
    return {"index": index, "value": mask, "valueTwo": value, "op": "SCMP_CMP_MASKED_EQ"}


def _namespace_flag_rules() -> list[dict[str, Any]]:
    # Separate rules are OR-ed by libseccomp; args inside one rule are AND-ed.
    return [
        _deny(["clone", "unshare"], EPERM, [_masked(0, bit, bit)])
        for bit in NAMESPACE_FLAGS.values()
    ]


def _personality_rules() -> list[dict[str, Any]]:
    return [
        _deny(["personality"], EPERM, [_masked(0, bit | _PERSONALITY_QUERY_BIT, bit)])
        for bit in PERSONALITY_DENIED.values()
    ]


# --- Localhost profiles ---------------------------------------------------------------------

_OUR_ARCH_NAMES = {"amd64", "x86_64", "SCMP_ARCH_X86_64"}


def load_localhost(path: str, capabilities: Iterable[str], *, field: str = "seccomp.localhost_ref") -> dict[str, Any]:
    """Read a profile file on the host and return it as an OCI ``linux.seccomp`` section.

    Accepts the OCI form and the Docker/containerd form (``archMap``, ``name``,
    ``includes``/``excludes``). Conditional entries are evaluated against ``capabilities``;
    ``minKernel`` conditions are taken as met because the guest kernel is ours and recent.
    """
    if not path or not os.path.isabs(path):
        raise InvalidArgument(f"{field}: seccomp profile path {path!r} must be an absolute host path")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError as exc:
        raise InvalidArgument(
            f"{field}: seccomp profile {path} does not exist on the node; install it there "
            "(usually under /var/lib/kubelet/seccomp) or use RuntimeDefault"
        ) from exc
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"{field}: cannot read seccomp profile {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{field}: seccomp profile {path} is not a JSON object")
    return convert_profile(raw, capabilities, source=path)


def convert_profile(raw: Mapping[str, Any], capabilities: Iterable[str], *, source: str = "profile") -> dict[str, Any]:
    """Turn a Docker-format or OCI-format profile into the OCI ``linux.seccomp`` section."""
    caps = set(capabilities)
    if not raw.get("defaultAction"):
        raise InvalidArgument(f"seccomp profile {source} has no defaultAction")
    if raw.get("listenerPath"):
        raise InvalidArgument(
            f"seccomp profile {source} sets listenerPath: a seccomp notify agent on the node "
            "cannot be reached from inside the pod VM"
        )
    out: dict[str, Any] = {"defaultAction": raw["defaultAction"]}
    if "defaultErrnoRet" in raw:
        out["defaultErrnoRet"] = raw["defaultErrnoRet"]
    arches = _architectures(raw)
    if arches:
        out["architectures"] = arches
    if raw.get("flags"):
        out["flags"] = list(raw["flags"])
    out["syscalls"] = [
        _convert_rule(rule, source)
        for rule in raw.get("syscalls") or []
        if _applies(rule, caps)
    ]
    return out


def _architectures(raw: Mapping[str, Any]) -> list[str]:
    if raw.get("architectures"):
        return list(raw["architectures"])
    for entry in raw.get("archMap") or []:
        if entry.get("architecture") == "SCMP_ARCH_X86_64":
            return [entry["architecture"], *entry.get("subArchitectures", [])]
    return []


def _applies(rule: Mapping[str, Any], caps: set[str]) -> bool:
    """Docker semantics: any excluded cap present skips, every included cap must be present."""
    includes = rule.get("includes") or {}
    excludes = rule.get("excludes") or {}
    if any(c in caps for c in excludes.get("caps") or []):
        return False
    if any(c not in caps for c in includes.get("caps") or []):
        return False
    if excludes.get("arches") and _OUR_ARCH_NAMES.intersection(excludes["arches"]):
        return False
    return not (includes.get("arches") and not _OUR_ARCH_NAMES.intersection(includes["arches"]))


def _convert_rule(rule: Mapping[str, Any], source: str) -> dict[str, Any]:
    names = list(rule.get("names") or ([rule["name"]] if rule.get("name") else []))
    if not names or not rule.get("action"):
        raise InvalidArgument(f"seccomp profile {source}: syscall rule {dict(rule)} needs names and action")
    out: dict[str, Any] = {"names": names, "action": rule["action"]}
    if "errnoRet" in rule:
        out["errnoRet"] = rule["errnoRet"]
    if rule.get("args"):
        out["args"] = [
            {k: a[k] for k in ("index", "value", "valueTwo", "op") if k in a} for a in rule["args"]
        ]
    return out
