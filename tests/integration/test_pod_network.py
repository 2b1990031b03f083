"""Pod networking end to end through CRI: real pod VMs on the daemon's private bridge network.

Pod IPs, pod-to-pod and host-to-pod TCP, DNS config in resolv.conf, hostPort through portmap on
127.0.0.1, the guest NIC MTU, and the IP lease and netns going away on StopPodSandbox. Traffic
stays on loopback and the test daemon's own bridge (ipMasq off).
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from frakpy.cri.proto import api_pb2 as pb

from . import daemon_fixture as dfx
from .conftest import vm_requirements
from .registry_fixtures import requirements_missing

_missing = vm_requirements() or requirements_missing()
pytestmark = pytest.mark.skipif(_missing is not None, reason=_missing or "")

PORT = 8080
SERVE = (f"mkdir -p /tmp/www && echo pong-$(hostname) > /tmp/www/index.html && "
         f"exec httpd -f -p {PORT} -h /tmp/www")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pod_config(name: str, log_dir: Path, **kw) -> pb.PodSandboxConfig:
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace="test", uid=f"uid-{name}", attempt=0),
        hostname=name, log_directory=str(log_dir), **kw,
    )


def container_config(name: str, image: str, command: list[str]) -> pb.ContainerConfig:
    return pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=image),
                              command=command, log_path=f"{name}/0.log")


def run_pod(c, sb_cfg: pb.PodSandboxConfig) -> str:
    return c.call(c.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=sb_cfg)).pod_sandbox_id


def pod_status(c, pod_id: str) -> tuple[pb.PodSandboxStatus, dict]:
    r = c.call(c.runtime.PodSandboxStatus, pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True))
    return r.status, json.loads(r.info["info"])


def start_container(c, pod_id: str, sb_cfg: pb.PodSandboxConfig, cfg: pb.ContainerConfig) -> str:
    cid = c.call(c.runtime.CreateContainer, pb.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=cfg, sandbox_config=sb_cfg)).container_id
    c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
    deadline = time.monotonic() + 60
    while True:
        st = c.call(c.runtime.ContainerStatus, pb.ContainerStatusRequest(container_id=cid)).status
        if st.state == pb.CONTAINER_RUNNING:
            return cid
        assert st.state != pb.CONTAINER_EXITED and time.monotonic() < deadline, st
        time.sleep(0.2)


def exec_sync(c, cid: str, cmd: list[str], timeout: int = 30) -> pb.ExecSyncResponse:
    return c.call(c.runtime.ExecSync, pb.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=timeout))


def http_get(host: str, port: int, timeout: float = 5.0) -> bytes:
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        chunks = []
        while chunk := s.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


def retry(fn, timeout: float = 30.0):
    """Listeners take a moment to bind inside a TCG guest: retry until the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except (OSError, AssertionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def netns_mtu(netns_path: str, dev: str = "eth0") -> int:
    out = subprocess.run(["nsenter", f"--net={netns_path}", "ip", "-o", "link", "show", dev],
                         capture_output=True, text=True, check=True).stdout
    return int(re.search(r"\bmtu (\d+)", out).group(1))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("podnet")
    with dfx.daemon_with_image(work) as (d, image, base):
        yield d, image, work, base


def conflist(base: Path) -> dict:
    (path,) = (base / "cni").glob("*.conflist")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def pods(env):
    """Pod A (client, with DNS config) and pod B (httpd on :8080, published as a hostPort)."""
    d, image, work, base = env
    host_port = free_port()
    a_cfg = pod_config("pa", work / "logs-a", dns_config=pb.DNSConfig(
        servers=["10.251.0.53", "10.251.0.54"], searches=["svc.test.local", "test.local"],
        options=["ndots:5", "timeout:2"]))
    b_cfg = pod_config("pb", work / "logs-b", port_mappings=[pb.PortMapping(
        protocol=pb.TCP, container_port=PORT, host_port=host_port)])
    with d.client(timeout=180) as c:
        a = run_pod(c, a_cfg)
        b = run_pod(c, b_cfg)
        a_cid = start_container(c, a, a_cfg, container_config("client", image, ["sleep", "3600"]))
        b_cid = start_container(c, b, b_cfg, container_config("server", image, ["sh", "-c", SERVE]))
    return {"a": a, "b": b, "a_cid": a_cid, "b_cid": b_cid, "host_port": host_port}


def test_pod_ips_and_pod_to_pod(env, pods):
    d, image, work, base = env
    subnet = ipaddress.ip_network(conflist(base)["plugins"][0]["ipam"]["ranges"][0][0]["subnet"])
    with d.client(timeout=120) as c:
        sa, _ = pod_status(c, pods["a"])
        sb, _ = pod_status(c, pods["b"])
        ips = [sa.network.ip, sb.network.ip]
        assert all(ips) and ips[0] != ips[1], ips
        assert all(ipaddress.ip_address(ip) in subnet for ip in ips), (ips, subnet)

        applets = exec_sync(c, pods["a_cid"], ["busybox", "--list"]).stdout.decode().split()
        assert {"wget", "httpd", "nc"} <= set(applets)
        # the guest NIC carries the pod IP
        r = exec_sync(c, pods["a_cid"], ["ip", "-o", "-4", "addr", "show", "dev", "eth0"])
        assert f" {sa.network.ip}/" in r.stdout.decode(), r

        def fetch():
            # no -T: Debian's busybox 1.35 is built without wget timeouts and segfaults on -T
            r = exec_sync(c, pods["a_cid"], ["wget", "-q", "-O", "-", f"http://{sb.network.ip}:{PORT}/"], timeout=15)
            assert r.exit_code == 0 and r.stdout == b"pong-pb\n", r
            return r
        retry(fetch)
        # plain TCP with nc as well
        req = "printf 'GET / HTTP/1.0\\r\\n\\r\\n'"
        r = exec_sync(c, pods["a_cid"], ["sh", "-c", f"{req} | nc -w 5 {sb.network.ip} {PORT}"])
        assert r.exit_code == 0 and b"pong-pb" in r.stdout, r


def test_host_reaches_pod_ip(env, pods):
    d, *_ = env
    with d.client() as c:
        sb, _ = pod_status(c, pods["b"])
    resp = retry(lambda: http_get(sb.network.ip, PORT))
    assert resp.startswith(b"HTTP/1.") and resp.endswith(b"pong-pb\n"), resp


def test_dns_config_in_resolv_conf(env, pods):
    d, *_ = env
    with d.client() as c:
        r = exec_sync(c, pods["a_cid"], ["cat", "/etc/resolv.conf"])
    assert r.exit_code == 0, r
    lines = r.stdout.decode().splitlines()
    assert "nameserver 10.251.0.53" in lines and "nameserver 10.251.0.54" in lines, lines
    assert "search svc.test.local test.local" in lines, lines
    opts = [ln for ln in lines if ln.startswith("options ")]
    assert opts and {"ndots:5", "timeout:2"} <= set(" ".join(opts).split()[1:]), lines


def test_host_port_on_loopback(env, pods):
    resp = retry(lambda: http_get("127.0.0.1", pods["host_port"]))
    assert resp.endswith(b"pong-pb\n"), resp


def test_guest_mtu_matches_host_side(env, pods):
    d, *_ = env
    with d.client() as c:
        _, info = pod_status(c, pods["b"])
        r = exec_sync(c, pods["b_cid"], ["cat", "/sys/class/net/eth0/mtu"])
    assert r.exit_code == 0, r
    guest = int(r.stdout)
    host = netns_mtu(info["network"]["netns"])
    assert guest == host == info["network"]["mtu"], (guest, host, info["network"])


def test_stop_releases_ip_and_netns(env):
    d, image, work, base = env
    sb_cfg = pod_config("gone", work / "logs-gone")
    net_name = conflist(base)["name"]
    with d.client(timeout=180) as c:
        pod_id = run_pod(c, sb_cfg)
        st, info = pod_status(c, pod_id)
        ip, netns_path = st.network.ip, info["network"]["netns"]
        lease = base / "ipam" / net_name / ip
        assert lease.is_file() and Path(netns_path).exists(), (lease, netns_path)
        c.call(c.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        assert not lease.exists(), sorted(p.name for p in lease.parent.iterdir())
        assert not Path(netns_path).exists(), netns_path
        st, _ = pod_status(c, pod_id)
        assert st.state == pb.SANDBOX_NOTREADY and st.network.ip == ""
        c.call(c.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))  # idempotent
        c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def test_multiqueue_tap(tmp_path):
    """[cni] tap_queues = 2: the tap gets two queues and the guest NIC two queue pairs."""
    base = dfx.short_tmpdir()
    cfg = dfx.write_config(base)
    cfg.write_text(cfg.read_text().replace("[cni]\n", "[cni]\ntap_queues = 2\n"))
    d = dfx.start(base, cfg)
    try:
        with d.client(timeout=120) as c:
            pod = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="mq", namespace="t", uid="mq"),
                                      log_directory=str(tmp_path))
            pod_id = c.call(c.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=pod)).pod_sandbox_id
            st = c.call(c.runtime.PodSandboxStatus, pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True))
            run_dir = Path(json.loads(st.info["info"])["vm"]["run_dir"])
            assert "fds=" in (run_dir / "qemu.argv").read_text()
            ip = st.status.network.ip
            ping = subprocess.run(["busybox", "ping", "-c", "2", "-W", "3", ip], capture_output=True, text=True)
            assert ping.returncode == 0, ping.stdout + ping.stderr
            c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    finally:
        dfx.stop(d)
        dfx.cleanup_host(base)
