"""Benchmark: RunPodSandbox → READY cold vs from a VM template, a burst of pods started at once,
and the memory/CPU of idle sandboxes in each mode.

    .venv/bin/python bench/sandbox.py [--modes cold,template] [--runs 10] [--burst 10] [--idle 20]
                                      [--json out.json]

For each mode it starts its own frakpyd (template mode with a private templates dir; the template
is built by a first, untimed pod and its build time reported), runs pods through CRI one after
another (each stopped and removed before the next) and reports p50/p90/min/max with the boot
breakdown frakpy records; then starts --burst pods at once (wall time and per-pod latency); then
keeps --idle pods up together, lets them settle, and reads each QEMU's RSS/PSS from
/proc/<pid>/smaps_rollup and its CPU use over a 10 s window. Prints JSON and a table.
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


def run_pod(c, name: str) -> tuple[str, float]:
    t0 = time.monotonic()
    pod_id = c.call(c.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=pod(name))).pod_sandbox_id
    return pod_id, time.monotonic() - t0


def remove(c, pod_id: str) -> None:
    c.call(c.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def bench_mode(mode: str, args: argparse.Namespace) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    base = dfx.short_tmpdir()
    extra = f"[handlers.frakpy]\ntemplate = {'true' if mode == 'template' else 'false'}\n"
    if args.tb_size:
        extra += f"tb_size_mib = {args.tb_size}\n"
    # FRAKPY_BENCH_CONFIG: more keys for the handler, e.g. 'qemu_binary = "/path/wrapper"'
    extra += os.environ.get("FRAKPY_BENCH_CONFIG", "").replace("\\n", "\n") + "\n"
    d = dfx.start(base, dfx.write_config(base, extra, templates_dir=base / "templates"))
    result: dict = {"mode": mode}
    try:
        with d.client(timeout=300) as c:
            if mode == "template":  # build the template outside the timed runs
                pod_id, took = run_pod(c, "warmup")
                result["first_pod_with_template_build_s"] = round(took, 3)
                remove(c, pod_id)
                meta = next((base / "templates").glob("*/meta.json"))
                result["template"] = {k: v for k, v in json.loads(meta.read_text()).items()
                                      if k in ("build_s", "boot_s", "sizes", "memory_allocated")}
            totals: list[float] = []
            parts: dict[str, list[float]] = {}
            for i in range(args.runs):
                pod_id, took = run_pod(c, f"{mode}{i}")
                totals.append(took)
                boot = vm_of(c, pod_id)["boot"]
                assert boot.get("mode") == mode, f"expected a {mode} start, got {boot}"
                for k, v in boot.items():
                    if k.endswith("_s") and k != "total_s":
                        parts.setdefault(k, []).append(float(v))
                remove(c, pod_id)
            result["run_pod_sandbox_s"] = summary(totals)
            result["breakdown_s"] = {k: summary(v) for k, v in parts.items()}

            if args.burst:
                t0 = time.monotonic()
                with ThreadPoolExecutor(args.burst) as ex:
                    started = list(ex.map(lambda i: run_pod(c, f"{mode}burst{i}"), range(args.burst)))
                wall = time.monotonic() - t0
                result["burst"] = {"pods": args.burst, "wall_s": round(wall, 3),
                                   "per_pod_s": summary([t for _, t in started])}
                for pod_id, _ in started:
                    remove(c, pod_id)

            ids = [run_pod(c, f"{mode}idle{i}")[0] for i in range(args.idle)]
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
                "anon_mib": summary([m["anonymous_mib"] for m in mem]),
                "cpu_percent_per_vm": summary(cpu),
                "cpu_percent_all": round(sum(cpu), 2),
            }
            for i in ids:
                remove(c, i)
    finally:
        dfx.stop(d)
        dfx.cleanup_host(base)
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", default="cold,template", help="comma-separated: cold, template")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--burst", type=int, default=10, help="pods started at once (0 = skip)")
    ap.add_argument("--idle", type=int, default=20)
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--tb-size", type=int, default=0, help="TCG cache MiB of the handler (0 = config default)")
    ap.add_argument("--json", help="also write the JSON here")
    args = ap.parse_args()

    result: dict = {"machine": os.uname().release, "runs": args.runs, "tb_size_mib": args.tb_size or "default",
                    "modes": {m: bench_mode(m, args) for m in args.modes.split(",") if m}}
    modes = result["modes"]
    if "cold" in modes and "template" in modes:
        cold, tmpl = modes["cold"], modes["template"]
        result["ratio_cold_over_template"] = {
            "run_pod_sandbox_p50": round(cold["run_pod_sandbox_s"]["p50"] / tmpl["run_pod_sandbox_s"]["p50"], 2),
            "idle_pss_p50": round(cold["idle"]["pss_mib"]["p50"] / tmpl["idle"]["pss_mib"]["p50"], 2),
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    print(f"\n{'metric':48} {'p50':>8} {'p90':>8} {'min':>8} {'max':>8}")
    for mode, r in modes.items():
        v = r["run_pod_sandbox_s"]
        label = f"{mode}: RunPodSandbox → READY (s)"
        print(f"{label:48} {v['p50']:8.3f} {v['p90']:8.3f} {v['min']:8.3f} {v['max']:8.3f}")
        for k, v in r["breakdown_s"].items():
            print(f"{'  ' + k:48} {v['p50']:8.3f} {v['p90']:8.3f} {v['min']:8.3f} {v['max']:8.3f}")
        if "burst" in r:
            b = r["burst"]
            v = b["per_pod_s"]
            label = f"{mode}: {b['pods']} at once, per pod (wall {b['wall_s']:.2f} s)"
            print(f"{label:48} {v['p50']:8.3f} {v['p90']:8.3f} {v['min']:8.3f} {v['max']:8.3f}")
        idle = r["idle"]
        for k in ("rss_mib", "pss_mib", "anon_mib", "cpu_percent_per_vm"):
            v = idle[k]
            label = f"{mode}: idle {k} ({idle['sandboxes']} up)"
            print(f"{label:48} {v['p50']:8.2f} {v['p90']:8.2f} {v['min']:8.2f} {v['max']:8.2f}")
    if "ratio_cold_over_template" in result:
        print(f"cold/template ratio: {result['ratio_cold_over_template']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
