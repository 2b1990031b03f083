"""Build the OCI runtime spec (config.json for crun in the guest) from a CRI container config.

Input is plain data: ``MessageToDict(ContainerConfig / PodSandboxConfig,
preserving_proto_field_name=True)``, so default values are missing, int64 fields are strings,
enums are names and ``KeyValue.value`` (bytes) is base64. :func:`build_spec` runs a list of
small ``with_*`` steps; each one only fills its part of the spec from the normalised
:class:`Inputs` (the Localhost seccomp step also reads the profile file on the host).

The pod VM is the isolation boundary, which shapes a few choices:

* containers share the VM's network and UTS namespaces (the agent configures the pod network
  and sets the VM hostname to the pod's), so the spec has neither;
* IPC/PID namespaces shared by the pod are joined through placeholders (``@sandbox``,
  ``@container:<id>``) that the agent replaces, see :mod:`frakpy.agent.protocol.guestpaths`;
* privileged means privileged *inside the VM*: every capability, no seccomp, nothing masked,
  /sys and the cgroup tree writable, every device of the VM (never of the node) allowed;
* user names are resolved in the guest against the image's /etc/passwd (``io.frakpy.user``);
* host paths of CRI mounts are turned into guest paths by the caller's ``resolve_mount`` (the
  container manager binds each one into the pod's virtio-9p share, see frakpy.sandbox.share);
  in the guest they are ``rprivate`` binds. HostToContainer propagation is done on the host
  side (the share's bind is a slave of the node's mount, so later node mounts show through
  9p); Bidirectional cannot be (mounts made in the VM never reach the node) and is refused
  unless ``allow_propagation_emulation`` makes it private with a note;
* ``recursive_read_only`` (which needs ``readonly``) is plain ``ro``: the guest sees a volume
  as one 9p mount without submounts, so ``ro`` is recursive already, and the host side of a
  read-only volume is made read-only recursively too;
* CRI ``devices`` are raw block volumes only (:func:`plan_block_devices`: a node block device,
  or a disk image file; character devices and CDI devices are refused): the container manager
  hot-adds each as a disk whose guest major/minor only the guest knows, so the spec carries
  ``io.frakpy.block-devices`` and the agent adds the ``linux.devices`` entry and the device
  cgroup allow rule (see :func:`with_devices`).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import posixpath
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from frakpy.agent.protocol import guestpaths as gp
from frakpy.container import seccomp
from frakpy.errors import InvalidArgument

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
DEFAULT_SHM_SIZE = 64 * 1024 * 1024
TERMINATION_PATH_ANNOTATION = "io.kubernetes.container.terminationMessagePath"

# The capabilities Docker and containerd grant by default.
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)

# Every capability of Linux up to 6.x, in kernel number order (linux/capability.h).
ALL_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
    "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)

# The lists containerd applies to unprivileged containers.
DEFAULT_MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
DEFAULT_READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# Character devices every container may use (null, zero, full, random, urandom, tty, ptmx, pts).
_DEFAULT_DEVICE_RULES = [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2), (136, None)]

# Sysctls living in the IPC namespace (allowed in the spec; crun writes them in that namespace).
_IPC_SYSCTLS = ("kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
                "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced")

ResolveMount = Callable[[str], str]


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an OCI image config a container spec needs."""

    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    working_dir: str = ""
    user: str = ""
    stop_signal: str = ""
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Inputs:
    """Everything the steps read, with the CRI dicts kept as given."""

    container: Mapping[str, Any]
    sandbox: Mapping[str, Any]
    image: ImageConfig
    container_id: str
    sandbox_id: str
    rootfs: str
    hostname: str
    resolve_mount: ResolveMount
    allow_propagation_emulation: bool = False
    pids_limit: int | None = None

    @property
    def sc(self) -> Mapping[str, Any]:
        """The container's LinuxContainerSecurityContext."""
        return _dig(self.container, "linux", "security_context")

    @property
    def sandbox_sc(self) -> Mapping[str, Any]:
        return _dig(self.sandbox, "linux", "security_context")

    @property
    def privileged(self) -> bool:
        return bool(self.sc.get("privileged"))

    @property
    def namespaces(self) -> Mapping[str, Any]:
        return _dig(self.sc, "namespace_options")


