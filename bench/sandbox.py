"""Benchmark: cold RunPodSandbox → READY, and the memory/CPU of idle sandboxes.

    .venv/bin/python bench/sandbox.py [--runs 10] [--idle 10] [--json out.json]

Starts its own frakpyd on a temporary socket, runs pods through CRI one after another
(each is stopped and removed before the next), reports p50/p90/min/max with the boot
breakdown frakpy records (QEMU start → kernel, kernel → agent ready, agent RPC round
trip), then starts --idle pods together, lets them settle, and reads each QEMU's RSS/PSS
from /proc/<pid>/smaps_rollup and its CPU use over a 10 s window. Prints JSON and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from frakpy.cri.proto import api_pb2 as pb  # noqa: E402
from tests.integration import daemon_fixture as dfx  # noqa: E402


def pod(name: str) -> pb.PodSandboxConfig:
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace="bench", uid=f"{name}-{time.time_ns()}"),
        hostname=name, log_directory=f"/tmp/frakpy-bench/{name}",
    )


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(pct(values, 0.5), 3), "p90": round(pct(values, 0.9), 3),
            "min": round(min(values), 3), "max": round(max(values), 3), "n": len(values)}


def smaps(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if parts and parts[0] in ("Rss:", "Pss:", "Anonymous:"):
            out[parts[0][:-1].lower() + "_mib"] = int(parts[1]) / 1024
    return out


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def vm_of(c, pod_id: str) -> dict:
    st = c.call(c.runtime.PodSandboxStatus, pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True))
    return json.loads(st.info["info"])["vm"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--idle", type=int, default=10)
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--json", help="also write the JSON here")
    args = ap.parse_args()

    base = dfx.short_tmpdir()
    d = dfx.start(base, dfx.write_config(base))
    result: dict = {"machine": os.uname().release, "runs": args.runs}
    try:
        with d.client(timeout=120) as c:
            totals, parts = [], {"qemu_to_kernel_s": [], "kernel_to_agent_ready_s": [],
                                 "kernel_to_agent_start_s": [], "agent_rpc_roundtrip_s": []}
            for i in range(args.runs):
                t0 = time.monotonic()
                pod_id = c.call(c.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=pod(f"cold{i}"))).pod_sandbox_id
                totals.append(time.monotonic() - t0)
                boot = vm_of(c, pod_id)["boot"]
                for k in parts:
                    parts[k].append(boot.get(k, 0.0))
                c.call(c.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
                c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
            result["run_pod_sandbox_s"] = summary(totals)
            result["breakdown_s"] = {k: summary(v) for k, v in parts.items()}

            ids = [c.call(c.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=pod(f"idle{i}"))).pod_sandbox_id
                   for i in range(args.idle)]
            pids = [vm_of(c, i)["pid"] for i in ids]
            time.sleep(args.settle)
            hz = os.sysconf("SC_CLK_TCK")
            t0, ticks0 = time.monotonic(), {p: cpu_ticks(p) for p in pids}
            time.sleep(10)
            elapsed = time.monotonic() - t0
            cpu = [100.0 * (cpu_ticks(p) - ticks0[p]) / hz / elapsed for p in pids]
            mem = [smaps(p) for p in pids]
            result["idle"] = {
                "sandboxes": args.idle,
                "rss_mib": summary([m["rss_mib"] for m in mem]),
                "pss_mib": summary([m["pss_mib"] for m in mem]),
                "cpu_percent_per_vm": summary(cpu),
                "cpu_percent_all": round(sum(cpu), 2),
            }
            for i in ids:
                c.call(c.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=i))
                c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=i))
    finally:
        dfx.stop(d)
        dfx.cleanup_host(base)

    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    r = result["run_pod_sandbox_s"]
    print(f"\n{'metric':44} {'p50':>8} {'p90':>8} {'min':>8} {'max':>8}")
    print(f"{'RunPodSandbox → READY (s)':44} {r['p50']:8.3f} {r['p90']:8.3f} {r['min']:8.3f} {r['max']:8.3f}")
    for k, v in result["breakdown_s"].items():
        print(f"{'  ' + k:44} {v['p50']:8.3f} {v['p90']:8.3f} {v['min']:8.3f} {v['max']:8.3f}")
    idle = result["idle"]
    for k in ("rss_mib", "pss_mib", "cpu_percent_per_vm"):
        v = idle[k]
        label = f"idle {k} ({idle['sandboxes']} up)"
        print(f"{label:44} {v['p50']:8.2f} {v['p90']:8.2f} {v['min']:8.2f} {v['max']:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
