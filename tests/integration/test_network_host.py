"""Pod networking on the host with the real CNI plugins (bridge, host-local, portmap, loopback).

Everything stays on this machine: a test bridge ``frtest0`` on 10.250.77.0/24 (ipMasq off), host-local
leases in a temporary dataDir, netns under a temporary run dir, and traffic only between the host
and namespaces the tests create.

Proving the tc redirect without a VM: a "guest stand-in" netns gets a tap ``gnic`` with the pod's
MAC, configured by the guest agent's own ``rtnl.apply(info.guest_config())``; a small Python
forwarder copies frames between the pod tap fd (the one QEMU would get, with its 10-byte virtio-net
header) and the stand-in tap fd. A TCP server in the stand-in answers on the pod IP; the host reaches
it directly through the bridge and through a portmap hostPort on 127.0.0.1. Each packet thus
crosses bridge -> veth -> eth0 ingress -> mirred -> pod tap -> "QEMU" -> guest NIC, and back.
"""

import asyncio
import ctypes
import errno
import json
import os
import select
import shutil
import socket
import subprocess
import threading

import pytest

from frakpy.network import PodNetwork, PortMapping, netns
from frakpy.network import tap as tapdev
from frakpy.network.cni import CNIError
from frakpy.network.defaults import default_conflist

PLUGINS = "/usr/lib/cni"
BRIDGE = "frtest0"
SUBNET = "10.250.77.0/24"
NETNAME = "frtest"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates netns, bridges, taps, iptables rules"),
    pytest.mark.skipif(
        not all(
            os.access(f"{PLUGINS}/{p}", os.X_OK) for p in ("bridge", "host-local", "portmap", "loopback")
        ),
        reason=f"CNI plugins missing in {PLUGINS} (apt-get install containernetworking-plugins)",
    ),
    pytest.mark.skipif(
        not (shutil.which("iptables") and shutil.which("nsenter")), reason="needs iptables, nsenter"
    ),
]

from frakpy_guest import rtnl  # noqa: E402

VNET_HDR_LEN = 10  # struct virtio_net_hdr, the tap default


def sh(*argv, check=True):
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def in_ns(path, *argv, check=True):
    return sh("nsenter", f"--net={path}", "--", *argv, check=check)


def _hostport_chains_exist():
    return sh("iptables", "-t", "nat", "-S", "CNI-HOSTPORT-DNAT", check=False).returncode == 0


def _remove_idle_portmap_chains():
    """portmap never removes its top-level chains; drop them if no pod (ours or anyone's) uses them."""
    rules = sh("iptables", "-t", "nat", "-S", "CNI-HOSTPORT-DNAT", check=False).stdout.splitlines()
    if any(r.startswith("-A CNI-HOSTPORT-DNAT") for r in rules):
        return
    for chain, rule in (
        ("PREROUTING", ["-m", "addrtype", "--dst-type", "LOCAL", "-j", "CNI-HOSTPORT-DNAT"]),
        ("OUTPUT", ["-m", "addrtype", "--dst-type", "LOCAL", "-j", "CNI-HOSTPORT-DNAT"]),
        (
            "POSTROUTING",
            ["-m", "comment", "--comment", "CNI portfwd requiring masquerade", "-j", "CNI-HOSTPORT-MASQ"],
        ),
    ):
        sh("iptables", "-t", "nat", "-D", chain, *rule, check=False)
    for c in ("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK"):
        sh("iptables", "-t", "nat", "-F", c, check=False)
        sh("iptables", "-t", "nat", "-X", c, check=False)


@pytest.fixture
def env(tmp_path):
    conf = tmp_path / "net.d"
    conf.mkdir()
    ipam = tmp_path / "ipam"
    doc = default_conflist(name=NETNAME, bridge=BRIDGE, subnet=SUBNET, data_dir=str(ipam))
    (conf / "10-frtest.conflist").write_text(json.dumps(doc))
    nsdir = tmp_path / "netns"
    pn = PodNetwork(
        str(conf), [str(tmp_path / "nobin"), PLUGINS], state_dir=str(tmp_path / "state"), netns_dir=str(nsdir)
    )
    chains_before = _hostport_chains_exist()
    yield pn, conf, ipam, nsdir
    libc = ctypes.CDLL(None, use_errno=True)
    for name in os.listdir(nsdir) if nsdir.exists() else []:
        asyncio.run(pn.teardown(name.removeprefix("frakpy-")))  # best effort for failed tests
    for name in os.listdir(nsdir) if nsdir.exists() else []:
        libc.umount2(str(nsdir / name).encode(), 2)
    while nsdir.exists() and libc.umount2(str(nsdir).encode(), 2) == 0:
        pass
    sh("ip", "link", "del", BRIDGE, check=False)
    if not chains_before:
        _remove_idle_portmap_chains()