Step = Callable[[dict[str, Any], Inputs], None]


def build_spec(
    container: Mapping[str, Any],
    sandbox: Mapping[str, Any],
    image: ImageConfig,
    *,
    container_id: str,
    sandbox_id: str,
    resolve_mount: ResolveMount,
    rootfs: str | None = None,
    hostname: str = "",
    allow_propagation_emulation: bool = False,
    pids_limit: int | None = None,
) -> dict[str, Any]:
    """The OCI runtime spec for one container; raises InvalidArgument for unusable configs.

    ``rootfs`` defaults to the container's rootfs in the guest; ``hostname`` to the sandbox
    config's. ``resolve_mount`` maps a CRI ``host_path`` to the path where the guest sees it.
    """
    inputs = Inputs(
        container=container, sandbox=sandbox, image=image, container_id=container_id,
        sandbox_id=sandbox_id, rootfs=rootfs or gp.container_rootfs(container_id),
        hostname=hostname or str(sandbox.get("hostname", "")), resolve_mount=resolve_mount,
        allow_propagation_emulation=allow_propagation_emulation, pids_limit=pids_limit,
    )
    spec = base_spec(inputs)
    for step in STEPS:
        step(spec, inputs)
    return spec


def base_spec(inputs: Inputs) -> dict[str, Any]:
    return {
        "ociVersion": OCI_VERSION,
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": [], "env": [], "cwd": "/"},
        "root": {"path": inputs.rootfs, "readonly": False},
        "mounts": [],
        "annotations": {},
        "linux": {
            "namespaces": [],
            "resources": {},
            "cgroupsPath": f"/frakpy/{inputs.sandbox_id[:12]}/{inputs.container_id}",
        },
    }


# --- process ---------------------------------------------------------------------------------


def with_process_args(spec: dict[str, Any], inputs: Inputs) -> None:
    """Kubelet/containerd rules: CRI command replaces the entrypoint and drops the image cmd;
    CRI args replace the image cmd; an entrypoint of [""] counts as none."""
    command = list(inputs.container.get("command") or [])
    args = list(inputs.container.get("args") or [])
    if not command:
        if not args:
            args = list(inputs.image.cmd)
        entrypoint = list(inputs.image.entrypoint)
        command = [] if entrypoint == [""] else entrypoint
    argv = command + args
    if not argv:
        raise InvalidArgument(
            "no command specified: set the container's command/args or use an image "
            "with an Entrypoint or Cmd"
        )
    spec["process"]["args"] = argv


def with_env(spec: dict[str, Any], inputs: Inputs) -> None:
    """HOSTNAME, then the image env, then the CRI envs, later keys replacing earlier ones."""
    env: dict[str, str] = {}
    if inputs.hostname:
        env["HOSTNAME"] = f"HOSTNAME={inputs.hostname}"
    for entry in inputs.image.env:
        env[entry.split("=", 1)[0]] = entry
    for kv in inputs.container.get("envs") or []:
        key = kv.get("key", "")
        if not key:
            raise InvalidArgument("envs: an environment variable has an empty key")
        env[key] = f"{key}={_env_value(kv.get('value', ''))}"
    if "PATH" not in env:
        env = {"PATH": DEFAULT_PATH, **env}
    spec["process"]["env"] = list(env.values())


def with_working_dir(spec: dict[str, Any], inputs: Inputs) -> None:
    cwd = inputs.container.get("working_dir") or inputs.image.working_dir or "/"
    spec["process"]["cwd"] = posixpath.normpath(posixpath.join("/", cwd))


def with_terminal(spec: dict[str, Any], inputs: Inputs) -> None:
    """``terminal`` is OCI; stdin/stdin_once are for the agent's I/O plumbing only."""
    spec["process"]["terminal"] = bool(inputs.container.get("tty"))
    if inputs.container.get("stdin"):
        spec["annotations"][gp.ANN_STDIN] = "true"
    if inputs.container.get("stdin_once"):
        spec["annotations"][gp.ANN_STDIN_ONCE] = "true"


