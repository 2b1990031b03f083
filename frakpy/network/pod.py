"""A pod's network, end to end: netns -> loopback -> CNI ADD -> tap + tc -> guest NIC config.

Every step that acquires something registers its undo on an AsyncExitStack; if a later step
fails, the stack unwinds (tap, CNI DEL, loopback, netns) and the original error is raised, so
a failed RunPodSandbox leaves no netns, no tap and no IPAM lease behind.

Restart safety: :class:`PodNetworkInfo.cni_cache_json` (an :class:`~frakpy.network.cni.Attachment`)
holds everything CNI DEL needs; the caller persists it with the sandbox and hands it back to
:meth:`PodNetwork.teardown`. The same JSON is also written to ``<state_dir>/<netns>.json``
*before* CNI ADD runs, so a crash mid-setup can still be cleaned up by
:meth:`PodNetwork.cleanup_orphans` even though the sandbox record never got it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from frakpy.errors import FrakpyError
from frakpy.network import netns
from frakpy.network import tap as tapdev
from frakpy.network.cni import (
    CNI,
    DEFAULT_BIN_DIRS,
    DEFAULT_CONF_DIR,
    DEFAULT_IFNAME,
    DNS,
    Attachment,
    CNIError,
    CNIResult,
    DNSConfig,
    NetworkConfigList,
    PortMapping,
    RuntimeConf,
    capability_args,
    k8s_args,
)

log = logging.getLogger("frakpy.network")

DEFAULT_STATE_DIR = "/run/frakpy/network"

RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RTPROT_KERNEL = 2
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
RTNH_F_ONLINK = 4
SCOPE_NAMES = {0: "universe", 200: "site", 253: "link", 254: "host"}


@dataclass
class PodIP:
    ip: str
    prefixlen: int
    version: int
    gateway: str | None = None

    @property
    def cidr(self) -> str:
        return f"{self.ip}/{self.prefixlen}"


@dataclass
class PodNetworkInfo:
    """Result of :meth:`PodNetwork.setup`.

    - ``cni_cache_json``: persist with the sandbox; pass to :meth:`PodNetwork.teardown`.
    - ``tap``: name and open fds for QEMU (``tap.fd``; close after QEMU inherited it).
    - ``mac``/``mtu``: for the guest NIC (eth0's MAC and MTU).
    - ``ips``: pod IPs (v4 and v6) with prefix and gateway, CNI result order (CRI reports
      ``ips[0]`` as PodSandboxStatus.network.ip and the rest as additional_ips).
    - ``routes``/``neighbors``: what the guest must program (read back from the pod netns,
      where the plugins put them).
    """

    sandbox_id: str
    netns_name: str
    netns_path: str
    cni_cache_json: str
    result: CNIResult
    tap: tapdev.TapInfo
    mac: str
    mtu: int
    ips: list[PodIP] = field(default_factory=list)
    routes: list[dict[str, Any]] = field(default_factory=list)
    neighbors: list[dict[str, str]] = field(default_factory=list)
    addresses: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tap_name(self) -> str:
        return self.tap.name

    @property
    def tap_fd(self) -> int:
        return self.tap.fd

    @property
    def dns(self) -> DNS:
        return self.result.dns

    def ip_of(self, version: int) -> PodIP | None:
        return next((i for i in self.ips if i.version == version), None)

    def guest_config(self) -> dict[str, Any]:
        """Exactly what the guest agent's ``netconf.apply()`` takes (JSON-serialisable)."""
        return {
            "mac": self.mac,
            "mtu": self.mtu,
            "addresses": [dict(a) for a in self.addresses],
            "routes": [dict(r) for r in self.routes],
            "neighbors": [dict(n) for n in self.neighbors],
        }


# ------------------------------------------------------------------ reading the pod netns


def _read_guest_nic(peer: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, str]]]:
    """Addresses, routes and static neighbours of ``peer`` in the current thread's netns."""
    from pyroute2 import IPRoute

    addresses: list[dict[str, Any]] = []
    routes: list[dict[str, Any]] = []
    neighbors: list[dict[str, str]] = []
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=peer)
        if not idx:
            return addresses, routes, neighbors
        index = idx[0]
        for a in ipr.get_addr(index=index):
            ip = ipaddress.ip_address(a.get("IFA_ADDRESS"))
            if ip.is_link_local:
                continue  # the guest makes its own fe80:: from the (same) MAC
            addresses.append({"address": str(ip), "prefixlen": a["prefixlen"], "family": ip.version})
        for family in (socket.AF_INET, socket.AF_INET6):
            for r in ipr.get_routes(family=family, table=RT_TABLE_MAIN):
                if r.get("RTA_OIF") != index or r["type"] != RTN_UNICAST or r["proto"] == RTPROT_KERNEL:
                    continue
                dst = r.get("RTA_DST")
                plen = r["dst_len"]
                if dst is None:
                    dst = "0.0.0.0" if family == socket.AF_INET else "::"
                net = ipaddress.ip_network(f"{dst}/{plen}", strict=False)
                if net.is_link_local and net.version == 6:
                    continue
                route: dict[str, Any] = {"dst": str(net), "family": net.version}
                gw = r.get("RTA_GATEWAY")
                if gw:
                    route["gateway"] = gw
                route["scope"] = SCOPE_NAMES.get(r["scope"], r["scope"])
                if r.get("RTA_PRIORITY") is not None:
                    route["metric"] = r.get("RTA_PRIORITY")
                if r["flags"] & RTNH_F_ONLINK:
                    route["onlink"] = True
                routes.append(route)
        for n in ipr.get_neighbours(ifindex=index):
            dst, lladdr = n.get("NDA_DST"), n.get("NDA_LLADDR")
            if not (n["state"] & (NUD_PERMANENT | NUD_NOARP) and dst and lladdr):
                continue
            nip = ipaddress.ip_address(dst)
            group_mac = int(str(lladdr).split(":")[0], 16) & 1  # multicast/broadcast MAC
            if nip.is_multicast or nip.is_unspecified or group_mac:
                continue  # the kernel derives multicast/broadcast neighbours itself
            neighbors.append({"ip": dst, "mac": lladdr})
    # link routes (no gateway) first, so gateways are reachable when gateway routes are added
    routes.sort(key=lambda r: ("gateway" in r, r["family"]))
    return addresses, routes, neighbors


