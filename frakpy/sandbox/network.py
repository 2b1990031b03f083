"""The sandbox manager's view of pod networking: PodNetwork, adapted to sandbox records.

What is kept in ``Sandbox.network`` (persisted): the netns path, pod IPs, MAC/MTU, the
guest NIC configuration and the CNI cache JSON that CNI DEL needs after a restart.
"""

from __future__ import annotations

import contextlib
from typing import Any

from frakpy.network.cni import DNSConfig, PortMapping
from frakpy.network.pod import PodNetwork, PreparedNetwork
from frakpy.network.tap import TapInfo
from frakpy.sandbox.manager import RunRequest
from frakpy.sandbox.model import Sandbox


class SandboxNetwork:
    def __init__(self, pod_network: PodNetwork) -> None:
        self.net = pod_network
        self._taps: dict[str, TapInfo] = {}  # tap fds held until QEMU has inherited them
        self._prepared: dict[str, PreparedNetwork] = {}  # netns + tap made, CNI not run yet
        self._discarded: set[str] = set()  # attach failed and undid everything

    def status(self) -> tuple[bool, str, str]:
        return self.net.status()

    async def prepare(self, sb: Sandbox) -> tuple[tuple[int, ...], dict[str, Any]]:
        """The netns and tap of the pod: (tap fds for QEMU, VMSpec overrides). The CNI plugins run
        in :meth:`attach`, meanwhile the VM starts; the guest NIC gets the pod's MAC from the
        agent (SetupNetwork), as it is known only once the plugins made eth0."""
        self.net.cni.load()  # no usable network config: refuse before making anything
        prepared = await self.net.prepare(sb.id)
        self._prepared[sb.id] = prepared
        self._taps[sb.id] = prepared.tap
        return tuple(prepared.tap.fds), {"tap_fd": prepared.tap.fd, "tap_fds": list(prepared.tap.fds)}

    async def attach(self, sb: Sandbox, req: RunRequest) -> dict[str, Any]:
        """Run the CNI plugins for the prepared pod; returns the network record to persist."""
        md = sb.metadata
        ports = [PortMapping(container_port=p["containerPort"], host_port=p["hostPort"],
                             protocol=p["protocol"], host_ip=p.get("hostIP", ""))
                 for p in req.port_mappings]
        dns = DNSConfig(list(req.dns.servers), list(req.dns.searches), list(req.dns.options))
        prepared = self._prepared.pop(sb.id)
        try:
            info = await self.net.attach(prepared, md.name, md.namespace, md.uid, ports, dns)
        except BaseException:
            # attach unwound the CNI plugins; the netns and tap go now, and teardown() has
            # nothing left to do (a CNI DEL with a config that just failed would fail too)
            self.release_fds(sb)
            await self.net.discard(prepared)
            self._discarded.add(sb.id)
            raise
        return {
            "netns": info.netns_path,
            "ips": [ip.ip for ip in info.ips],
            "mac": info.mac,
            "mtu": info.mtu,
            "tap": info.tap.name,
            "guest": info.guest_config(),
            "cni_cache": info.cni_cache_json,
        }

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
        if sb.id in self._discarded:
            self._discarded.discard(sb.id)
            return
        prepared = self._prepared.pop(sb.id, None)
        if prepared is not None:  # the CNI plugins never ran for it
            await self.net.discard(prepared)
            return
        await self.net.teardown(sb.id, sb.network.get("cni_cache") or None)

    async def cleanup_orphans(self, known: dict[str, Sandbox]) -> list[str]:
        cached = {sid[:12]: sb.network.get("cni_cache") for sid, sb in known.items() if sb.network}
        return await self.net.cleanup_orphans(list(known), cached)