def with_user(spec: dict[str, Any], inputs: Inputs) -> None:
    """Numeric ids go straight in; anything needing the image's passwd/group is left to the
    guest through ``io.frakpy.user`` (see frakpy_guest.users.resolve)."""
    sc = inputs.sc
    supplemental = [_int(g, "supplemental_groups") for g in sc.get("supplemental_groups") or []]
    strict = sc.get("supplemental_groups_policy") == "Strict"
    user, group = _split_user(inputs.image.user)
    if "run_as_user" in sc:
        user = str(_int(sc["run_as_user"].get("value", 0), "run_as_user"))
    elif sc.get("run_as_username"):
        user = sc["run_as_username"]
    if "run_as_group" in sc:
        group = str(_int(sc["run_as_group"].get("value", 0), "run_as_group"))
    uid = int(user) if user.isdigit() else 0
    gid = int(group) if group.isdigit() else 0
    spec["process"]["user"] = {"uid": uid, "gid": gid, "additionalGids": _dedup([gid, *supplemental])}
    numeric = (not user or user.isdigit()) and group.isdigit()
    if numeric and strict:
        return
    request = {"user": user, "group": group, "supplemental_groups": supplemental, "strict": strict}
    spec["annotations"][gp.ANN_USER] = json.dumps(request, sort_keys=True)


def with_capabilities(spec: dict[str, Any], inputs: Inputs) -> None:
    """Default 14, then add ALL / drop ALL, then single adds, then single drops (containerd order)."""
    caps_cfg = _dig(inputs.sc, "capabilities")
    if inputs.privileged:
        caps = list(ALL_CAPABILITIES)
    else:
        adds = [_cap_name(c, "add_capabilities") for c in caps_cfg.get("add_capabilities") or []]
        drops = [_cap_name(c, "drop_capabilities") for c in caps_cfg.get("drop_capabilities") or []]
        current = set(DEFAULT_CAPABILITIES)
        if "ALL" in adds:
            current = set(ALL_CAPABILITIES)
        if "ALL" in drops:
            current = set()
        current |= {c for c in adds if c != "ALL"}
        current -= {c for c in drops if c != "ALL"}
        caps = [c for c in ALL_CAPABILITIES if c in current]
    ambient = [_cap_name(c, "add_ambient_capabilities") for c in caps_cfg.get("add_ambient_capabilities") or []]
    if "ALL" in ambient:
        raise InvalidArgument("add_ambient_capabilities: ALL is not allowed, list the capabilities")
    caps += [c for c in ambient if c not in caps]
    spec["process"]["capabilities"] = {
        "bounding": list(caps), "effective": list(caps), "permitted": list(caps),
        # Ambient caps must also be inheritable; nothing else is (CVE-2022-24769).
        "inheritable": list(ambient), "ambient": list(ambient),
    }


def with_no_new_privileges(spec: dict[str, Any], inputs: Inputs) -> None:
    spec["process"]["noNewPrivileges"] = bool(inputs.sc.get("no_new_privs"))


def with_oom_score_adj(spec: dict[str, Any], inputs: Inputs) -> None:
    resources = _dig(inputs.container, "linux", "resources")
    spec["process"]["oomScoreAdj"] = _int(resources.get("oom_score_adj", 0), "resources.oom_score_adj")


# --- security ------------------------------------------------------------------------------


def with_privileged_check(spec: dict[str, Any], inputs: Inputs) -> None:
    if inputs.privileged and not inputs.sandbox_sc.get("privileged"):
        raise InvalidArgument(
            "security_context.privileged: a privileged container needs a privileged sandbox "
            "(set privileged in the pod's security context too)"
        )


def with_readonly_rootfs(spec: dict[str, Any], inputs: Inputs) -> None:
    spec["root"]["readonly"] = bool(inputs.sc.get("readonly_rootfs"))


def with_seccomp(spec: dict[str, Any], inputs: Inputs) -> None:
    if inputs.privileged:
        return
    kind, path, fld = _seccomp_choice(inputs.sc)
    caps = spec["process"]["capabilities"]["bounding"]
    if kind == "runtime-default":
        spec["linux"]["seccomp"] = seccomp.default_profile(caps)
    elif kind == "localhost":
        spec["linux"]["seccomp"] = seccomp.load_localhost(path, caps, field=fld)


