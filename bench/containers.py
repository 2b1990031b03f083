"""Benchmark: container lifecycle in a running pod, frakpy vs containerd 1.6 + runc, same CRI code.

    .venv/bin/python bench/containers.py [--runs 5] [--exec-runs 100] [--pod-runs 3] [--no-peer] [--json out.json]

Starts a local registry (127.0.0.1) with the dynamic busybox test image, its own frakpyd and, unless
--no-peer, containerd as a CRI peer (bench/peer.py: own socket/dirs under /tmp, own bridge on
10.252.0.0/16). Each runtime pulls the image and runs one pod; then --runs times:
CreateContainer + StartContainer of ``sh -c 'echo ready; sleep 3600'`` until its first log line is
in the CRI log file (polled every 1 ms), --exec-runs ExecSync ``true``, StopContainer(timeout 0) +
RemoveContainer. RunPodSandbox is timed for the benchmark pod plus --pod-runs - 1 extra pods
(each stopped and removed). Prints JSON and a table with both runtimes and frakpy/containerd.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.sidebyside import ratio_table, report, run_side_by_side  # noqa: E402
from frakpy.cri.client import CRIClient  # noqa: E402
from frakpy.cri.proto import api_pb2 as pb  # noqa: E402


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(pct(values, 0.5), 4), "p90": round(pct(values, 0.9), 4),
            "p99": round(pct(values, 0.99), 4), "min": round(min(values), 4), "max": round(max(values), 4),
            "n": len(values)}


def pod_config(name: str, log_dir: Path) -> pb.PodSandboxConfig:
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace="bench", uid=f"{name}-{time.time_ns()}"),
        hostname=name, log_directory=str(log_dir))


def wait_first_line(path: Path, timeout: float = 60.0) -> float:
    """Poll until the log file holds a complete line; returns the monotonic time it was seen."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path, "rb") as f:
                if b"\n" in f.read(4096):
                    return time.monotonic()
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no log line in {path} after {timeout}s")
        time.sleep(0.001)


def bench_runtime(label: str, endpoint: str, image: str, log_root: Path, args: argparse.Namespace,
                  on_pod=None) -> dict:
    out: dict = {"endpoint": endpoint}
    with CRIClient(endpoint, timeout=120) as c:
        v = c.call(c.runtime.Version, pb.VersionRequest())
        out["runtime"] = f"{v.runtime_name} {v.runtime_version}"
        t0 = time.monotonic()
        c.call(c.image.PullImage, pb.PullImageRequest(image=pb.ImageSpec(image=image)))
        out["pull_s"] = round(time.monotonic() - t0, 4)

        pod_times = []
        for i in range(max(args.pod_runs - 1, 0)):
            cfg = pod_config(f"{label}-extra{i}", log_root / f"extra{i}")
            t0 = time.monotonic()
            pid = c.call(c.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=cfg)).pod_sandbox_id
            pod_times.append(time.monotonic() - t0)
            if on_pod:
                on_pod(c, pid)
            c.call(c.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pid))
            c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pid))

        log_dir = log_root / "main"
        sb_cfg = pod_config(f"{label}-main", log_dir)
        t0 = time.monotonic()
        pod_id = c.call(c.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=sb_cfg)).pod_sandbox_id
        pod_times.append(time.monotonic() - t0)
        if on_pod:
            on_pod(c, pod_id)
        out["run_pod_sandbox_s"] = summary(pod_times)

        create, start, ready, stop_rm, execs = [], [], [], [], []
        try:
            for i in range(args.runs):
                name = f"c{i}"
                cfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=image),
                                         command=["sh", "-c", "echo ready; sleep 3600"], log_path=f"{name}/0.log")
                t0 = time.monotonic()
                cid = c.call(c.runtime.CreateContainer, pb.CreateContainerRequest(
                    pod_sandbox_id=pod_id, config=cfg, sandbox_config=sb_cfg)).container_id
                t1 = time.monotonic()
                c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
                t2 = time.monotonic()
                seen = wait_first_line(log_dir / name / "0.log")
                create.append(t1 - t0)
                start.append(t2 - t1)
                ready.append(seen - t0)
                for _ in range(args.exec_runs):
                    e0 = time.monotonic()
                    r = c.call(c.runtime.ExecSync, pb.ExecSyncRequest(container_id=cid, cmd=["true"], timeout=30))
                    execs.append(time.monotonic() - e0)
                    if r.exit_code != 0:
                        raise RuntimeError(f"{label}: exec true exited {r.exit_code}: {r.stderr!r}")
                t0 = time.monotonic()
                c.call(c.runtime.StopContainer, pb.StopContainerRequest(container_id=cid, timeout=0))
                c.call(c.runtime.RemoveContainer, pb.RemoveContainerRequest(container_id=cid))
                stop_rm.append(time.monotonic() - t0)
                print(f"  {label} run {i + 1}/{args.runs}: ready {ready[-1]:.3f}s "
                      f"exec p50 {pct(execs[-args.exec_runs:], 0.5) * 1000 if args.exec_runs else 0:.1f}ms "
                      f"stop+rm {stop_rm[-1]:.3f}s", file=sys.stderr, flush=True)
        finally:
            c.call(c.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
            c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        out["create_s"] = summary(create)
        out["start_s"] = summary(start)
        out["create_start_to_first_log_s"] = summary(ready)
        if execs:
            out["exec_sync_true_s"] = summary(execs)
        out["stop_remove_s"] = summary(stop_rm)
    return out


ROWS = [  # (label, key, stat)
    ("RunPodSandbox p50 (ms)", "run_pod_sandbox_s", "p50"),
    ("CreateContainer p50 (ms)", "create_s", "p50"),
    ("StartContainer p50 (ms)", "start_s", "p50"),
    ("Create+Start → first log line p50 (ms)", "create_start_to_first_log_s", "p50"),
    ("Create+Start → first log line max (ms)", "create_start_to_first_log_s", "max"),
    ("ExecSync true p50 (ms)", "exec_sync_true_s", "p50"),
    ("ExecSync true p99 (ms)", "exec_sync_true_s", "p99"),
    ("Stop(timeout 0)+Remove p50 (ms)", "stop_remove_s", "p50"),
]


def table(result: dict) -> str:
    return ratio_table(result, [(label, lambda r, k=key, st=stat: r[k][st] * 1000) for label, key, stat in ROWS])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--exec-runs", type=int, default=100)
    ap.add_argument("--pod-runs", type=int, default=3, help="RunPodSandbox samples per runtime")
    ap.add_argument("--no-peer", action="store_true", help="frakpy only")
    ap.add_argument("--json", help="also write the JSON here")
    args = ap.parse_args()

    result: dict = {"machine": os.uname().release, "cpus": os.cpu_count(),
                    "runs": args.runs, "exec_runs": args.exec_runs, "pod_runs": args.pod_runs}
    run_side_by_side("bench-ctr", args, bench_runtime, result)
    report(result, args.json, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
