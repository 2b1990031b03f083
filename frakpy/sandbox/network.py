"""The sandbox manager's view of pod networking: PodNetwork, adapted to sandbox records.

What is kept in ``Sandbox.network`` (persisted): the netns path, pod IPs, MAC/MTU, the
guest NIC configuration and the CNI cache JSON that CNI DEL needs after a restart.
"""

from __future__ import annotations

import contextlib
from typing import Any

from frakpy.network.cni import DNSConfig, PortMapping
from frakpy.network.pod import PodNetwork
from frakpy.network.tap import TapInfo
from frakpy.sandbox.manager import RunRequest
from frakpy.sandbox.model import Sandbox


class SandboxNetwork:
    def __init__(self, pod_network: PodNetwork) -> None:
        self.net = pod_network
        self._taps: dict[str, TapInfo] = {}  # tap fds held until QEMU has inherited them

    def status(self) -> tuple[bool, str, str]:
        return self.net.status()

    async def setup(self, sb: Sandbox, req: RunRequest) -> tuple[dict[str, Any], tuple[int, ...], dict[str, Any]]:
        md = sb.metadata
        ports = [PortMapping(container_port=p["containerPort"], host_port=p["hostPort"],
                             protocol=p["protocol"], host_ip=p.get("hostIP", ""))
                 for p in req.port_mappings]
        dns = DNSConfig(list(req.dns.servers), list(req.dns.searches), list(req.dns.options))
        info = await self.net.setup(sb.id, md.name, md.namespace, md.uid, ports, dns)
        self._taps[sb.id] = info.tap
        record = {
            "netns": info.netns_path,
            "ips": [ip.ip for ip in info.ips],
            "mac": info.mac,
            "mtu": info.mtu,
            "tap": info.tap.name,
            "guest": info.guest_config(),
            "cni_cache": info.cni_cache_json,
        }
        return record, tuple(info.tap.fds), {"tap_fd": info.tap.fd, "tap_fds": list(info.tap.fds), "mac": info.mac}

    def release_fds(self, sb: Sandbox) -> None:
        """QEMU has its own copies of the tap fds once spawned; drop ours."""
        tap = self._taps.pop(sb.id, None)
        if tap is not None:
            with contextlib.suppress(OSError):
                tap.close()

    async def guest_config(self, sb: Sandbox) -> dict[str, Any]:
        self.release_fds(sb)
        return dict(sb.network.get("guest", {}))

    async def teardown(self, sb: Sandbox) -> None:
        self.release_fds(sb)
        await self.net.teardown(sb.id, sb.network.get("cni_cache") or None)

    async def cleanup_orphans(self, known: dict[str, Sandbox]) -> list[str]:
        cached = {sid[:12]: sb.network.get("cni_cache") for sid, sb in known.items() if sb.network}
        return await self.net.cleanup_orphans(list(known), cached)