def with_lsm_notes(spec: dict[str, Any], inputs: Inputs) -> None:
    """AppArmor and SELinux are not enforced in the guest kernel; say so instead of failing."""
    sc = inputs.sc
    if sc.get("selinux_options"):
        _note(spec, "selinux_options ignored: the guest kernel runs without SELinux")
    confined = "apparmor" in sc and sc["apparmor"].get("profile_type") != "Unconfined"
    if confined or sc.get("apparmor_profile", "unconfined") != "unconfined":
        _note(spec, "apparmor profile ignored: the guest kernel runs without AppArmor")


def with_masked_paths(spec: dict[str, Any], inputs: Inputs) -> None:
    """Defaults unless the CRI config lists paths. A key present with an empty list (procMount
    Unmasked) clears them; note MessageToDict drops empty lists, so the caller must keep the
    key in that case. Privileged containers get neither list."""
    if inputs.privileged:
        return
    sc = inputs.sc
    masked = sc["masked_paths"] if "masked_paths" in sc else DEFAULT_MASKED_PATHS
    readonly = sc["readonly_paths"] if "readonly_paths" in sc else DEFAULT_READONLY_PATHS
    if masked:
        spec["linux"]["maskedPaths"] = list(masked)
    if readonly:
        spec["linux"]["readonlyPaths"] = list(readonly)


def with_sysctls(spec: dict[str, Any], inputs: Inputs) -> None:
    """Pod sysctls. crun only writes sysctls of namespaces the container has, so IPC ones go in
    the spec when the container has an IPC namespace; all others (net.*, vm.*, ...) are
    VM-wide, which here means pod-wide, and go to the agent via ``io.frakpy.vm-sysctls``."""
    sysctls = dict(_dig(inputs.sandbox, "linux").get("sysctls") or {})
    own_ipc = inputs.namespaces.get("ipc", "POD") in ("POD", "CONTAINER")
    in_spec = {k: v for k, v in sysctls.items() if own_ipc and _is_ipc_sysctl(k)}
    vm_wide = {k: v for k, v in sysctls.items() if k not in in_spec}
    if in_spec:
        spec["linux"]["sysctl"] = in_spec
    if vm_wide:
        spec["annotations"][gp.ANN_VM_SYSCTLS] = json.dumps(vm_wide, sort_keys=True)


def _is_ipc_sysctl(key: str) -> bool:
    return key in _IPC_SYSCTLS or key.startswith("fs.mqueue.")


# --- namespaces and cgroups ------------------------------------------------------------------


def with_namespaces(spec: dict[str, Any], inputs: Inputs) -> None:
    """mount + cgroup always new; ipc/pid per mode; network and uts are the VM's."""
    ns = inputs.namespaces
    userns = _dig(ns, "userns_options")
    if userns.get("uids") or userns.get("gids"):
        raise InvalidArgument(
            "namespace_options.userns_options: user namespaces (hostUsers: false) are not "
            "supported; every pod already runs in its own VM"
        )
    entries: list[dict[str, str]] = [{"type": "mount"}, {"type": "cgroup"}]
    entries += _ns_entry("ipc", ns.get("ipc", "POD"), ns)
    entries += _ns_entry("pid", ns.get("pid", "POD"), ns)
    spec["linux"]["namespaces"] = entries


def _ns_entry(kind: str, mode: str, ns: Mapping[str, Any]) -> list[dict[str, str]]:
    if mode == "POD":
        return [{"type": kind, "path": gp.SANDBOX_PLACEHOLDER}]
    if mode == "CONTAINER":
        return [{"type": kind}]
    if mode == "NODE":
        return []  # the "node" of a pod is its VM: share the VM's namespace
    if mode == "TARGET" and kind == "pid":
        target = ns.get("target_id", "")
        if not target:
            raise InvalidArgument("namespace_options.pid is TARGET but target_id is empty")
        return [{"type": kind, "path": gp.container_placeholder(target)}]
    raise InvalidArgument(f"namespace_options.{kind}: mode {mode} is not supported for {kind}")


