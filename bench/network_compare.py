"""Benchmark: pod networking, frakpy (QEMU TCG VM per pod) vs containerd 1.6 + runc, same CRI code.

    .venv/bin/python bench/network_compare.py [--pod-runs 10] [--mb 64] [--repeats 3] [--net-runs 10]
                                              [--no-peer] [--json out.json]

Starts a local registry (127.0.0.1) with the dynamic busybox test image, its own frakpyd (private
bridge, 10.251.x.0/24) and, unless --no-peer, containerd as a CRI peer (bench/peer.py: own
socket/dirs under /tmp, own bridge on 10.252.0.0/16, ipMasq off). Per runtime:

1. RunPodSandbox wall time over --pod-runs pods (each stopped and removed). frakpy cannot run
   without a CNI config, so the networking share is measured directly: PodNetwork.setup and
   teardown with the same default bridge conflist, --net-runs times (bench/network.py's cycle,
   own bridge ``frbench0`` on 10.250.88.0/24, removed afterwards).
2. host → pod TCP: pod B runs busybox ``httpd`` on :8080 serving a --mb MiB file made with dd;
   the host downloads it over the pod IP (plain socket, HTTP/1.0), --repeats times; MB/s of the
   median.
3. pod → pod TCP: a container in pod A runs ``wget -q -O /dev/null http://<podB>:8080/big`` via
   ExecSync (no -T: that busybox wget segfaults on -T), --repeats times. Reported raw (ExecSync
   wall time) and with the median ExecSync ``true`` round trip subtracted.

Traffic only goes to the pods' own IPs on the benchmark's bridges (and 127.0.0.1 for the
registry). Prints JSON and a table with both runtimes and the frakpy/containerd ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.containers import pod_config, summary  # noqa: E402
from bench.network import cycle as net_cycle  # noqa: E402
from bench.sidebyside import ratio_table, report, run_side_by_side  # noqa: E402
from frakpy.cri.client import CRIClient  # noqa: E402
from frakpy.cri.proto import api_pb2 as pb  # noqa: E402
from frakpy.network import PodNetwork  # noqa: E402
from frakpy.network.defaults import default_conflist  # noqa: E402

PORT = 8080
MB = 1024 * 1024


def frakpy_network_share(n: int, bin_dirs: list[str]) -> dict:
    """PodNetwork.setup/teardown with the default bridge conflist, as bench/network.py does."""
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp, "net.d")
        conf.mkdir()
        doc = default_conflist(name="frbench", bridge="frbench0", subnet="10.250.88.0/24",
                               data_dir=f"{tmp}/ipam", portmap=False)
        (conf / "10-frbench.conflist").write_text(json.dumps(doc))
        pn = PodNetwork(str(conf), bin_dirs, state_dir=f"{tmp}/state", netns_dir=f"{tmp}/netns")
        try:
            up, down = asyncio.run(net_cycle(pn, n))
        finally:
            subprocess.run(["ip", "link", "del", "frbench0"], capture_output=True)
            subprocess.run(["umount", "-l", f"{tmp}/netns"], capture_output=True)
    return {"setup_s": summary(up), "teardown_s": summary(down),
            "setup_plus_teardown_s": summary([a + b for a, b in zip(up, down, strict=True)])}


def container_config(name: str, image: str, command: list[str]) -> pb.ContainerConfig:
    return pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=image),
                              command=command, log_path=f"{name}/0.log")


def start_container(c: CRIClient, pod_id: str, sb_cfg: pb.PodSandboxConfig, cfg: pb.ContainerConfig) -> str:
    cid = c.call(c.runtime.CreateContainer, pb.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=cfg, sandbox_config=sb_cfg)).container_id
    c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
    deadline = time.monotonic() + 120
    while True:
        st = c.call(c.runtime.ContainerStatus, pb.ContainerStatusRequest(container_id=cid)).status
        if st.state == pb.CONTAINER_RUNNING:
            return cid
        if st.state == pb.CONTAINER_EXITED or time.monotonic() > deadline:
            raise RuntimeError(f"container {cfg.metadata.name} not running: {st}")
        time.sleep(0.2)


def exec_sync(c: CRIClient, cid: str, cmd: list[str], timeout: int = 300) -> pb.ExecSyncResponse:
    return c.call(c.runtime.ExecSync, pb.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=timeout))


def http_download(host: str, port: int, path: str, timeout: float = 300.0) -> tuple[int, float]:
    """GET path over HTTP/1.0; returns (body bytes, seconds from connect to last byte)."""
    t0 = time.monotonic()
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        total, header = 0, b""
        body_start = None
        while True:
            k = s.recv_into(view)
            if k == 0:
                break
            if body_start is None:
                header += bytes(view[:k])
                i = header.find(b"\r\n\r\n")
                if i >= 0:
                    if not header.startswith(b"HTTP/1.") or b" 200 " not in header.split(b"\r\n", 1)[0]:
                        raise RuntimeError(f"bad response: {header[:200]!r}")
                    body_start = i + 4
                    total = len(header) - body_start
            else:
                total += k
    return total, time.monotonic() - t0


def retry(fn, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except (OSError, AssertionError, RuntimeError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def pod_ip(c: CRIClient, pod_id: str) -> str:
    st = c.call(c.runtime.PodSandboxStatus, pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status
    return st.network.ip


def bench_runtime(label: str, endpoint: str, image: str, log_root: Path, args: argparse.Namespace,
                  on_pod=None) -> dict:
    out: dict = {"endpoint": endpoint, "file_mib": args.mb}
    size = args.mb * MB
    with CRIClient(endpoint, timeout=600) as c:
        v = c.call(c.runtime.Version, pb.VersionRequest())
        out["runtime"] = f"{v.runtime_name} {v.runtime_version}"
        c.call(c.image.PullImage, pb.PullImageRequest(image=pb.ImageSpec(image=image)))

        # (1) RunPodSandbox
        pod_times = []
        for i in range(args.pod_runs):
            cfg = pod_config(f"{label}-rp{i}", log_root / f"rp{i}")
            t0 = time.monotonic()
            pid = c.call(c.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=cfg)).pod_sandbox_id
            pod_times.append(time.monotonic() - t0)
            if on_pod:
                on_pod(c, pid)
            c.call(c.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pid))
            c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pid))
            print(f"  {label} RunPodSandbox {i + 1}/{args.pod_runs}: {pod_times[-1]:.3f}s",
                  file=sys.stderr, flush=True)
        out["run_pod_sandbox_s"] = summary(pod_times)

        # pods A (client) and B (httpd serving a big file)
        a_cfg = pod_config(f"{label}-a", log_root / "a")
        b_cfg = pod_config(f"{label}-b", log_root / "b")
        pods = []
        try:
            a = c.call(c.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=a_cfg)).pod_sandbox_id
            pods.append(a)
            b = c.call(c.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=b_cfg)).pod_sandbox_id
            pods.append(b)
            if on_pod:
                on_pod(c, a)
                on_pod(c, b)
            a_cid = start_container(c, a, a_cfg, container_config("client", image, ["sleep", "3600"]))
            serve = (f"mkdir -p /tmp/www && dd if=/dev/zero of=/tmp/www/big bs=1M count={args.mb} 2>/dev/null && "
                     f"touch /tmp/www/ready && exec httpd -f -p {PORT} -h /tmp/www")
            t0 = time.monotonic()
            b_cid = start_container(c, b, b_cfg, container_config("server", image, ["sh", "-c", serve]))
            b_ip, a_ip = pod_ip(c, b), pod_ip(c, a)
            out["pod_ips"] = {"a": a_ip, "b": b_ip}

            def ready():
                n, _ = http_download(b_ip, PORT, "/ready", timeout=10)
                assert n == 0
            retry(ready, timeout=300)
            out["server_ready_s"] = round(time.monotonic() - t0, 3)
            print(f"  {label} server ready on {b_ip} after {out['server_ready_s']}s", file=sys.stderr, flush=True)

            # (2) host -> pod
            host_times = []
            for i in range(args.repeats):
                n, dt = http_download(b_ip, PORT, "/big")
                if n != size:
                    raise RuntimeError(f"{label}: host got {n} bytes, expected {size}")
                host_times.append(dt)
                print(f"  {label} host->pod {i + 1}/{args.repeats}: {args.mb / dt:.1f} MiB/s",
                      file=sys.stderr, flush=True)
            out["host_to_pod_s"] = summary(host_times)
            out["host_to_pod_mib_s"] = round(args.mb / statistics.median(host_times), 2)

            # (3) pod -> pod, ExecSync round trip baseline first
            true_times = []
            for _ in range(5):
                e0 = time.monotonic()
                exec_sync(c, a_cid, ["true"], timeout=30)
                true_times.append(time.monotonic() - e0)
            base = statistics.median(true_times)
            out["exec_sync_true_s"] = summary(true_times)
            p2p = []
            for i in range(args.repeats):
                cmd = ["wget", "-q", "-O", "/dev/null", f"http://{b_ip}:{PORT}/big"]
                e0 = time.monotonic()
                r = exec_sync(c, a_cid, cmd)
                dt = time.monotonic() - e0
                if r.exit_code != 0:
                    raise RuntimeError(f"{label}: pod->pod wget exit {r.exit_code} {r.stderr!r}")
                p2p.append(dt)
                print(f"  {label} pod->pod {i + 1}/{args.repeats}: {dt:.3f}s ({args.mb / dt:.1f} MiB/s raw)",
                      file=sys.stderr, flush=True)
            med = statistics.median(p2p)
            out["pod_to_pod_exec_s"] = summary(p2p)
            out["pod_to_pod_mib_s_raw"] = round(args.mb / med, 2)
            out["pod_to_pod_mib_s_net"] = round(args.mb / max(med - base, 1e-6), 2)
            for cid in (a_cid, b_cid):
                c.call(c.runtime.StopContainer, pb.StopContainerRequest(container_id=cid, timeout=0))
                c.call(c.runtime.RemoveContainer, pb.RemoveContainerRequest(container_id=cid))
        finally:
            for pid in pods:
                try:
                    c.call(c.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pid))
                    c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pid))
                except Exception as exc:  # noqa: BLE001
                    print(f"{label} pod clean-up: {exc}", file=sys.stderr)
    return out


ROWS = [  # (label, getter, unit)
    ("RunPodSandbox p50 (ms)", lambda r: r["run_pod_sandbox_s"]["p50"] * 1000),
    ("RunPodSandbox p90 (ms)", lambda r: r["run_pod_sandbox_s"]["p90"] * 1000),
    ("  CNI setup p50, direct (ms)", lambda r: r["network"]["setup_s"]["p50"] * 1000),
    ("  CNI teardown p50, direct (ms)", lambda r: r["network"]["teardown_s"]["p50"] * 1000),
    ("  CNI setup share of RunPodSandbox (%)",
     lambda r: 100 * r["network"]["setup_s"]["p50"] / r["run_pod_sandbox_s"]["p50"]),
    ("host→pod TCP, median (MiB/s)", lambda r: r["host_to_pod_mib_s"]),
    ("pod→pod wget via ExecSync, raw (MiB/s)", lambda r: r["pod_to_pod_mib_s_raw"]),
    ("pod→pod minus ExecSync true (MiB/s)", lambda r: r["pod_to_pod_mib_s_net"]),
    ("ExecSync true p50 (ms)", lambda r: r["exec_sync_true_s"]["p50"] * 1000),
]


def table(result: dict) -> str:
    return (ratio_table(result, ROWS) + "\n"
            f"(file {result['mb']} MiB, {result['repeats']} transfers each; ratio = frakpy/containerd; "
            "CNI rows for frakpy are PodNetwork.setup/teardown timed directly, same conflist)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pod-runs", type=int, default=10, help="RunPodSandbox samples per runtime")
    ap.add_argument("--net-runs", type=int, default=10, help="direct PodNetwork setup+teardown cycles")
    ap.add_argument("--mb", type=int, default=64, help="size of the served file in MiB")
    ap.add_argument("--repeats", type=int, default=3, help="transfers per direction")
    ap.add_argument("--bin-dir", action="append", default=None)
    ap.add_argument("--no-peer", action="store_true", help="frakpy only")
    ap.add_argument("--json", help="also write the JSON here")
    args = ap.parse_args()

    result: dict = {"machine": os.uname().release, "cpus": os.cpu_count(),
                    "pod_runs": args.pod_runs, "net_runs": args.net_runs, "mb": args.mb, "repeats": args.repeats}
    print("frakpy PodNetwork setup/teardown ...", file=sys.stderr, flush=True)
    net = frakpy_network_share(args.net_runs, args.bin_dir or ["/opt/cni/bin", "/usr/lib/cni"])
    run_side_by_side("bench-net", args, bench_runtime, result, frakpy_extra={"network": net})
    report(result, args.json, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
