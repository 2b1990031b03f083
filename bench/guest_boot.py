"""Boot the built guest (kernel + rootfs) in QEMU the way the daemon does, and time it.

For every run it records, from the moment QEMU is spawned (host monotonic clock):

* ``first_byte``   first byte on the serial console;
* ``kernel_init``  the kernel handing over to /init ("Run /init as init process"; only
                   visible with ``--no-quiet``), or else the first line /init prints
                   (``INIT-PY`` from the test init); with the real agent: ready minus the
                   agent's own "ready in X s" (= when the agent's main() started);
* ``ready``        the guest's ready signal: a console line matching ``--ready-re`` or the
                   first bytes the guest writes to the agent virtio-serial channel;
* ``rss_mib`` / ``pss_mib``  QEMU's memory from /proc/PID/smaps_rollup after ``--settle`` s idle;
* ``cpu_pct``      QEMU's CPU share over the following ``--cpu-window`` s.

``--hotplug`` additionally checks that the cold-plugged ``virtio-scsi-device`` accepts a
hot-added ``scsi-hd`` over QMP (blockdev-add + device_add) and times until the guest
reports ``/sys/block/sda`` (needs an init that prints ``BLOCK-ADD <dev>``, e.g. the test init
booted with ``stay`` on the command line).

Usage (as root):
  python bench/guest_boot.py                         # kernel/rootfs from /var/lib/frakpy/guest/guest.json
  python bench/guest_boot.py --runs 5 --tb-size default,32,64 --json out.json
  python bench/guest_boot.py --kernel K --rootfs R --append-extra idle --hotplug
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "images"))
from hosttsc import host_tsc_khz  # noqa: E402

DEFAULT_MANIFEST = Path("/var/lib/frakpy/guest/guest.json")
PR_SET_THP_DISABLE = 41


def kernel_cmdline(fstype: str, quiet: bool = True, extra: str = "") -> str:
    parts = ["console=ttyS0"]
    if quiet:
        parts.append("quiet")
    parts.append("panic=-1")
    khz = host_tsc_khz()
    if khz:
        parts.append(f"tsc_early_khz={khz}")
    parts += ["tsc=reliable", "root=/dev/vda", f"rootfstype={fstype}", "ro", "init=/init"]
    if extra:
        parts.append(extra)
    return " ".join(parts)


def qemu_argv(kernel: str, rootfs: str, fstype: str, workdir: Path, *, tb_size: str = "default",
              mem: int = 256, quiet: bool = True, extra: str = "", sandbox: bool = True) -> list[str]:
    accel = "tcg" if tb_size == "default" else f"tcg,tb-size={tb_size}"
    argv = [
        "qemu-system-x86_64", "-M", "microvm", "-cpu", "qemu64,+arat", "-accel", accel,
        "-m", str(mem), "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
        "-no-reboot",
        "-kernel", kernel,
        "-append", kernel_cmdline(fstype, quiet, extra),
        "-drive", f"id=root,file={rootfs},format=raw,if=none,readonly=on",
        "-device", "virtio-blk-device,drive=root",
        "-device", "virtio-rng-device",
        "-device", "virtio-scsi-device,id=scsi0",
        "-chardev", f"socket,id=agent,path={workdir}/agent.sock,server=on,wait=off",
        "-device", "virtio-serial-device,id=vser0",
        "-device", "virtserialport,bus=vser0.0,chardev=agent,name=agent",
        "-serial", f"file:{workdir}/console.log",
        "-qmp", f"unix:{workdir}/qmp.sock,server=on,wait=off",
    ]
    if sandbox:
        argv += ["-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,"
                             "resourcecontrol=deny"]
    return argv


def _no_thp() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)


class QMP:
    def __init__(self, path: Path, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        self.f = self.sock.makefile("rwb")
        json.loads(self.f.readline())                 # greeting
        self.cmd("qmp_capabilities")

    def cmd(self, name: str, **args) -> dict:
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.f.write(json.dumps(msg).encode() + b"\n")
        self.f.flush()
        while True:
            r = json.loads(self.f.readline())
            if "event" in r:
                continue
            if "error" in r:
                raise RuntimeError(f"{name}: {r['error']}")
            return r.get("return", {})

    def close(self) -> None:
        self.sock.close()


def smaps_rollup(pid: int) -> dict[str, int]:
    res = {}
    for ln in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        k, _, v = ln.partition(":")
        if v.strip().endswith("kB"):
            res[k.strip()] = int(v.split()[0])
    return res


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def one_run(kernel: str, rootfs: str, fstype: str, *, tb_size: str, mem: int, quiet: bool,
            extra: str, ready_re: str, timeout: float, settle: float, cpu_window: float,
            thp_off: bool, hotplug: bool, sandbox: bool = True) -> dict:
    work = Path(tempfile.mkdtemp(prefix="frakpy-boot-"))
    argv = qemu_argv(kernel, rootfs, fstype, work, tb_size=tb_size, mem=mem, quiet=quiet,
                     extra=extra, sandbox=sandbox)
    console = work / "console.log"
    res: dict = {"tb_size": tb_size, "mem": mem, "quiet": quiet, "fstype": fstype}
    agent_first: list[float] = []
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, preexec_fn=_no_thp if thp_off else None)

    def agent_reader() -> None:
        # connect as the daemon would, so guest writes to the port never block
        s = socket.socket(socket.AF_UNIX)
        while proc.poll() is None:
            try:
                s.connect(str(work / "agent.sock"))
                break
            except OSError:
                time.sleep(0.005)
        else:
            return
        s.settimeout(0.5)
        while proc.poll() is None:
            try:
                data = s.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            if not agent_first:
                agent_first.append(time.monotonic() - t0)
        s.close()

    threading.Thread(target=agent_reader, daemon=True).start()
    ready_pat = re.compile(ready_re)
    marks: dict[str, float] = {}
    text = ""
    try:
        deadline = t0 + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            now = time.monotonic() - t0
            try:
                text = console.read_text(errors="replace")
            except FileNotFoundError:
                text = ""
            if text and "first_byte" not in marks:
                marks["first_byte"] = now
                res["first_line"] = text.splitlines()[0][:80]
            if "kernel_init" not in marks and ("Run /init as init process" in text
                                               or "INIT-PY" in text):
                marks["kernel_init"] = now
            if "ready" not in marks:
                if ready_pat.search(text):
                    marks["ready"] = now
                elif agent_first:
                    marks["ready"] = agent_first[0]
                    marks["ready_via"] = "agent-channel"
            if "ready" in marks:
                break
            time.sleep(0.005)
        res.update(marks)
        if "ready" not in marks:
            res["error"] = "no ready signal" + (f" (qemu exited {proc.returncode})"
                                                if proc.poll() is not None else "")
            return res
        m = re.search(r"PYTHON-READY (\S+)", text)
        if m:
            res["guest_uptime_ready"] = float(m.group(1))
        m = re.search(r"frakpy-agent ready in ([\d.]+) s \(uptime ([\d.]+) s\)", text)
        if m:   # the agent's own timing: main() start -> ready, on the guest clock
            res["agent_ready_in"] = float(m.group(1))
            res["guest_uptime_ready"] = float(m.group(2))
            res.setdefault("kernel_init", round(marks["ready"] - float(m.group(1)), 3))
        if hotplug:
            res.update(hotplug_test(work, console, t0))
        if settle or cpu_window:
            time.sleep(settle)
            if proc.poll() is None:
                r = smaps_rollup(proc.pid)
                res["rss_mib"] = round(r["Rss"] / 1024, 1)
                res["pss_mib"] = round(r["Pss"] / 1024, 1)
                res["anon_mib"] = round(r.get("Anonymous", 0) / 1024, 1)
                c0, w0 = cpu_ticks(proc.pid), time.monotonic()
                time.sleep(cpu_window)
                c1, w1 = cpu_ticks(proc.pid), time.monotonic()
                res["cpu_pct"] = round(100 * (c1 - c0) / os.sysconf("SC_CLK_TCK") / (w1 - w0), 2)
        return res
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
        if err and "terminating on signal" not in err:
            res["qemu_stderr"] = err[-500:]
        res["console_tail"] = text[-300:] if "error" in res else None
        for p in work.iterdir():
            p.unlink()
        work.rmdir()


def hotplug_test(work: Path, console: Path, t0: float) -> dict:
    disk = work / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(4 << 20)
    q = QMP(work / "qmp.sock")
    try:
        ta = time.monotonic()
        q.cmd("blockdev-add", driver="raw", **{"node-name": "d1", "read-only": True},
              file={"driver": "file", "filename": str(disk), "read-only": True})
        q.cmd("device_add", driver="scsi-hd", id="hd1", drive="d1", bus="scsi0.0",
              serial="img1")
        tq = time.monotonic() - ta
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            m = re.search(r"BLOCK-ADD (sd\w+)", console.read_text(errors="replace"))
            if m:
                return {"hotplug_qmp_s": round(tq, 4), "hotplug_dev": m.group(1),
                        "hotplug_seen_s": round(time.monotonic() - ta, 3)}
            time.sleep(0.01)
        return {"hotplug_qmp_s": round(tq, 4), "hotplug_error": "guest saw no new disk"}
    finally:
        q.close()


def summarize(runs: list[dict], keys=("first_byte", "kernel_init", "ready", "rss_mib",
                                      "pss_mib", "cpu_pct")) -> dict:
    out = {}
    for k in keys:
        vals = [r[k] for r in runs if isinstance(r.get(k), (int, float))]
        if vals:
            out[k] = {"median": round(statistics.median(vals), 3), "min": round(min(vals), 3),
                      "max": round(max(vals), 3), "n": len(vals)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    ap.add_argument("--kernel")
    ap.add_argument("--rootfs")
    ap.add_argument("--fstype", help="default: from the manifest or the file suffix")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tb-size", default="default", help="comma list, e.g. default,32,64")
    ap.add_argument("--mem", type=int, default=256)
    ap.add_argument("--no-quiet", action="store_true", help="drop 'quiet' (kernel timeline)")
    ap.add_argument("--append-extra", default="", help="extra kernel cmdline words")
    ap.add_argument("--ready-re", default=r"PYTHON-READY|AGENT-READY|frakpy-agent ready")
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--settle", type=float, default=5, help="idle seconds before memory")
    ap.add_argument("--cpu-window", type=float, default=5)
    ap.add_argument("--thp", choices=("on", "off"), default="off",
                    help="off = prctl(PR_SET_THP_DISABLE) before exec (what the daemon should do)")
    ap.add_argument("--no-sandbox", action="store_true")
    ap.add_argument("--hotplug", action="store_true")
    ap.add_argument("--json", type=Path, help="write all results here")
    ap.add_argument("--label", default="")
    a = ap.parse_args()

    kernel, rootfs, fstype = a.kernel, a.rootfs, a.fstype
    if not (kernel and rootfs):
        m = json.loads(a.manifest.read_text())
        kernel = kernel or m["kernel"]
        rootfs = rootfs or m["rootfs"]
        fstype = fstype or m.get("rootfs_fstype")
    fstype = fstype or ("ext4" if rootfs.endswith(".ext4") else "erofs")
    extra = a.append_extra
    if a.hotplug and "stay" not in extra.split():
        extra = (extra + " stay").strip()

    print("argv:", " ".join(qemu_argv(kernel, rootfs, fstype, Path("<work>"),
                                      tb_size=a.tb_size.split(",")[0], mem=a.mem,
                                      quiet=not a.no_quiet, extra=extra,
                                      sandbox=not a.no_sandbox)), flush=True)
    results = []
    for tb in a.tb_size.split(","):
        runs = []
        for i in range(a.runs):
            r = one_run(kernel, rootfs, fstype, tb_size=tb, mem=a.mem, quiet=not a.no_quiet,
                        extra=extra, ready_re=a.ready_re, timeout=a.timeout, settle=a.settle,
                        cpu_window=a.cpu_window, thp_off=a.thp == "off", hotplug=a.hotplug,
                        sandbox=not a.no_sandbox)
            runs.append(r)
            short = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()
                     if k not in ("console_tail",) and v is not None}
            print(f"  tb={tb} run {i + 1}: {json.dumps(short)}", flush=True)
        results.append({"label": a.label, "tb_size": tb, "kernel": kernel, "rootfs": rootfs,
                        "fstype": fstype, "mem": a.mem, "thp": a.thp, "extra": extra,
                        "summary": summarize(runs), "runs": runs})

    print()
    hdr = f"{'tb-size':>8} {'first byte':>11} {'->init':>8} {'->ready':>8} {'RSS MiB':>8} " \
          f"{'PSS MiB':>8} {'CPU %':>6}"
    print(hdr)
    print("-" * len(hdr))
    for res in results:
        s = res["summary"]

        def med(k: str, fmt: str = "{:.2f}", s: dict = s) -> str:
            return fmt.format(s[k]["median"]) if k in s else "-"
        print(f"{res['tb_size']:>8} {med('first_byte'):>11} {med('kernel_init'):>8} "
              f"{med('ready'):>8} {med('rss_mib', '{:.1f}'):>8} {med('pss_mib', '{:.1f}'):>8} "
              f"{med('cpu_pct'):>6}")
    print("(medians over", a.runs, "runs; seconds from QEMU spawn)")
    blob = json.dumps(results, indent=1)
    if a.json:
        a.json.write_text(blob + "\n")
    else:
        print(json.dumps([{k: v for k, v in r.items() if k != "runs"} for r in results]))


if __name__ == "__main__":
    main()