def with_resources(spec: dict[str, Any], inputs: Inputs) -> None:
    """LinuxContainerResources for cgroup v2 through crun (it turns cpu.shares into weight)."""
    r = _dig(inputs.container, "linux", "resources")
    out: dict[str, Any] = {"devices": _device_rules(inputs.privileged), **oci_resources(r)}
    if inputs.pids_limit and inputs.pids_limit > 0:
        out["pids"] = {"limit": inputs.pids_limit}
    if r.get("hugepage_limits"):
        _note(spec, "hugepage_limits ignored: the pod VM has no huge pages reserved")
    spec["linux"]["resources"] = out


def oci_resources(r: Mapping[str, Any]) -> dict[str, Any]:
    """CRI LinuxContainerResources (as a dict) -> OCI linux.resources cpu/memory/unified."""
    out: dict[str, Any] = {}
    cpu: dict[str, Any] = {}
    for src, dst in (("cpu_shares", "shares"), ("cpu_quota", "quota"), ("cpu_period", "period")):
        value = _int(r.get(src, 0), f"resources.{src}")
        if value > 0:
            cpu[dst] = value
    for src, dst in (("cpuset_cpus", "cpus"), ("cpuset_mems", "mems")):
        if r.get(src):
            cpu[dst] = r[src]
    if cpu:
        out["cpu"] = cpu
    limit = _int(r.get("memory_limit_in_bytes", 0), "resources.memory_limit_in_bytes")
    if limit > 0:
        swap = _int(r.get("memory_swap_limit_in_bytes", 0), "resources.memory_swap_limit_in_bytes")
        out["memory"] = {"limit": limit, "swap": swap if swap > 0 else limit}
    if r.get("unified"):
        out["unified"] = dict(r["unified"])
    return out


@dataclass(frozen=True)
class BlockDevice:
    """One CRI device: a node block device (or a disk image file) hot-added to the pod VM."""

    host_path: str
    container_path: str
    permissions: str  # a subset of "rwm"
    serial: str  # scsi-hd serial (<= 20 chars), also the QEMU device id
    driver: str  # QEMU blockdev driver: "host_device" for a block device, "file" for a file

    @property
    def readonly(self) -> bool:
        return "w" not in self.permissions


MAX_BLOCK_DEVICES = 100  # per container: keeps serials within 20 characters


def block_device_serial(host_path: str) -> str:
    """``blk-<16 hex of the resolved host path>``: one disk per node device and sandbox (two
    containers of a pod, or two paths in one container, share it), at most 20 chars, never equal
    to an image disk's serial (those are plain hex)."""
    import hashlib

    return "blk-" + hashlib.sha256(os.path.realpath(host_path).encode()).hexdigest()[:16]


def plan_block_devices(container_id: str, devices: Any) -> list[BlockDevice]:
    """Validate CRI ``devices`` (raw block volumes) against the node; INVALID_ARGUMENT naming
    the container path and the fix for anything a VM cannot take."""
    out: list[BlockDevice] = []
    seen: set[str] = set()
    for d in devices or []:
        dest = str(d.get("container_path") or "")
        host = str(d.get("host_path") or "")
        perms = str(d.get("permissions") or "rwm")
        what = f"device {dest or host or '?'}"
        if not dest.startswith("/"):
            raise InvalidArgument(f"{what}: container_path {dest!r} must be an absolute path such as /dev/xvda")
        if posixpath.normpath(dest) in seen:
            raise InvalidArgument(f"{what}: container_path is given twice")
        seen.add(posixpath.normpath(dest))
        if not host.startswith("/"):
            raise InvalidArgument(f"{what}: host_path {host!r} must be an absolute path of a block device")
        if not perms or set(perms) - set("rwm"):
            raise InvalidArgument(f"{what}: permissions {perms!r} must be a non-empty subset of 'rwm'")
        try:
            st = os.stat(host)
        except OSError as exc:
            raise InvalidArgument(f"{what}: host path {host} is not usable ({exc.strerror}); give an "
                                  "existing block device (a raw block volume)") from exc
        if stat.S_ISCHR(st.st_mode):
            raise InvalidArgument(f"{what}: {host} is a character device; node character devices cannot "
                                  "enter a pod VM (only block devices, hot-added as disks), remove it")
        if stat.S_ISBLK(st.st_mode):
            driver = "host_device"
        elif stat.S_ISREG(st.st_mode):
            driver = "file"  # a disk image file
        else:
            raise InvalidArgument(f"{what}: host path {host} is neither a block device nor a disk image "
                                  "file; give a block device (a raw block volume)")
        if len(out) >= MAX_BLOCK_DEVICES:
            raise InvalidArgument(f"{what}: more than {MAX_BLOCK_DEVICES} devices in one container")
        out.append(BlockDevice(host, posixpath.normpath(dest), "".join(c for c in "rwm" if c in perms),
                               block_device_serial(host), driver))
    return out


