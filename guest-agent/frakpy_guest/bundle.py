"""Turning the host's OCI spec into the config.json crun gets: the guest-only parts.

The host (frakpy.container.spec) builds the whole spec but cannot know guest facts; the agent
fills them in here, see frakpy.agent.protocol.guestpaths for the contract:

* ``root.path`` = the overlay rootfs the agent mounted;
* ``io.frakpy.user`` (JSON) resolved against the rootfs' /etc/passwd and /etc/group into
  ``process.user`` (frakpy_guest.users);
* namespace placeholders ``@sandbox`` / ``@container:<id>`` -> ``/proc/<pid>/ns/<type>``;
* ``io.frakpy.vm-sysctls`` returned to the caller to apply VM-wide;
* ``io.frakpy.host-devices: all`` -> every device node of the VM in ``linux.devices``;
* ``io.frakpy.block-devices`` (JSON list of ``{serial, path, access}``, CRI raw block volumes the
  host hot-added as scsi-hd disks) -> the guest node of each disk (found by serial beforehand,
  see :func:`block_device_requests`; its major/minor exist only here) in ``linux.devices`` at
  ``path`` (uid/gid 0) plus an allow rule ``{type b, major, minor, access}`` in
  ``linux.resources.devices``.

Consumed annotations are removed before crun sees the spec.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from typing import Any

from frakpy.agent.protocol import guestpaths as gp

NS_PROC_NAMES = {"pid": "pid", "ipc": "ipc", "network": "net", "mount": "mnt", "uts": "uts",
                 "user": "user", "cgroup": "cgroup", "time": "time"}


class SpecError(ValueError):
    """The spec cannot be completed; the message says why (maps to INVALID_ARGUMENT)."""


class PreconditionError(SpecError):
    """Something the spec refers to is not there yet (maps to FAILED_PRECONDITION)."""


def block_device_requests(spec: dict[str, Any]) -> list[dict[str, str]]:
    """The ``io.frakpy.block-devices`` entries of ``spec`` (not consumed here), validated."""
    raw = ((spec.get("annotations") or {}) if isinstance(spec, dict) else {}).get(gp.ANN_BLOCK_DEVICES)
    if not raw:
        return []
    try:
        items = json.loads(raw)
        out = [{"serial": str(i["serial"]), "path": str(i["path"]), "access": str(i.get("access") or "rwm")}
               for i in items]
    except (ValueError, TypeError, KeyError) as exc:
        raise SpecError(f"{gp.ANN_BLOCK_DEVICES}: not a JSON list of {{serial, path, access}}: {exc}") from exc
    for i in out:
        if not i["serial"] or not i["path"].startswith("/") or set(i["access"]) - set("rwm"):
            raise SpecError(f"{gp.ANN_BLOCK_DEVICES}: bad entry {i}")
    return out


def prepare(spec: dict[str, Any], *, rootfs: str, rootfs_view: str | None = None,
            sandbox_pid: Callable[[], int], container_pid: Callable[[str], int | None],
            dev_root: str = "/dev", block_devices: dict[str, str] | None = None) -> dict[str, str]:
    """Complete ``spec`` in place; returns the VM-wide sysctls the caller must apply.

    ``rootfs`` goes into ``root.path``; ``rootfs_view`` (default: the same) is where the agent
    reads the image's passwd files. ``sandbox_pid()`` is called only when a ``@sandbox``
    placeholder is present (it may start the namespace holder). ``block_devices`` maps the
    serials of ``io.frakpy.block-devices`` to the guest nodes the caller waited for.
    """
    if not isinstance(spec, dict) or not isinstance(spec.get("process"), dict):
        raise SpecError("spec_json is not an OCI runtime spec with a process")
    ann = spec.setdefault("annotations", {}) or {}
    spec["annotations"] = ann
    spec.setdefault("root", {})["path"] = rootfs

    user_json = ann.pop(gp.ANN_USER, None)
    if user_json:
        from frakpy_guest import users

        try:
            request = json.loads(user_json)
            uid, gid, extra = users.resolve(request, rootfs_view or rootfs)
        except ValueError as exc:
            raise SpecError(f"{gp.ANN_USER}: {exc}") from exc
        user = spec["process"].setdefault("user", {})
        user.update({"uid": uid, "gid": gid, "additionalGids": extra})

    linux = spec.setdefault("linux", {})
    for entry in linux.get("namespaces") or []:
        path = entry.get("path") or ""
        try:
            parsed = gp.parse_placeholder(path)
        except ValueError as exc:
            raise SpecError(str(exc)) from exc
        if parsed is None:
            continue
        kind, target = parsed
        proc_name = NS_PROC_NAMES.get(entry.get("type", ""))
        if proc_name is None:
            raise SpecError(f"namespace type {entry.get('type')!r} cannot use a placeholder")
        if kind == "sandbox":
            pid = sandbox_pid()
        else:
            found = container_pid(target)
            if not found:
                raise PreconditionError(f"namespace {path}: container {target} is not running in this pod")
            pid = found
        entry["path"] = f"/proc/{pid}/ns/{proc_name}"

    sysctls: dict[str, str] = {}
    raw = ann.pop(gp.ANN_VM_SYSCTLS, None)
    if raw:
        try:
            sysctls = {str(k): str(v) for k, v in json.loads(raw).items()}
        except (ValueError, AttributeError) as exc:
            raise SpecError(f"{gp.ANN_VM_SYSCTLS}: not a JSON object: {exc}") from exc
    if ann.pop(gp.ANN_HOST_DEVICES, None) == "all":
        linux["devices"] = list_devices(dev_root)
    requests = block_device_requests(spec)
    ann.pop(gp.ANN_BLOCK_DEVICES, None)
    for req in requests:
        node = (block_devices or {}).get(req["serial"])
        if node is None:
            raise PreconditionError(f"device {req['path']}: no disk with serial {req['serial']} in the VM")
        try:
            st = os.stat(node)
        except OSError as exc:
            raise PreconditionError(f"device {req['path']}: {node}: {exc.strerror}") from exc
        if not stat.S_ISBLK(st.st_mode):
            raise PreconditionError(f"device {req['path']}: {node} is not a block device")
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        devices = [d for d in linux.get("devices") or [] if d.get("path") != req["path"]]
        devices.append({"path": req["path"], "type": "b", "major": major, "minor": minor,
                        "fileMode": stat.S_IMODE(st.st_mode) or 0o660, "uid": 0, "gid": 0})
        linux["devices"] = devices
        rules = linux.setdefault("resources", {}).setdefault("devices", [])
        rules.append({"allow": True, "type": "b", "major": major, "minor": minor, "access": req["access"]})
    return sysctls


def list_devices(dev_root: str = "/dev") -> list[dict[str, Any]]:
    """OCI ``linux.devices`` entries of every char/block node of the VM (privileged pods)."""
    out: list[dict[str, Any]] = []
    skip = {"console", "ptmx", "tty", "fd", "pts", "shm", "mqueue"}
    for dirpath, dirnames, filenames in os.walk(dev_root):
        dirnames[:] = [d for d in dirnames if not (dirpath == dev_root and d in skip)]
        for name in sorted(filenames):
            if dirpath == dev_root and name in skip:
                continue
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISCHR(st.st_mode):
                kind = "c"
            elif stat.S_ISBLK(st.st_mode):
                kind = "b"
            else:
                continue
            out.append({"path": "/dev/" + os.path.relpath(path, dev_root), "type": kind,
                        "major": os.major(st.st_rdev), "minor": os.minor(st.st_rdev),
                        "fileMode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid})
    return out


def exec_process(container_process: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """The OCI process of an exec: the container's (user, env, cwd, capabilities...) with the
    fields given in ``override`` replacing them."""
    proc = json.loads(json.dumps(container_process))
    proc.update({k: v for k, v in override.items() if v not in (None, "", [], {})})
    proc["terminal"] = bool(override.get("terminal"))
    if not proc["terminal"]:
        proc.pop("consoleSize", None)
    return proc