def leases(ipam):
    d = ipam / NETNAME
    return sorted(p.name for p in d.iterdir() if p.name[0].isdigit()) if d.exists() else []


# ------------------------------------------------------------------------ guest stand-in


class Wire:
    """Copies frames between two tap fds, like QEMU between the host tap and the guest NIC."""

    def __init__(self, a, a_hdr, b, b_hdr):
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._pump, args=(a, a_hdr, b, b_hdr), daemon=True),
            threading.Thread(target=self._pump, args=(b, b_hdr, a, a_hdr), daemon=True),
        ]
        for t in self.threads:
            t.start()

    def _pump(self, src, src_hdr, dst, dst_hdr):
        while not self.stop.is_set():
            r, _, _ = select.select([src], [], [], 0.1)
            if not r:
                continue
            try:
                frame = os.read(src, 65536)[src_hdr:]
            except OSError:
                return
            try:
                os.write(dst, b"\0" * dst_hdr + frame)
            except OSError as exc:
                # A tap that is not up yet refuses frames (EIO): drop the frame as a NIC with
                # its link down would, and keep pumping. (Returning here stopped this direction
                # for good when eth0's first IPv6 frames beat the stand-in's link-up: the ~1 in
                # 10 failure of the test below.)
                if exc.errno not in (errno.EIO, errno.ENOBUFS, errno.EAGAIN, errno.ENETDOWN):
                    return

    def close(self):
        self.stop.set()
        for t in self.threads:
            t.join(2)


def make_guest(path, mac):
    """In the stand-in netns: a tap 'gnic' with the pod's MAC; returns its fd (no vnet header)."""

    def body():
        from pyroute2 import IPRoute

        tapdev._make_persistent_tap("gnic", tapdev.IFF_TAP | tapdev.IFF_NO_PI, 0)
        with IPRoute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="gnic")[0], address=mac)
        return tapdev.open_tap_fds("gnic", vnet_hdr=False)[0]

    return netns.run_in(path, body)


def serve_once_per_conn(path, ip, port, stop):
    """A TCP server bound inside the netns (socket created there), answering 'pong <peer>'."""
    srv = netns.run_in(path, lambda: socket.create_server((ip, port)))
    srv.settimeout(0.2)

    def loop():
        while not stop.is_set():
            try:
                c, peer = srv.accept()
            except TimeoutError:
                continue
            with c:
                c.sendall(f"pong {peer[0]}\n".encode())
        srv.close()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


def fetch(addr, port, attempts=4):
    """Connect and read the greeting; retried because a loaded 2-core CI box (VM tests run
    alongside) can delay the first ARP exchange through the forwarder threads."""
    for i in range(attempts):
        try:
            with socket.create_connection((addr, port), timeout=3) as s:
                s.settimeout(3)
                return s.recv(100).decode().strip()
        except OSError:
            if i == attempts - 1:
                raise


# --------------------------------------------------------------------------------- tests