def with_devices(spec: dict[str, Any], inputs: Inputs) -> None:
    """CRI devices are raw block volumes: the container manager hot-adds each one to the VM as
    a disk (serial from :func:`block_device_serial`), and ``io.frakpy.block-devices`` (JSON list
    of ``{serial, path, access}``) asks the agent to add the guest's node of that disk to
    ``linux.devices`` at ``path`` and allow it in the device cgroup (only the guest knows its
    major/minor). Character devices and CDI devices are refused. Privileged containers get the
    VM's devices: the agent lists them when it sees ``io.frakpy.host-devices``."""
    if inputs.container.get("CDI_devices"):
        raise InvalidArgument(
            "CDI_devices: node devices cannot be passed into a pod VM; remove the device request "
            "(device plugins are not supported by frakpy)"
        )
    if inputs.privileged:
        spec["annotations"][gp.ANN_HOST_DEVICES] = "all"
    block = plan_block_devices(inputs.container_id, inputs.container.get("devices"))
    if block:
        spec["annotations"][gp.ANN_BLOCK_DEVICES] = json.dumps(
            [{"serial": b.serial, "path": b.container_path, "access": b.permissions} for b in block])


def _device_rules(privileged: bool) -> list[dict[str, Any]]:
    if privileged:
        return [{"allow": True, "access": "rwm"}]
    rules: list[dict[str, Any]] = [{"allow": False, "access": "rwm"}]
    for major, minor in _DEFAULT_DEVICE_RULES:
        rule: dict[str, Any] = {"allow": True, "type": "c", "major": major, "access": "rwm"}
        if minor is not None:
            rule["minor"] = minor
        rules.append(rule)
    return rules


# --- mounts ----------------------------------------------------------------------------------


def with_mounts(spec: dict[str, Any], inputs: Inputs) -> None:
    """Kernel filesystems, pod files, termination log, then CRI mounts; a CRI mount replaces a
    default one at the same destination. CRI mounts are ordered parents first."""
    user = sorted((_cri_mount(m, inputs) for m in inputs.container.get("mounts") or []),
                  key=lambda m: _depth(m["destination"]))
    taken = {m["destination"] for m in user}
    defaults = _kernel_mounts(inputs) + _pod_file_mounts(inputs) + [_termination_mount(inputs)]
    spec["mounts"] = [m for m in defaults if m["destination"] not in taken] + user


