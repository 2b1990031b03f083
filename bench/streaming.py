"""Benchmark: exec and port-forward through the CRI streaming servers, frakpy vs containerd + runc.

    .venv/bin/python bench/streaming.py [--exec-runs 50] [--pf-mb 100] [--no-peer] [--json out.json]

Uses the side-by-side harness (bench/sidebyside.py: local registry with the dynamic busybox test
image, a frakpyd, containerd 1.6 + runc as peer). In one pod per runtime with a ``sleep`` container:

* exec round trip: CRI ``Exec`` of ``echo hi`` + connecting to the returned URL (SPDY, v4) + running
  it to the exit status, --exec-runs times (p50/p90/p99);
* port-forward download: ``dd if=/dev/zero bs=64k count=… | nc -l -p 9001`` in the container, read
  to EOF (not ``head -c``: busybox head alone runs at ~8 MB/s in a TCG guest)
  through CRI ``PortForward`` (SPDY) — MB/s from the first byte asked to the last received;
* port-forward upload: the same size written into ``nc -l -p 9000 > /dev/null`` (kept open with a
  fifo on its stdin), until nc reported the byte count.

The same client (frakpy.streaming.client, a client-go compatible SPDY client) drives both
runtimes' streaming servers. Prints JSON and a table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.containers import pod_config, summary  # noqa: E402
from bench.sidebyside import ratio_table, report, run_side_by_side  # noqa: E402
from frakpy.cri.client import CRIClient  # noqa: E402
from frakpy.cri.proto import api_pb2 as pb  # noqa: E402
from frakpy.streaming.client import PortForward, RemoteCommand, exec_stream  # noqa: E402


def wait_listening(c: CRIClient, cid: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        r = c.call(c.runtime.ExecSync, pb.ExecSyncRequest(
            container_id=cid, cmd=["grep", "-qE", f":{port:04X} 0+:0000 0A", "/proc/net/tcp", "/proc/net/tcp6"],
            timeout=10))
        if r.exit_code == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on port {port}")
        time.sleep(0.05)


def exec_url(c: CRIClient, cid: str, cmd: list[str]) -> str:
    return c.call(c.runtime.Exec, pb.ExecRequest(container_id=cid, cmd=cmd, stdout=True, stderr=True)).url


def pf_url(c: CRIClient, pod_id: str) -> str:
    return c.call(c.runtime.PortForward, pb.PortForwardRequest(pod_sandbox_id=pod_id)).url


BLOCK = 64 << 10


async def download(c: CRIClient, pod_id: str, cid: str, size: int, port: int) -> float:
    # dd with 64 KiB blocks: busybox `head -c` copies in small pieces and alone runs at ~8 MB/s
    # in a TCG guest, which would measure head, not the forwarding path
    if size % BLOCK:
        raise ValueError(f"size must be a multiple of {BLOCK}")
    cmd = f"dd if=/dev/zero bs={BLOCK} count={size // BLOCK} 2>/dev/null | nc -l -p {port}"
    async with RemoteCommand.connect(exec_url(c, cid, ["sh", "-c", cmd])) as rc:
        await asyncio.to_thread(wait_listening, c, cid, port)
        async with PortForward.connect(pf_url(c, pod_id)) as pf:
            t0 = time.monotonic()
            s = await pf.open(port)
            n = 0
            while data := await s.read():
                n += len(data)
            dt = time.monotonic() - t0
        await rc.wait()
    if n != size:
        raise RuntimeError(f"download: got {n} of {size} bytes")
    return dt


async def upload(c: CRIClient, pod_id: str, cid: str, size: int, port: int) -> float:
    cmd = f"mkfifo /tmp/f{port}; exec 3<>/tmp/f{port}; nc -l -p {port} <&3 | wc -c"
    async with RemoteCommand.connect(exec_url(c, cid, ["sh", "-c", cmd])) as rc:
        await asyncio.to_thread(wait_listening, c, cid, port)
        chunk = b"\0" * (1 << 16)
        async with PortForward.connect(pf_url(c, pod_id)) as pf:
            t0 = time.monotonic()
            s = await pf.open(port)
            for _ in range(size // len(chunk)):
                await s.write(chunk)
            await s.close_write()
            await s.read()  # EOF once nc saw ours
            r = await rc.wait()
            dt = time.monotonic() - t0
    if r.stdout.strip() != str(size // len(chunk) * len(chunk)).encode():
        raise RuntimeError(f"upload: nc counted {r.stdout!r}, sent {size}")
    return dt


def bench_runtime(label: str, endpoint: str, image: str, log_root: Path, args: argparse.Namespace,
                  on_pod=None) -> dict:  # type: ignore[no-untyped-def]
    out: dict = {"endpoint": endpoint}
    size = args.pf_mb << 20
    with CRIClient(endpoint, timeout=120) as c:
        v = c.call(c.runtime.Version, pb.VersionRequest())
        out["runtime"] = f"{v.runtime_name} {v.runtime_version}"
        c.call(c.image.PullImage, pb.PullImageRequest(image=pb.ImageSpec(image=image)))
        sb_cfg = pod_config(f"{label}-stream", log_root)
        pod_id = c.call(c.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=sb_cfg)).pod_sandbox_id
        if on_pod:
            on_pod(c, pod_id)
        try:
            cfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="sleeper"), image=pb.ImageSpec(image=image),
                                     command=["sleep", "3600"], log_path="sleeper/0.log")
            cid = c.call(c.runtime.CreateContainer, pb.CreateContainerRequest(
                pod_sandbox_id=pod_id, config=cfg, sandbox_config=sb_cfg)).container_id
            c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))

            async def execs() -> list[float]:
                times = []
                for i in range(args.exec_runs + 3):
                    t0 = time.monotonic()
                    r = await exec_stream(exec_url(c, cid, ["echo", "hi"]))
                    if i >= 3:  # warm-up
                        times.append(time.monotonic() - t0)
                    if (r.stdout, r.exit_code) != (b"hi\n", 0):
                        raise RuntimeError(f"{label}: exec echo: {r}")
                return times

            out["exec_echo_s"] = summary(asyncio.run(execs()))
            print(f"  {label}: exec echo p50 {out['exec_echo_s']['p50'] * 1000:.1f} ms", file=sys.stderr, flush=True)
            dts = [asyncio.run(download(c, pod_id, cid, size, 9101 + i)) for i in range(args.pf_runs)]
            out["pf_download_mb_s"] = round(size / min(dts) / 1e6, 2)
            out["pf_download_s"] = [round(d, 3) for d in dts]
            print(f"  {label}: port-forward download {out['pf_download_mb_s']} MB/s", file=sys.stderr, flush=True)
            dts = [asyncio.run(upload(c, pod_id, cid, size, 9201 + i)) for i in range(args.pf_runs)]
            out["pf_upload_mb_s"] = round(size / min(dts) / 1e6, 2)
            out["pf_upload_s"] = [round(d, 3) for d in dts]
            print(f"  {label}: port-forward upload {out['pf_upload_mb_s']} MB/s", file=sys.stderr, flush=True)
        finally:
            c.call(c.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
            c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    return out


def table(result: dict) -> str:
    mb = result["pf_mb"]
    return ratio_table(result, [
        ("exec echo round trip p50 (ms)", lambda r: r["exec_echo_s"]["p50"] * 1000),
        ("exec echo round trip p99 (ms)", lambda r: r["exec_echo_s"]["p99"] * 1000),
        (f"port-forward download {mb} MiB (MB/s)", lambda r: r["pf_download_mb_s"]),
        (f"port-forward upload {mb} MiB (MB/s)", lambda r: r["pf_upload_mb_s"]),
    ], width=40)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--exec-runs", type=int, default=50)
    ap.add_argument("--pf-mb", type=int, default=100, help="MiB per port-forward transfer")
    ap.add_argument("--pf-runs", type=int, default=1, help="transfers per direction (best one counts)")
    ap.add_argument("--no-peer", action="store_true", help="frakpy only")
    ap.add_argument("--json", help="also write the JSON here")
    args = ap.parse_args()

    result: dict = {"machine": os.uname().release, "cpus": os.cpu_count(),
                    "exec_runs": args.exec_runs, "pf_mb": args.pf_mb, "pf_runs": args.pf_runs}
    run_side_by_side("bench-stream", args, bench_runtime, result)
    report(result, args.json, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
