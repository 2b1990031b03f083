"""Resolve a container's user against the image's /etc/passwd and /etc/group, in the guest.

The host cannot read the container rootfs (it only exists inside the VM), so when the CRI
config or the image names a user the host writes the request into the spec annotation
``io.frakpy.user`` (JSON) and the agent calls :func:`resolve` once the rootfs is mounted:

    {"user": "nginx" | "1000" | "",        # name or numeric uid; "" means root
     "group": "" | "www" | "101",          # optional explicit group (image "u:g" or run_as_group)
     "supplemental_groups": [2000, ...],   # CRI supplemental_groups, always added
     "strict": false}                      # SupplementalGroupsPolicy=Strict: skip /etc/group

Rules (the ones Docker and containerd apply):

* a name is looked up in /etc/passwd; unknown name -> ValueError;
* a numeric uid is used as is; its primary gid comes from /etc/passwd when there is an entry,
  else 0;
* an explicit group (name via /etc/group, or number) replaces the passwd gid;
* supplementary groups = the primary gid, then every /etc/group entry listing the user's
  name as a member (unless strict), then the CRI supplemental groups, without duplicates.
  The primary gid is listed too so that dropping it with setgroups is never possible.

Files are read through :func:`open_in_root`, which resolves symlinks inside the rootfs, so an
image whose /etc/passwd is a symlink to ``/etc/shadow`` or ``../../..`` cannot read guest files.
Pure standard library: this module runs in the guest.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, TextIO

MAX_SYMLINKS = 40


def resolve(user_spec: dict[str, Any], rootfs: str) -> tuple[int, int, list[int]]:
    """Return ``(uid, gid, additional_gids)`` for ``user_spec`` inside ``rootfs``.

    ValueError for an unknown user or group name, OSError for an unreadable rootfs file.
    """
    user = str(user_spec.get("user") or "").strip()
    group = str(user_spec.get("group") or "").strip()
    extra = [int(g) for g in user_spec.get("supplemental_groups") or []]
    strict = bool(user_spec.get("strict"))

    passwd = list(_passwd_entries(rootfs))
    uid, gid, name = _resolve_user(user or "0", passwd)
    if group:
        gid = _resolve_group(group, rootfs)

    gids = [gid]
    if not strict and name:
        gids += [g for g, members in _group_entries(rootfs) if name in members]
    gids += extra
    return uid, gid, _dedup(gids)


def _resolve_user(user: str, passwd: list[tuple[str, int, int]]) -> tuple[int, int, str]:
    """``(uid, primary gid, name or "")`` for a name or numeric uid."""
    if user.isdigit():
        uid = int(user)
        for name, entry_uid, entry_gid in passwd:
            if entry_uid == uid:
                return uid, entry_gid, name
        return uid, 0, ""
    for name, entry_uid, entry_gid in passwd:
        if name == user:
            return entry_uid, entry_gid, name
    where = "the image's /etc/passwd" if passwd else "the image (it has no usable /etc/passwd)"
    raise ValueError(
        f"user {user!r} not found in {where}; use a numeric uid (runAsUser) "
        "or add the user to the image"
    )


def _resolve_group(group: str, rootfs: str) -> int:
    if group.isdigit():
        return int(group)
    for name, gid, _members in _group_lines(rootfs):
        if name == group:
            return gid
    raise ValueError(
        f"group {group!r} not found in the image's /etc/group; use a numeric gid (runAsGroup) "
        "or add the group to the image"
    )


def _passwd_entries(rootfs: str) -> Iterator[tuple[str, int, int]]:
    """``(name, uid, gid)`` of each well-formed /etc/passwd line."""
    for fields in _colon_file(rootfs, "/etc/passwd"):
        if len(fields) >= 4 and fields[2].isdigit() and fields[3].isdigit():
            yield fields[0], int(fields[2]), int(fields[3])


def _group_lines(rootfs: str) -> Iterator[tuple[str, int, list[str]]]:
    """``(name, gid, members)`` of each well-formed /etc/group line."""
    for fields in _colon_file(rootfs, "/etc/group"):
        if len(fields) >= 3 and fields[2].isdigit():
            members = [m.strip() for m in fields[3].split(",")] if len(fields) > 3 else []
            yield fields[0], int(fields[2]), [m for m in members if m]


def _group_entries(rootfs: str) -> Iterator[tuple[int, list[str]]]:
    for _name, gid, members in _group_lines(rootfs):
        yield gid, members


def _colon_file(rootfs: str, path: str) -> Iterator[list[str]]:
    try:
        with open_in_root(rootfs, path) as f:
            text = f.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            yield line.split(":")


def open_in_root(rootfs: str, path: str) -> TextIO:
    """Open ``path`` as seen from inside ``rootfs``, following symlinks without escaping it."""
    return open(resolve_in_root(rootfs, path), encoding="utf-8", errors="replace")


def resolve_in_root(rootfs: str, path: str) -> str:
    """The host path of ``path`` inside ``rootfs``, with every symlink resolved within ``rootfs``.

    ``..`` never climbs above the rootfs and absolute link targets restart at the rootfs, the
    way the kernel would resolve them after chroot. Missing components are left as they are.
    """
    root = os.path.abspath(rootfs)
    todo = [p for p in path.split("/") if p]
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = os.path.join(root, *done, part)
        if os.path.islink(candidate):
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(f"too many levels of symbolic links resolving {path!r} in {rootfs}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p] + todo
            continue
        done.append(part)
    return os.path.join(root, *done)


def _dedup(values: list[int]) -> list[int]:
    seen: set[int] = set()
    out = []
    for v in values:
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out
