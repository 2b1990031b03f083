"""ContainerStats (cgroup v2 files of the container) and SandboxStats (the whole VM)."""

from __future__ import annotations

import os
import time

from frakpy.agent.protocol import agent_pb2 as pb
from frakpy.agent.protocol.ttrpc import ServerCall

USER_HZ = 100


def parse_flat(text: str) -> dict[str, int]:
    """``key value`` lines (cpu.stat, memory.stat, memory.events)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _int(text: str) -> int:
    text = text.strip()
    return int(text) if text.isdigit() else 0


def cgroup_stats(cgroup_dir: str) -> dict[str, int]:
    cpu = parse_flat(_read(os.path.join(cgroup_dir, "cpu.stat")))
    mem = parse_flat(_read(os.path.join(cgroup_dir, "memory.stat")))
    events = parse_flat(_read(os.path.join(cgroup_dir, "memory.events")))
    usage = _int(_read(os.path.join(cgroup_dir, "memory.current")))
    working_set = max(0, usage - mem.get("inactive_file", 0))
    limit = _int(_read(os.path.join(cgroup_dir, "memory.max")))  # "max" -> 0
    return {
        "cpu_usage_ns": cpu.get("usage_usec", 0) * 1000,
        "memory_usage_bytes": usage,
        "memory_working_set_bytes": working_set,
        "memory_rss_bytes": mem.get("anon", 0),
        "page_faults": mem.get("pgfault", 0),
        "major_page_faults": mem.get("pgmajfault", 0),
        "oom_kills": events.get("oom_kill", 0),
        "memory_available_bytes": max(0, limit - working_set) if limit else 0,
    }


def disk_usage(path: str) -> tuple[int, int]:
    """(bytes, inodes) used below ``path`` (allocated blocks; hard links counted once)."""
    total, inodes = 0, 0
    seen: set[tuple[int, int]] = set()
    stack = [path]
    while stack:
        d = stack.pop()
        try:
            entries = os.scandir(d)
        except OSError:
            continue
        with entries:
            for e in entries:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                inodes += 1
                total += st.st_blocks * 512
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
    return total, inodes


async def container_stats(rt, req: pb.ContainerStatsRequest, call: ServerCall) -> pb.ContainerStatsResponse:  # type: ignore[no-untyped-def]
    c = rt.get(req.container_id)
    stats = cgroup_stats(c.cgroup_dir)
    used, inodes = disk_usage(c.upper)
    return pb.ContainerStatsResponse(timestamp_ns=time.time_ns(), writable_layer_bytes=used,
                                     writable_layer_inodes=inodes, **stats)


def meminfo(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            out[parts[0].rstrip(":")] = int(parts[1]) * (1024 if len(parts) > 2 and parts[2] == "kB" else 1)
    return out


def cpu_usage_ns(proc_stat: str) -> int:
    """Busy time of all CPUs: user nice system irq softirq steal (guest time is inside user)."""
    for line in proc_stat.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            v = [int(x) for x in fields[1:]] + [0] * 10
            busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
            return busy * (1_000_000_000 // USER_HZ)
    return 0


def net_dev(text: str) -> list[dict[str, int | str]]:
    out: list[dict[str, int | str]] = []
    for line in text.splitlines()[2:]:
        if ":" not in line:
            continue
        name, rest = line.split(":", 1)
        v = [int(x) for x in rest.split()]
        if len(v) >= 11 and name.strip() != "lo":
            out.append({"name": name.strip(), "rx_bytes": v[0], "rx_errors": v[2], "tx_bytes": v[8],
                        "tx_errors": v[10]})
    return out


async def sandbox_stats(state, req: pb.SandboxStatsRequest, call: ServerCall) -> pb.SandboxStatsResponse:  # type: ignore[no-untyped-def]
    system = state.system

    def read(path: str) -> str:
        try:
            return system.read_text(path)
        except (OSError, KeyError):
            return ""

    mem = meminfo(read("/proc/meminfo"))
    total, available = mem.get("MemTotal", 0), mem.get("MemAvailable", mem.get("MemFree", 0))
    resp = pb.SandboxStatsResponse(timestamp_ns=time.time_ns(), cpu_usage_ns=cpu_usage_ns(read("/proc/stat")),
                                   memory_total_bytes=total, memory_available_bytes=available,
                                   memory_working_set_bytes=max(0, total - available))
    for nic in net_dev(read("/proc/net/dev")):
        resp.interfaces.add(**nic)
    return resp