def _kernel_mounts(inputs: Inputs) -> list[dict[str, Any]]:
    ro = [] if inputs.privileged else ["ro"]
    if _dig(inputs.namespaces).get("ipc", "POD") == "POD":
        shm = _bind("/dev/shm", gp.sandbox_shm(), ["nosuid", "noexec", "nodev"])
    else:
        shm = _fs("/dev/shm", "tmpfs", "shm",
                  ["nosuid", "noexec", "nodev", "mode=1777", f"size={DEFAULT_SHM_SIZE}"])
    return [
        _fs("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
        _fs("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
        _fs("/dev/pts", "devpts", "devpts",
            ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
        shm,
        _fs("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
        _fs("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", *ro]),
        _fs("/sys/fs/cgroup", "cgroup", "cgroup", ["nosuid", "noexec", "nodev", "relatime", *ro]),
    ]


def _pod_file_mounts(inputs: Inputs) -> list[dict[str, Any]]:
    mode = "ro" if inputs.sc.get("readonly_rootfs") else "rw"
    return [
        _bind(f"/etc/{name}", gp.sandbox_file(name), [mode])
        for name in ("hostname", "hosts", "resolv.conf")
    ]


def _termination_mount(inputs: Inputs) -> dict[str, Any]:
    annotations = inputs.container.get("annotations") or {}
    dest = annotations.get(TERMINATION_PATH_ANNOTATION) or DEFAULT_TERMINATION_PATH
    if not dest.startswith("/"):
        raise InvalidArgument(f"{TERMINATION_PATH_ANNOTATION}: {dest!r} must be an absolute path")
    return _bind(posixpath.normpath(dest), gp.termination_log(inputs.container_id), ["rw"])


def _cri_mount(m: Mapping[str, Any], inputs: Inputs) -> dict[str, Any]:
    dest = m.get("container_path", "")
    where = f"mounts[{dest or '?'}]"
    if not dest.startswith("/"):
        raise InvalidArgument(f"{where}: container_path {dest!r} must be an absolute path")
    if m.get("image"):
        raise InvalidArgument(f"{where}: image volumes are not supported; use a host path")
    if m.get("uidMappings") or m.get("gidMappings"):
        raise InvalidArgument(f"{where}: id-mapped mounts are not supported")
    if m.get("recursive_read_only") and not m.get("readonly"):
        raise InvalidArgument(f"{where}: recursive_read_only needs readonly to be set too")
    host = m.get("host_path", "")
    if not host:
        raise InvalidArgument(f"{where}: host_path is empty")
    options = ["ro" if m.get("readonly") else "rw", _propagation(m.get("propagation"), where, inputs)]
    return _bind(posixpath.normpath(dest), inputs.resolve_mount(host), options)


def _propagation(value: str | None, where: str, inputs: Inputs) -> str:
    """Guest-side propagation of a CRI mount: always rprivate (HostToContainer is the host
    bind's business; Bidirectional is refused unless emulated as private)."""
    if value in (None, "PROPAGATION_PRIVATE", "PROPAGATION_HOST_TO_CONTAINER"):
        return "rprivate"
    if value != "PROPAGATION_BIDIRECTIONAL":
        raise InvalidArgument(f"{where}: unknown mount propagation {value!r}")
    if not inputs.allow_propagation_emulation:
        raise InvalidArgument(
            f"{where}: mount propagation {value} needs mounts made in the container to reach the "
            "node, which a VM cannot do; use mountPropagation: None or HostToContainer"
        )
    return "rprivate"


def with_selinux_relabel_note(spec: dict[str, Any], inputs: Inputs) -> None:
    mounts = inputs.container.get("mounts") or []
    if any(m.get("selinux_relabel") for m in mounts):
        _note(spec, "mounts[].selinux_relabel ignored: the guest runs without SELinux")
    if any(m.get("propagation") == "PROPAGATION_BIDIRECTIONAL" for m in mounts):
        _note(spec, "mounts[].propagation Bidirectional emulated as private: mounts made in a VM "
                    "cannot reach the node")


# --- annotations -----------------------------------------------------------------------------


def with_annotations(spec: dict[str, Any], inputs: Inputs) -> None:
    """CRI annotations, then the io.kubernetes.cri.* keys; io.frakpy.* from CRI is dropped
    so a pod cannot instruct the agent."""
    ann = spec["annotations"]
    for key, value in (inputs.container.get("annotations") or {}).items():
        if key.startswith("io.frakpy."):
            _note(spec, f"annotation {key} dropped: the io.frakpy. prefix is reserved")
        elif key not in ann:
            ann[key] = value
    sb_meta = _dig(inputs.sandbox, "metadata")
    ann.update({
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.container-name": _dig(inputs.container, "metadata").get("name", ""),
        "io.kubernetes.cri.sandbox-id": inputs.sandbox_id,
        "io.kubernetes.cri.sandbox-name": sb_meta.get("name", ""),
        "io.kubernetes.cri.sandbox-namespace": sb_meta.get("namespace", ""),
        "io.kubernetes.cri.sandbox-uid": sb_meta.get("uid", ""),
        "io.kubernetes.cri.image-name": _dig(inputs.container, "image").get("image", ""),
    })


def with_stop_signal(spec: dict[str, Any], inputs: Inputs) -> None:
    """The CRI stop_signal (if set) wins over the image's STOPSIGNAL; SIGTERM otherwise."""
    cri = inputs.container.get("stop_signal")
    signal = cri if cri and cri != "RUNTIME_DEFAULT" else inputs.image.stop_signal
    spec["annotations"][gp.ANN_STOP_SIGNAL] = _signal_name(signal or "SIGTERM")


STEPS: list[Step] = [
    with_privileged_check,
    with_process_args,
    with_env,
    with_working_dir,
    with_terminal,
    with_user,
    with_capabilities,
    with_no_new_privileges,
    with_oom_score_adj,
    with_readonly_rootfs,
    with_seccomp,
    with_lsm_notes,
    with_masked_paths,
    with_namespaces,
    with_sysctls,
    with_resources,
    with_devices,
    with_mounts,
    with_selinux_relabel_note,
    with_annotations,
    with_stop_signal,
]


# --- helpers ---------------------------------------------------------------------------------


def _dig(d: Mapping[str, Any] | None, *keys: str) -> Mapping[str, Any]:
    """Nested sub-dict, ``{}`` where MessageToDict left a message out."""
    cur: Mapping[str, Any] = d or {}
    for key in keys:
        cur = cur.get(key) or {}
    return cur


def _int(value: Any, name: str) -> int:
    """int64 fields arrive as strings from MessageToDict."""
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{name}: {value!r} is not an integer") from exc


def _env_value(value: str) -> str:
    """KeyValue.value is bytes in our proto, so MessageToDict gives base64."""
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"envs: value {value!r} is not base64-encoded UTF-8") from exc


def _split_user(image_user: str) -> tuple[str, str]:
    user, _, group = image_user.strip().partition(":")
    return user, group


def _cap_name(name: str, fld: str) -> str:
    upper = name.strip().upper()
    if upper == "ALL":
        return upper
    full = upper if upper.startswith("CAP_") else f"CAP_{upper}"
    if full not in ALL_CAPABILITIES:
        raise InvalidArgument(f"capabilities.{fld}: unknown capability {name!r} (e.g. NET_ADMIN, SYS_TIME)")
    return full


def _seccomp_choice(sc: Mapping[str, Any]) -> tuple[str, str, str]:
    """``(kind, localhost path, field)``; kind is runtime-default, unconfined or localhost.

    The SecurityProfile field wins; the deprecated path string is the fallback; neither set
    means unconfined, as in containerd (kubelet always says what it wants)."""
    if "seccomp" in sc:
        prof = sc["seccomp"]
        kind = prof.get("profile_type", "RuntimeDefault")
        if kind == "RuntimeDefault":
            return "runtime-default", "", "seccomp"
        if kind == "Unconfined":
            return "unconfined", "", "seccomp"
        return "localhost", prof.get("localhost_ref", ""), "seccomp.localhost_ref"
    path = sc.get("seccomp_profile_path", "")
    if path in ("", "unconfined"):
        return "unconfined", "", "seccomp_profile_path"
    if path in ("runtime/default", "docker/default"):
        return "runtime-default", "", "seccomp_profile_path"
    if path.startswith("localhost/"):
        return "localhost", path[len("localhost/"):], "seccomp_profile_path"
    raise InvalidArgument(
        f"seccomp_profile_path: {path!r} is not one of runtime/default, docker/default, "
        "unconfined or localhost/<absolute path>"
    )


def _signal_name(signal: str) -> str:
    s = str(signal).strip().upper()
    if s.isdigit():
        return s
    return s if s.startswith("SIG") else f"SIG{s}"


def _fs(dest: str, fstype: str, source: str, options: list[str]) -> dict[str, Any]:
    return {"destination": dest, "type": fstype, "source": source, "options": options}


def _bind(dest: str, source: str, options: list[str]) -> dict[str, Any]:
    opts = ["rbind", *options]
    if not any(o in ("rprivate", "rslave", "rshared") for o in opts):
        opts.append("rprivate")
    return {"destination": dest, "type": "bind", "source": source, "options": opts}


def _depth(path: str) -> int:
    return len([p for p in path.split("/") if p])


def _note(spec: dict[str, Any], text: str) -> None:
    ann = spec["annotations"]
    notes = json.loads(ann.get(gp.ANN_NOTES, "[]"))
    if text not in notes:
        notes.append(text)
    ann[gp.ANN_NOTES] = json.dumps(notes)


def _dedup(values: list[int]) -> list[int]:
    return list(dict.fromkeys(values))
