"""Guest-side NIC configuration: turn the host's ``guest_config()`` into kernel state.

Pure module for the guest agent: stdlib at import time, pyroute2 imported inside the
functions that talk netlink. The config (from ``frakpy.network.pod.PodNetworkInfo.guest_config``):

    {
      "mac": "6a:...",              # the NIC to configure: the one QEMU gave eth0's MAC
      "mtu": 1500,
      "addresses": [{"address": "10.91.0.5", "prefixlen": 16, "family": 4}, ...],
      "routes": [{"dst": "0.0.0.0/0", "gateway": "10.91.0.1", "family": 4,
                  "scope": "universe", "metric": 100, "onlink": false}, ...],
      "neighbors": [{"ip": "10.91.0.1", "mac": "..."}]
    }

``apply`` is idempotent: existing addresses/routes are left alone, neighbours replaced.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

IFA_F_NODAD = 0x02
RTNH_F_ONLINK = 4
NUD_PERMANENT = 0x80
SCOPES = {"universe": 0, "site": 200, "link": 253, "host": 254}


class NetconfError(Exception):
    """The configuration cannot be applied; the message names the item and the reason."""


def _norm_mac(mac: str) -> str:
    return mac.strip().lower()


def find_nic(ipr: Any, mac: str) -> tuple[int, str]:
    """(index, name) of the link whose MAC is ``mac``."""
    want = _norm_mac(mac)
    for link in ipr.get_links():
        if _norm_mac(str(link.get("IFLA_ADDRESS") or "")) == want and link.get("IFLA_IFNAME") != "lo":
            return link["index"], link.get("IFLA_IFNAME")
    raise NetconfError(f"no network interface with MAC {mac}; check the VM's NIC mac= matches the pod's eth0")


def _exists(exc: Exception) -> bool:
    return getattr(exc, "code", None) == errno.EEXIST


def _route_sort_key(r: Mapping[str, Any]) -> tuple[bool, int]:
    return ("gateway" in r and bool(r["gateway"]), int(r.get("family", 4)))


def apply(config: Mapping[str, Any], *, nodad: bool = True, loopback: bool = True) -> str:
    """Configure the NIC described by ``config``; returns its interface name.

    Order: loopback up, MTU, addresses (IPv6 without duplicate detection: the address is the
    pod's own and unique on its link), link up, routes (link-scope first so gateways resolve),
    static neighbours."""
    from pyroute2 import IPRoute

    if not config.get("mac"):
        raise NetconfError('network config has no "mac"; cannot tell which NIC to configure')
    with IPRoute() as ipr:
        if loopback:
            lo = ipr.link_lookup(ifname="lo")
            if lo:
                ipr.link("set", index=lo[0], state="up")
        try:
            index, name = find_nic(ipr, config["mac"])
        except NetconfError:
            if not config.get("nic_mac"):
                raise
            # restored from a VM template: the NIC still has the template's MAC
            index, name = find_nic(ipr, config["nic_mac"])
            ipr.link("set", index=index, address=config["mac"])
        if config.get("mtu"):
            ipr.link("set", index=index, mtu=int(config["mtu"]))

        for a in config.get("addresses", []):
            ip = ipaddress.ip_address(a["address"])
            kw: dict[str, Any] = {"index": index, "address": str(ip), "prefixlen": int(a["prefixlen"])}
            if ip.version == 6 and nodad:
                kw["flags"] = IFA_F_NODAD
            try:
                ipr.addr("add", **kw)
            except Exception as exc:
                if not _exists(exc):
                    raise NetconfError(f"adding address {ip}/{a['prefixlen']} to {name}: {exc}") from exc

        ipr.link("set", index=index, state="up")

        for r in sorted(config.get("routes", []), key=_route_sort_key):
            net = ipaddress.ip_network(r["dst"], strict=False)
            kw = {
                "dst": str(net.network_address),
                "dst_len": net.prefixlen,
                "oif": index,
                "family": socket.AF_INET6 if net.version == 6 else socket.AF_INET,
            }
            if r.get("gateway"):
                kw["gateway"] = r["gateway"]
            scope = r.get("scope")
            if scope is not None:
                kw["scope"] = SCOPES.get(scope, scope) if isinstance(scope, str) else int(scope)
            elif not r.get("gateway"):
                kw["scope"] = SCOPES["link"]
            if r.get("metric") is not None:
                kw["priority"] = int(r["metric"])
            if r.get("onlink"):
                kw["flags"] = RTNH_F_ONLINK
            try:
                ipr.route("add", **kw)
            except Exception as exc:
                if not _exists(exc):
                    raise NetconfError(f"adding route {net} via {r.get('gateway') or name}: {exc}") from exc

        for n in config.get("neighbors", []):
            ip = ipaddress.ip_address(n["ip"])
            try:
                ipr.neigh(
                    "replace",
                    dst=str(ip),
                    lladdr=n["mac"],
                    ifindex=index,
                    state=NUD_PERMANENT,
                    family=socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                )
            except Exception as exc:
                raise NetconfError(f"adding neighbour {ip} at {n['mac']} on {name}: {exc}") from exc
    return str(name)


def _atomic_write(path: str, text: str, mode: int = 0o644) -> None:
    d = os.path.dirname(path) or "."
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def render_resolv_conf(
    servers: Sequence[str], searches: Sequence[str] = (), options: Sequence[str] = ()
) -> str:
    lines = []
    if searches:
        lines.append("search " + " ".join(searches))
    lines.extend(f"nameserver {s}" for s in servers)
    if options:
        lines.append("options " + " ".join(options))
    return "\n".join(lines) + "\n"


def write_resolv_conf(
    servers: Sequence[str],
    searches: Sequence[str] = (),
    options: Sequence[str] = (),
    path: str = "/etc/resolv.conf",
) -> None:
    """Write resolv.conf from a CRI DNSConfig (servers, searches, options like ``ndots:5``)."""
    _atomic_write(path, render_resolv_conf(servers, searches, options))


def render_hosts(hostname: str, ips: Iterable[str], aliases: Sequence[str] = ()) -> str:
    lines = [
        "# Kubernetes-managed hosts file.",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "fe00::0\tip6-mcastprefix",
        "fe00::1\tip6-allnodes",
        "fe00::2\tip6-allrouters",
    ]
    names = " ".join([hostname, *aliases]) if hostname else ""
    if names:
        for ip in ips:
            lines.append(f"{ipaddress.ip_address(ip)}\t{names}")
    return "\n".join(lines) + "\n"


def write_hosts(
    hostname: str, ips: Iterable[str], path: str = "/etc/hosts", aliases: Sequence[str] = ()
) -> None:
    """Write /etc/hosts: localhost entries plus ``hostname`` on each pod IP."""
    _atomic_write(path, render_hosts(hostname, ips, aliases))
