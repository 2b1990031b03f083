"""The pod's tap device, spliced to the CNI interface with tc (the "tcfilter" model).

Inside the pod netns the CNI plugins leave ``eth0`` (addresses, routes, the peer on the bridge).
We add a tap and join the two with two tc rules, so every frame arriving on one leaves through
the other unchanged:

    ingress qdisc (ffff:) on eth0 + u32 match-all -> mirred egress redirect to tap
    ingress qdisc (ffff:) on tap  + u32 match-all -> mirred egress redirect to eth0

QEMU reads/writes the tap, so the guest NIC is effectively plugged into eth0's wire. The guest
NIC must carry **eth0's MAC**: the bridge/peer and every ARP/NDP cache outside the pod know the
pod by that MAC, and the IP addresses move into the guest unchanged.

Promiscuous mode is not needed on eth0: the ingress hook runs before the stack checks the
destination MAC, and frames for the pod are addressed to eth0's own MAC (= the guest's MAC)
or to broadcast/multicast anyway. Promiscuity matters only for NICs that filter in hardware
(macvlan, physical), which would drop other-MAC frames before tc sees them; veth/bridge
plugins never do.

tc is programmed with pyroute2's netlink ``tc()`` (ingress qdisc, u32 filter with a mirred
action), not the ``tc`` binary: no dependency on iproute2 at runtime and errors come back as
errno values, not text.

The tap is made persistent and owned by root (uid 0) with an ioctl on /dev/net/tun opened
*inside* the pod netns (a tun file binds to the netns current at open()). For QEMU we then
open /dev/net/tun again (still inside the netns) and attach to the existing tap with
TUNSETIFF(IFF_TAP|IFF_NO_PI|IFF_VNET_HDR[|IFF_MULTI_QUEUE]); those fds go to QEMU as
``-netdev tap,id=net0,fd=N`` (or ``fds=N:M`` with multi-queue).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from dataclasses import dataclass, field

from frakpy.errors import FailedPrecondition, InvalidArgument, NotFound
from frakpy.network import netns

TAP_NAME = "tap0_frakpy"
ETH_P_ALL = 0x0003
FILTER_PRIO = 49152
INGRESS_HANDLE = 0xFFFF0000

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOWNER = 0x400454CC
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFNAMSIZ = 16


@dataclass
class TapInfo:
    """What QEMU needs for the pod NIC. ``fds`` are open tun fds attached to ``name`` (one per
    queue), CLOEXEC; the caller owns them: hand them to QEMU (``pass_fds``, or QMP ``getfd``)
    and close its own copies afterwards."""

    name: str
    ifindex: int
    mac: str  # eth0's MAC, known once spliced: give it to the guest NIC
    mtu: int
    netns: str
    peer: str = "eth0"
    vnet_hdr: bool = True
    fds: list[int] = field(default_factory=list)

    @property
    def fd(self) -> int:
        return self.fds[0]

    def close(self) -> None:
        while self.fds:
            try:
                os.close(self.fds.pop())
            except OSError:
                pass

    def qemu_args(self, netdev_id: str = "net0", device: str = "virtio-net-device") -> list[str]:
        """Example argv fragment (fds must be inherited by QEMU under the same numbers)."""
        if len(self.fds) > 1:
            fdspec = "fds=" + ":".join(str(f) for f in self.fds)
            extra = ",mq=on" + (f",vectors={2 * len(self.fds) + 2}" if device.endswith("-pci") else "")
        else:
            fdspec, extra = f"fd={self.fds[0]}", ""
        return [
            "-netdev",
            f"tap,id={netdev_id},{fdspec}",
            "-device",
            f"{device},netdev={netdev_id},mac={self.mac},host_mtu={self.mtu}{extra}",
        ]


def _ifreq(name: str, flags: int) -> bytes:
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ:
        raise InvalidArgument(f"tap name {name!r} must be 1-15 bytes")
    return struct.pack("16sH22x", raw, flags)


def _tun_flags(multiqueue: bool, vnet_hdr: bool) -> int:
    flags = IFF_TAP | IFF_NO_PI
    if vnet_hdr:
        flags |= IFF_VNET_HDR
    if multiqueue:
        flags |= IFF_MULTI_QUEUE
    return flags


def _make_persistent_tap(name: str, flags: int, owner: int) -> None:
    """Create (or reuse) persistent tap ``name`` in the current thread's netns."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, _ifreq(name, flags))
        fcntl.ioctl(fd, TUNSETOWNER, owner)
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    finally:
        os.close(fd)


def open_tap_fds(name: str, queues: int = 1, multiqueue: bool = False, vnet_hdr: bool = True) -> list[int]:
    """Attach to an existing tap in the *current thread's* netns; one fd per queue."""
    flags = _tun_flags(multiqueue, vnet_hdr)
    fds: list[int] = []
    try:
        for _ in range(queues if multiqueue else 1):
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
            fds.append(fd)
            fcntl.ioctl(fd, TUNSETIFF, _ifreq(name, flags))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def _ingress(ipr, index: int) -> None:  # type: ignore[no-untyped-def]
    try:
        ipr.tc("del", "ingress", index, "ffff:")
    except Exception as exc:  # NetlinkError: none there yet
        if getattr(exc, "code", None) not in (errno.EINVAL, errno.ENOENT, errno.ENODEV):
            raise
    ipr.tc("add", "ingress", index, "ffff:")