def _pod_ips(result: CNIResult, ifname: str) -> list[PodIP]:
    out = []
    for ip in result.ips_for(ifname):
        out.append(PodIP(ip=ip.ip, prefixlen=ip.prefixlen, version=ip.version, gateway=ip.gateway))
    return out


# -------------------------------------------------------------------------------- the class


OrphanCache = Mapping[str, str] | Callable[[str], str | None]


@dataclass
class PreparedNetwork:
    """A pod netns with its tap made (fds open), before the CNI plugins ran."""

    sandbox_id: str
    netns_name: str
    netns_path: str
    tap: tapdev.TapInfo


class PodNetwork:
    """Sets up and tears down pod networking. One instance per daemon."""

    def __init__(
        self,
        conf_dir: str = DEFAULT_CONF_DIR,
        bin_dirs: Sequence[str] = DEFAULT_BIN_DIRS,
        *,
        state_dir: str = DEFAULT_STATE_DIR,
        netns_dir: str = netns.NETNS_RUN_DIR,
        ifname: str = DEFAULT_IFNAME,
        tap_name: str = tapdev.TAP_NAME,
        multiqueue: bool = False,
        queues: int = 1,
        timeout: float = 60.0,
    ) -> None:
        self.cni = CNI(conf_dir, bin_dirs, timeout)
        self.state_dir = state_dir
        self.netns_dir = netns_dir
        self.ifname = ifname
        self.tap_name = tap_name
        self.multiqueue = multiqueue
        self.queues = queues

    def status(self) -> tuple[bool, str, str]:
        """(ready, reason, message) for the CRI NetworkReady condition."""
        return self.cni.status()

    # -- state files (crash safety for orphan cleanup)

    def _state_path(self, name: str) -> str:
        return os.path.join(self.state_dir, f"{name}.json")

    def _write_state(self, name: str, attachment: Attachment) -> None:
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        path = self._state_path(name)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(attachment.to_json())
        os.replace(tmp, path)

    def _read_state(self, name: str) -> Attachment | None:
        try:
            with open(self._state_path(name)) as f:
                return Attachment.from_json(f.read())
        except FileNotFoundError:
            return None
        except FrakpyError as exc:
            log.warning("ignoring unreadable network state %s: %s", self._state_path(name), exc)
            return None

    def _remove_state(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._state_path(name))

    # -- setup

    async def prepare(self, sandbox_id: str) -> PreparedNetwork:
        """First half of :meth:`setup`: the pod netns and, in it, the tap with its fds open, so
        that QEMU can start while :meth:`attach` runs the CNI plugins. Leaves nothing behind when
        it fails; after it succeeds, :meth:`teardown` undoes it (with or without :meth:`attach`)."""
        name = netns.name_for(sandbox_id)
        async with contextlib.AsyncExitStack() as stack:
            path = await netns.create_async(name, self.netns_dir)
            stack.push_async_callback(_undo, "delete netns", lambda: netns.delete_async(name, self.netns_dir))
            stack.push_async_callback(
                _undo, "tap teardown", lambda: tapdev.teardown(path, self.ifname, self.tap_name)
            )
            tap = await tapdev.create(path, self.ifname, self.tap_name, multiqueue=self.multiqueue,
                                      queues=self.queues)
            stack.pop_all()
            return PreparedNetwork(sandbox_id, name, path, tap)
        raise AssertionError("unreachable")  # pragma: no cover

    async def attach(
        self,
        prepared: PreparedNetwork,
        pod_name: str,
        namespace: str,
        uid: str,
        port_mappings: Sequence[PortMapping] = (),
        dns: DNSConfig | None = None,
        *,
        bandwidth: Mapping[str, int] | None = None,
    ) -> PodNetworkInfo:
        """Second half of :meth:`setup`: loopback + the CNI chain in the prepared netns, then the
        tap spliced to eth0. On failure it undoes its own steps (CNI DEL, loopback, state); the
        netns and tap stay for the caller's :meth:`teardown`."""
        net = self.cni.load()
        sandbox_id, name, path, tap = prepared.sandbox_id, prepared.netns_name, prepared.netns_path, prepared.tap
        async with contextlib.AsyncExitStack() as stack:
            rt = RuntimeConf(
                container_id=sandbox_id,
                netns=path,
                ifname=self.ifname,
                args=k8s_args(namespace, pod_name, sandbox_id, uid),
                capability_args=capability_args(port_mappings, dns, bandwidth),
            )
            attachment = Attachment(network=net, runtime=rt, result=None, loopback=True)
            self._write_state(name, attachment)
            stack.push_async_callback(_undo, "remove network state", _sync(self._remove_state, name))

            stack.push_async_callback(_undo, "loopback DEL", lambda: self.cni.loopback_down(path, sandbox_id))
            await self.cni.loopback_up(path, sandbox_id)

            # DEL is registered before ADD: a chain failing halfway must be unwound too.
            stack.push_async_callback(_undo, "CNI DEL", lambda: self.cni.delete(net, rt, attachment.result))
            result = await self.cni.add(net, rt)
            attachment.result = result
            self._write_state(name, attachment)

            await tapdev.splice(tap)

            addresses, routes, neighbors = await netns.run_in_async(
                path, lambda: _read_guest_nic(self.ifname)
            )
            parsed = CNIResult.from_dict(result)
            info = PodNetworkInfo(
                sandbox_id=sandbox_id,
                netns_name=name,
                netns_path=path,
                cni_cache_json=attachment.to_json(),
                result=parsed,
                tap=tap,
                mac=tap.mac,
                mtu=tap.mtu,
                ips=_pod_ips(parsed, self.ifname),
                routes=routes,
                neighbors=neighbors,
                addresses=addresses,
            )
            stack.pop_all()
            return info
        raise AssertionError("unreachable")  # pragma: no cover

    async def setup(
        self,
        sandbox_id: str,
        pod_name: str,
        namespace: str,
        uid: str,
        port_mappings: Sequence[PortMapping] = (),
        dns: DNSConfig | None = None,
        *,
        bandwidth: Mapping[str, int] | None = None,
    ) -> PodNetworkInfo:
        """Create the pod netns, run loopback + the CNI chain in it, splice a tap to eth0
        (:meth:`prepare` then :meth:`attach`).

        Raises FailedPrecondition when no usable network config exists, CNIError (UNAVAILABLE)
        when a plugin fails; in every failure case all partial work has been undone."""
        self.cni.load()  # no usable config: fail before making anything
        prepared = await self.prepare(sandbox_id)
        try:
            return await self.attach(prepared, pod_name, namespace, uid, port_mappings, dns, bandwidth=bandwidth)
        except BaseException:
            await self.discard(prepared)
            raise

    async def discard(self, prepared: PreparedNetwork) -> None:
        """Undo :meth:`prepare` when :meth:`attach` failed (it unwound its CNI steps itself) or
        never ran: the tap and the netns, no CNI DEL."""
        prepared.tap.close()
        await _undo("tap teardown", lambda: tapdev.teardown(prepared.netns_path, self.ifname, self.tap_name))
        await _undo("delete netns", lambda: netns.delete_async(prepared.netns_name, self.netns_dir))
        self._remove_state(prepared.netns_name)

    # -- teardown

    async def teardown(self, sandbox_id: str, cached_result_json: str | None = None) -> None:
        """Undo :meth:`setup`: tap, CNI DEL (reverse chain), loopback, netns. Idempotent.

        Works after a daemon restart from the sandbox id and the cached JSON alone; without the
        JSON it falls back to the state file, then to the current network config (DEL without
        prevResult). If CNI DEL fails the netns and state are kept so a retry can finish."""
        name = netns.name_for(sandbox_id)
        attachment: Attachment | None = None
        if cached_result_json:
            attachment = Attachment.from_json(cached_result_json)
        if attachment is None:
            attachment = self._read_state(name)
        await self._teardown(name, sandbox_id, attachment)

    async def _teardown(self, name: str, sandbox_id: str, attachment: Attachment | None) -> None:
        path = netns.path_for(name, self.netns_dir)
        if attachment is None:
            try:
                net: NetworkConfigList | None = self.cni.load()
            except FrakpyError:
                net = None
            rt = RuntimeConf(sandbox_id, path, self.ifname)
            result = None
            loopback = True
        else:
            net, rt, result, loopback = (
                attachment.network,
                attachment.runtime,
                attachment.result,
                attachment.loopback,
            )
            rt = RuntimeConf(rt.container_id, path, rt.ifname, rt.args, rt.capability_args)

        try:
            await tapdev.teardown(path, rt.ifname, self.tap_name)
        except Exception as exc:  # the tap dies with the netns anyway; CNI DEL matters more
            log.warning("tap teardown in %s failed: %s", path, exc)
        errors: list[CNIError] = []
        if net is not None:
            try:
                await self.cni.delete(net, rt, result)
            except CNIError as exc:
                errors.append(exc)
        else:
            log.warning("no cached or current CNI config for %s; skipping CNI DEL", sandbox_id)
        if loopback:
            try:
                await self.cni.loopback_down(path, rt.container_id)
            except CNIError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
        await netns.delete_async(name, self.netns_dir)
        self._remove_state(name)

    # -- orphans

    async def cleanup_orphans(
        self, known_sandbox_ids: Iterable[str], cached: OrphanCache | None = None
    ) -> list[str]:
        """Tear down ``frakpy-*`` netns (and leftover state files) that belong to no known
        sandbox. Call at daemon start, before serving CRI, so no setup is in flight.

        ``cached`` supplies cached attachment JSON: a mapping sandbox_id -> JSON, or a callable
        taking the 12-character id prefix from the netns name. The state file written by setup
        is the fallback. Returns the netns names cleaned; failures are logged, not raised."""
        known = {netns.name_for(s) for s in known_sandbox_ids}
        names = set(netns.list_names(netns.NAME_PREFIX, self.netns_dir))
        with contextlib.suppress(FileNotFoundError):
            names.update(
                f[: -len(".json")]
                for f in os.listdir(self.state_dir)
                if f.startswith(netns.NAME_PREFIX) and f.endswith(".json")
            )
        cleaned = []
        for name in sorted(names - known):
            prefix = name[len(netns.NAME_PREFIX) :]
            text: str | None = None
            if callable(cached):
                text = cached(prefix)
            elif cached is not None:
                text = next((v for k, v in cached.items() if netns.name_for(k) == name), None)
            attachment = None
            if text:
                try:
                    attachment = Attachment.from_json(text)
                except FrakpyError as exc:
                    log.warning("orphan %s: unreadable cached CNI result: %s", name, exc)
            if attachment is None:
                attachment = self._read_state(name)
            sandbox_id = attachment.runtime.container_id if attachment else prefix
            try:
                await self._teardown(name, sandbox_id, attachment)
                cleaned.append(name)
                log.info("cleaned orphaned pod network %s", name)
            except Exception as exc:  # keep going: one bad orphan must not block the rest
                log.warning("could not clean orphaned pod network %s: %s", name, exc)
        return cleaned


def _sync(fn: Callable[..., Any], *args: Any) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        fn(*args)

    return run


async def _undo(what: str, fn: Callable[[], Awaitable[Any]]) -> None:
    """Run one undo step during unwinding; log and swallow its failure so the remaining steps
    still run and the error that caused the unwinding is the one raised."""
    try:
        await fn()
    except Exception as exc:
        log.warning("network setup rollback: %s failed: %s", what, exc)
