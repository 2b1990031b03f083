"""Guest-side network files (/etc/hosts, resolv.conf) and the NIC config document.

The NIC itself is configured by ``frakpy_guest.rtnl.apply(config)``; the config it takes comes
from ``frakpy.network.pod.PodNetworkInfo.guest_config``:

    {
      "mac": "6a:...",              # the NIC to configure: the one QEMU gave eth0's MAC
      "mtu": 1500,
      "addresses": [{"address": "10.91.0.5", "prefixlen": 16, "family": 4}, ...],
      "routes": [{"dst": "0.0.0.0/0", "gateway": "10.91.0.1", "family": 4,
                  "scope": "universe", "metric": 100, "onlink": false}, ...],
      "neighbors": [{"ip": "10.91.0.1", "mac": "..."}]
    }

plus ``nic_mac`` when the NIC still has another MAC (a VM restored from a template).
"""

from __future__ import annotations

import ipaddress
import itertools
import os
from collections.abc import Iterable, Sequence

_tmp_seq = itertools.count()


def _atomic_write(path: str, text: str, mode: int = 0o644) -> None:
    # O_EXCL on a name of our own instead of tempfile.mkstemp: tempfile (with random, shutil...)
    # costs ~50 ms to import in a cold-booted TCG guest, on the SetupNetwork path.
    d = os.path.dirname(path) or "."
    os.makedirs(d, exist_ok=True)
    while True:
        tmp = os.path.join(d, f".tmp-{os.getpid()}-{next(_tmp_seq)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            break
        except FileExistsError:
            continue
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