def _redirect(ipr, from_index: int, to_index: int) -> None:  # type: ignore[no-untyped-def]
    """u32 match-all on from's ingress -> mirred egress redirect to ``to``."""
    ipr.tc(
        "add-filter",
        "u32",
        from_index,
        parent=INGRESS_HANDLE,
        protocol=ETH_P_ALL,
        prio=FILTER_PRIO,
        keys=["0x0/0x0+0"],
        target=0x1,
        action=[{"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": to_index}],
    )


def _disable_ipv6(ifname: str) -> None:
    """The tap is a wire, not a host interface: no link-local address, no RS/MLD of its own.
    /proc/sys/net shows the netns of the opening thread."""
    try:
        with open(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6", "w") as f:
            f.write("1")
    except OSError:
        pass


def _create_in_netns(netns_path: str, peer: str, tap_name: str, multiqueue: bool, queues: int,
                     vnet_hdr: bool, owner: int) -> TapInfo:
    from pyroute2 import IPRoute

    _make_persistent_tap(tap_name, _tun_flags(multiqueue, vnet_hdr), owner)
    with IPRoute() as ipr:
        tap_index = ipr.link_lookup(ifname=tap_name)[0]
        _disable_ipv6(tap_name)
        ipr.link("set", index=tap_index, state="up")
    fds = open_tap_fds(tap_name, queues, multiqueue, vnet_hdr)
    return TapInfo(name=tap_name, ifindex=tap_index, mac="", mtu=0, netns=netns_path, peer=peer,
                   vnet_hdr=vnet_hdr, fds=fds)


def _splice_in_netns(tap: TapInfo) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=tap.peer)
        if not found:
            raise NotFound(
                f"interface {tap.peer} not found in {tap.netns}; the CNI plugins did not create it "
                "(check the network config's plugin chain)"
            )
        eth_index = found[0]
        eth = ipr.get_links(eth_index)[0]
        mtu = int(eth.get("mtu"))
        mac = str(eth.get("address"))
        ipr.link("set", index=tap.ifindex, mtu=mtu)
        _ingress(ipr, eth_index)
        _ingress(ipr, tap.ifindex)
        _redirect(ipr, eth_index, tap.ifindex)
        _redirect(ipr, tap.ifindex, eth_index)
    tap.mac, tap.mtu = mac, mtu


async def _in_netns(netns_path: str, tap_name: str, peer: str, fn):  # type: ignore[no-untyped-def]
    try:
        return await netns.run_in_async(netns_path, fn)
    except OSError as exc:
        raise FailedPrecondition(
            f"cannot set up tap {tap_name} in {netns_path}: {exc} (needs root, /dev/net/tun, and the "
            "kernel's sch_ingress, cls_u32 and act_mirred)"
        ) from exc
    except Exception as exc:
        if type(exc).__name__ == "NetlinkError":
            raise FailedPrecondition(
                f"cannot set up tc redirect between {peer} and {tap_name} in {netns_path}: {exc} "
                "(the kernel needs sch_ingress, cls_u32 and act_mirred)"
            ) from exc
        raise


async def create(
    netns_path: str,
    peer: str = "eth0",
    tap_name: str = TAP_NAME,
    *,
    multiqueue: bool = False,
    queues: int = 1,
    vnet_hdr: bool = True,
    owner: int = 0,
) -> TapInfo:
    """Create the tap in the pod netns (up, no IPv6 of its own) and open its fds for QEMU. It is
    not joined to ``peer`` yet (:func:`splice`), so it can be made before the CNI plugins run and
    QEMU can start meanwhile; ``mac``/``mtu`` are filled in by :func:`splice`."""
    if queues < 1 or (queues > 1 and not multiqueue):
        raise InvalidArgument(f"tap queues={queues} needs multiqueue=True when above 1")
    info: TapInfo = await _in_netns(
        netns_path, tap_name, peer,
        lambda: _create_in_netns(netns_path, peer, tap_name, multiqueue, queues, vnet_hdr, owner))
    return info


async def splice(tap: TapInfo) -> None:
    """Join the tap to its peer (eth0, once the CNI plugins made it) with the two tc redirects,
    give it the peer's MTU, and record the peer's MAC (the guest NIC must carry it)."""
    await _in_netns(tap.netns, tap.name, tap.peer, lambda: _splice_in_netns(tap))


def _teardown_in_netns(peer: str, tap_name: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for name in (peer, tap_name):
            idx = ipr.link_lookup(ifname=name)
            if not idx:
                continue
            try:
                ipr.tc("del", "ingress", idx[0], "ffff:")  # drops its filters too
            except Exception as exc:
                if getattr(exc, "code", None) not in (errno.EINVAL, errno.ENOENT, errno.ENODEV):
                    raise
        idx = ipr.link_lookup(ifname=tap_name)
        if idx:
            try:
                ipr.link("del", index=idx[0])
            except Exception as exc:
                if getattr(exc, "code", None) != errno.ENODEV:
                    raise


async def teardown(netns_path: str, peer: str = "eth0", tap_name: str = TAP_NAME) -> None:
    """Remove the tc plumbing and the tap. Idempotent; a missing netns means nothing to do
    (the tap and qdiscs died with it)."""
    if not os.path.exists(netns_path):  # noqa: ASYNC240 - one stat of a tmpfs path
        return
    await netns.run_in_async(netns_path, lambda: _teardown_in_netns(peer, tap_name))