async def test_setup_tap_tc_and_teardown(env):
    pn, conf, ipam, nsdir = env
    assert pn.status() == (True, "", "")
    info = await pn.setup("f00d0000000000000001", "web-0", "default", "uid-1")
    try:
        ip4 = info.ip_of(4)
        assert (
            ip4 and ip4.ip.startswith("10.250.77.") and ip4.prefixlen == 24 and ip4.gateway == "10.250.77.1"
        )
        assert leases(ipam) == [ip4.ip]
        eth0 = json.loads(in_ns(info.netns_path, "ip", "-j", "addr", "show", "eth0").stdout)[0]
        assert any(a["local"] == ip4.ip for a in eth0["addr_info"])
        assert eth0["address"] == info.mac
        tap = json.loads(in_ns(info.netns_path, "ip", "-j", "-d", "link", "show", info.tap_name).stdout)[0]
        assert tap["mtu"] == eth0["mtu"] == info.mtu
        assert "UP" in tap["flags"]
        assert tap["linkinfo"]["info_data"]["type"] == "tap" and tap["linkinfo"]["info_data"]["pi"] is False
        assert (
            tap["linkinfo"]["info_data"]["vnet_hdr"] is True
            and tap["linkinfo"]["info_data"]["multi_queue"] is False
        )
        f_eth = in_ns(info.netns_path, "tc", "-s", "filter", "show", "dev", "eth0", "ingress").stdout
        f_tap = in_ns(info.netns_path, "tc", "-s", "filter", "show", "dev", info.tap_name, "ingress").stdout
        assert f"Egress Redirect to device {info.tap_name}" in f_eth
        assert "Egress Redirect to device eth0" in f_tap
        assert "10.250.77.1" in json.dumps(info.guest_config()["routes"])
        assert info.guest_config()["addresses"] == [{"address": ip4.ip, "prefixlen": 24, "family": 4}]
        assert os.fstat(info.tap_fd)  # an open fd for QEMU
        # CHECK with the cached result through the real plugins
        from frakpy.network.cni import Attachment

        att = Attachment.from_json(info.cni_cache_json)
        await pn.cni.check(att.network, att.runtime, att.result)
    finally:
        info.tap.close()
        await pn.teardown(info.sandbox_id, info.cni_cache_json)
    assert info.netns_name not in os.listdir(nsdir)
    assert leases(ipam) == []
    host_veths = [i.name for i in info.result.interfaces if not i.sandbox and i.name != BRIDGE]
    assert host_veths and not any(v in sh("ip", "-br", "link").stdout for v in host_veths)
    # idempotent, also with no cached JSON at all
    await pn.teardown(info.sandbox_id, info.cni_cache_json)
    await pn.teardown(info.sandbox_id)


async def test_redirect_end_to_end_with_guest_standin_and_hostport(env):
    pn, conf, ipam, nsdir = env
    info = await pn.setup(
        "f00d0000000000000002",
        "web-1",
        "default",
        "uid-2",
        [PortMapping(container_port=8080, host_port=18080)],
    )
    guest = netns.create("frtest-guest", str(nsdir))
    stop = threading.Event()
    wire = None
    try:
        gfd = make_guest(guest, info.mac)
        wire = Wire(info.tap_fd, VNET_HDR_LEN, gfd, 0)
        assert netns.run_in(guest, lambda: rtnl.apply(info.guest_config())) == "gnic"
        ip4 = info.ip_of(4).ip
        serve_once_per_conn(guest, ip4, 8080, stop)
        # host -> bridge -> veth -> eth0 --tc--> tap -> wire -> guest, and back
        assert (await asyncio.to_thread(fetch, ip4, 8080)).startswith("pong 10.250.77.1")
        # hostPort through portmap's DNAT on 127.0.0.1 (portmap sets route_localnet and masquerades)
        assert (await asyncio.to_thread(fetch, "127.0.0.1", 18080)).startswith("pong ")
        stats = in_ns(info.netns_path, "tc", "-s", "filter", "show", "dev", "eth0", "ingress").stdout
        assert "Sent 0 bytes" not in stats
    finally:
        stop.set()
        if wire:
            wire.close()
        netns.delete("frtest-guest", str(nsdir))
        info.tap.close()
        await pn.teardown(info.sandbox_id, info.cni_cache_json)
    assert leases(ipam) == []
    assert "f00d00000000" not in sh("iptables", "-t", "nat", "-S").stdout  # portmap rules gone


async def test_broken_conflist_not_ready(env):
    pn, conf, ipam, nsdir = env
    (conf / "00-broken.conflist").write_text('{"cniVersion": "1.0.0", "name": ')
    ready, reason, message = pn.status()
    assert not ready and reason == "NetworkPluginNotReady"
    assert "00-broken.conflist" in message and str(conf) in message


async def test_plugin_failure_mid_chain_unwinds_everything(env):
    pn, conf, ipam, nsdir = env
    doc = default_conflist(name=NETNAME, bridge=BRIDGE, subnet=SUBNET, data_dir=str(ipam))
    # bridge + portmap succeed, then tuning fails on a sysctl that does not exist
    doc["plugins"].append({"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.frakpy_no_such_knob": "1"}})
    (conf / "10-frtest.conflist").write_text(json.dumps(doc))
    before = sh("ip", "-br", "link").stdout.count("veth")
    with pytest.raises(CNIError) as ei:
        await pn.setup("f00d0000000000000003", "web-2", "default", "uid-3")
    assert ei.value.plugin == "tuning" and "frakpy_no_such_knob" in ei.value.cni_msg
    assert os.listdir(nsdir) == []
    assert leases(ipam) == []
    assert sh("ip", "-br", "link").stdout.count("veth") == before
