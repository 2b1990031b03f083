"""Configure the pod NIC with busybox `ip`, the fast path of SetupNetwork.

Importing pyroute2 inside the guest costs about 1.3 s under TCG, on the critical path of
every RunPodSandbox; a handful of busybox `ip` runs take a few milliseconds. The config is
the same document ``netconf.apply()`` takes (from the host's PodNetworkInfo.guest_config());
netconf stays the fallback for what busybox cannot express (static neighbours).
"""

from __future__ import annotations

import os
from typing import Any

from frakpy_guest import procs

IP = "/usr/bin/ip"


class IpconfError(Exception):
    pass


def find_nic(mac: str, sys_net: str = "/sys/class/net") -> str:
    want = mac.lower()
    for name in sorted(os.listdir(sys_net)):
        try:
            with open(os.path.join(sys_net, name, "address")) as f:
                if f.read().strip().lower() == want:
                    return name
        except OSError:
            continue
    raise IpconfError(f"no network interface with MAC {mac} in the guest")


def nic_for(config: dict[str, Any], sys_net: str = "/sys/class/net") -> tuple[str, bool]:
    """The NIC to configure, and whether it must first take the pod's MAC: a VM restored from a
    template still carries the template's MAC (``nic_mac``) until the agent changes it."""
    try:
        return find_nic(config["mac"], sys_net), False
    except IpconfError:
        if not config.get("nic_mac"):
            raise
    return find_nic(config["nic_mac"], sys_net), True


def commands(config: dict[str, Any], name: str) -> list[list[str]]:
    """The `ip` invocations, in order: lo up, MTU + addresses, link up, link routes, gateway routes."""
    cmds = [[IP, "link", "set", "lo", "up"]]
    if config.get("mtu"):
        cmds.append([IP, "link", "set", name, "mtu", str(config["mtu"])])
    for a in config.get("addresses", []):
        fam = "-6" if int(a.get("family", 4)) == 6 else "-4"
        cmds.append([IP, fam, "addr", "add", f"{a['address']}/{a['prefixlen']}", "dev", name])
    cmds.append([IP, "link", "set", name, "up"])
    routes = sorted(config.get("routes", []), key=lambda r: 1 if r.get("gateway") else 0)
    for r in routes:
        fam = "-6" if int(r.get("family", 4)) == 6 else "-4"
        cmd = [IP, fam, "route", "replace", r.get("dst") or "default"]
        if r.get("gateway"):
            cmd += ["via", r["gateway"]]
        cmd += ["dev", name]
        if r.get("onlink"):
            cmd.append("onlink")
        if r.get("metric") is not None:
            cmd += ["metric", str(r["metric"])]
        if not r.get("gateway") and r.get("scope") in ("link", 253):
            cmd += ["scope", "link"]
        cmds.append(cmd)
    return cmds


async def apply(state: Any, config: dict[str, Any]) -> str:
    """Configure the NIC; returns its name. Raises IpconfError with ip's message on failure."""
    if config.get("neighbors"):
        raise IpconfError("static neighbours need netconf")  # caller falls back
    reaper = procs.get_reaper(state)
    name, claim = nic_for(config)
    cmds = commands(config, name)
    if claim:
        cmds.insert(0, [IP, "link", "set", "dev", name, "address", config["mac"]])
    for cmd in cmds:
        r, w = procs.pipe()
        try:
            pid = procs.spawn(cmd, stdout=w, stderr=w)
        finally:
            os.close(w)
        code = await procs.wait(reaper, pid)
        out = os.read(r, 4096).decode(errors="replace").strip()
        os.close(r)
        if code != 0 and "File exists" not in out:  # re-applying is fine
            raise IpconfError(f"{' '.join(cmd[1:])}: {out or f'exit {procs.exit_code(code)}'}")
    return name
