"""The guest's hand-written rtnetlink client against the real kernel, in a throwaway netns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from frakpy_guest import rtnl

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace")

CONFIG = {
    "mac": "0a:58:0a:5b:00:07",
    "nic_mac": "02:46:52:4b:00:01",
    "mtu": 1450,
    "addresses": [{"address": "10.91.0.7", "prefixlen": 16, "family": 4},
                  {"address": "fd00:91::7", "prefixlen": 64, "family": 6}],
    "routes": [{"dst": "0.0.0.0/0", "gateway": "10.91.0.1", "family": 4},
               {"dst": "10.92.0.0/16", "family": 4, "scope": "link", "metric": 50},
               {"dst": "::/0", "gateway": "fd00:91::1", "family": 6}],
    "neighbors": [{"ip": "10.91.0.1", "mac": "0a:58:0a:5b:00:01"}],
}


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def netns():
    name = f"frk-rtnl-{uuid.uuid4().hex[:8]}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "add", "eth0", "address", CONFIG["nic_mac"], "type", "veth", "peer", "name", "p0")
        sh("ip", "-n", name, "link", "set", "p0", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def apply_in(ns: str, config: dict) -> subprocess.CompletedProcess[str]:
    code = ("import json, sys; from frakpy_guest import rtnl; "
            "print(rtnl.apply(json.loads(sys.argv[1])))")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}/guest-agent:{ROOT}"}
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, json.dumps(config)],
                          capture_output=True, text=True, env=env)


def test_configures_claimed_nic_addresses_routes_and_neighbours(netns: str) -> None:
    r = apply_in(netns, CONFIG)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "eth0"
    link = sh("ip", "-n", netns, "link", "show", "eth0")
    assert CONFIG["mac"] in link and "mtu 1450" in link and ",UP" in link
    addrs = sh("ip", "-n", netns, "addr", "show", "eth0")
    assert "10.91.0.7/16" in addrs and "fd00:91::7/64" in addrs
    routes = sh("ip", "-n", netns, "route")
    assert "default via 10.91.0.1 dev eth0" in routes
    assert "10.92.0.0/16 dev eth0" in routes and "metric 50" in routes
    assert "default via fd00:91::1 dev eth0" in sh("ip", "-n", netns, "-6", "route")
    assert "10.91.0.1 dev eth0 lladdr 0a:58:0a:5b:00:01 PERMANENT" in sh("ip", "-n", netns, "neigh")
    assert "UP" in sh("ip", "-n", netns, "link", "show", "lo")
    # applying again (a retried SetupNetwork) changes nothing and does not fail
    again = apply_in(netns, CONFIG)
    assert again.returncode == 0, again.stderr


def test_kernel_errors_name_the_item(netns: str) -> None:
    bad = dict(CONFIG, routes=[{"dst": "0.0.0.0/0", "gateway": "192.0.2.1", "family": 4}])
    r = apply_in(netns, bad)
    assert r.returncode != 0
    assert "adding route 0.0.0.0/0 via 192.0.2.1" in r.stderr  # gateway not on any link


def test_message_layout() -> None:
    assert rtnl._attr(rtnl.IFLA_MTU, b"\x01\x02\x03") == b"\x07\x00\x04\x00\x01\x02\x03\x00"
    assert rtnl._mac("0a:58:0a:5b:00:07") == bytes([10, 88, 10, 91, 0, 7])
