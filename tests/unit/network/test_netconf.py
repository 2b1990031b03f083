"""Guest-side network files (netconf) and NIC configuration (rtnl), the latter exercised in a
throwaway netns where a veth end plays the guest NIC."""

import importlib.util
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
from frakpy_guest import rtnl

from frakpy.network import netns

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

_spec = importlib.util.spec_from_file_location(
    "frakpy_guest_netconf", Path(__file__).parents[3] / "guest-agent" / "frakpy_guest" / "netconf.py"
)
netconf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(netconf)


def test_render_resolv_conf(tmp_path):
    p = tmp_path / "resolv.conf"
    netconf.write_resolv_conf(
        ["10.96.0.10", "fd00::a"], ["ns.svc.cluster.local", "svc.cluster.local"], ["ndots:5"], str(p)
    )
    assert p.read_text() == (
        "search ns.svc.cluster.local svc.cluster.local\n"
        "nameserver 10.96.0.10\nnameserver fd00::a\noptions ndots:5\n"
    )


def test_render_hosts(tmp_path):
    p = tmp_path / "hosts"
    netconf.write_hosts("web-0", ["10.91.0.5", "fd00::5"], str(p))
    text = p.read_text()
    assert "127.0.0.1\tlocalhost\n" in text
    assert text.endswith("10.91.0.5\tweb-0\nfd00::5\tweb-0\n")


def ip(ns, *args):
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True).stdout


@requires_root
def test_apply_in_netns():
    name = f"frtest-guest-{uuid.uuid4().hex[:6]}"
    path = netns.create(name)
    try:
        ip(name, "link", "add", "gnic", "type", "veth", "peer", "name", "gpeer")
        ip(name, "link", "set", "gnic", "address", "02:aa:bb:cc:dd:ee")
        ip(name, "link", "set", "gpeer", "up")
        config = {
            "mac": "02:AA:BB:CC:DD:EE",
            "mtu": 1400,
            "addresses": [
                {"address": "10.250.99.5", "prefixlen": 24, "family": 4},
                {"address": "fd00:99::5", "prefixlen": 64, "family": 6},
            ],
            "routes": [
                {"dst": "0.0.0.0/0", "gateway": "10.250.99.1", "family": 4, "scope": "universe"},
                {"dst": "10.200.0.0/16", "gateway": "10.250.99.254", "family": 4, "metric": 50},
                {"dst": "::/0", "gateway": "fd00:99::1", "family": 6},
                {"dst": "10.251.0.1/32", "family": 4, "scope": "link"},
            ],
            "neighbors": [{"ip": "10.250.99.1", "mac": "02:11:22:33:44:55"}],
        }
        assert netns.run_in(path, lambda: rtnl.apply(config)) == "gnic"
        assert netns.run_in(path, lambda: rtnl.apply(config)) == "gnic"  # idempotent
        link = json.loads(ip(name, "-j", "link", "show", "gnic"))[0]
        assert link["mtu"] == 1400 and "UP" in link["flags"]
        addrs = ip(name, "addr", "show", "gnic")
        assert "10.250.99.5/24" in addrs and "fd00:99::5/64" in addrs
        v6 = [
            a
            for a in json.loads(ip(name, "-j", "addr", "show", "gnic"))[0]["addr_info"]
            if a["local"] == "fd00:99::5"
        ]
        assert not v6[0].get("tentative")  # no DAD wait: the pod address is unique on its link
        r4 = ip(name, "route", "show").replace(" proto static", "")
        assert "default via 10.250.99.1 dev gnic" in r4
        assert "10.200.0.0/16 via 10.250.99.254 dev gnic metric 50" in r4
        assert "10.251.0.1 dev gnic scope link" in r4
        assert "default via fd00:99::1 dev gnic" in ip(name, "-6", "route", "show").replace(
            " proto static", ""
        )
        assert "10.250.99.1 lladdr 02:11:22:33:44:55 PERMANENT" in ip(name, "neigh", "show", "dev", "gnic")
        assert "UP" in ip(name, "link", "show", "lo")
        with pytest.raises(rtnl.RtnlError, match="no network interface with MAC"):
            netns.run_in(path, lambda: rtnl.apply({"mac": "02:00:00:00:00:99"}))
    finally:
        netns.delete(name)
