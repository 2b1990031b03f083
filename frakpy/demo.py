"""The README's main job: frakpyd up, a pod VM running through CRI, its facts shown.

Starts frakpyd in the background on the default socket unless one already answers there,
then drives it with the `frakpy` CLI exactly as a user would. The pod is removed at the end
unless --keep is given; the daemon stays up for further `frakpy` commands.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from frakpy.cri.client import CRIClient, resolve_endpoint
from frakpy.cri.proto import api_pb2 as pb

BIN = Path(sys.executable).parent


def _frakpy(*args: str, capture: bool = False) -> str:
    cmd = [str(BIN / "frakpy"), *args]
    print(f"\n$ frakpy {shlex.join(args)}", flush=True)
    out = subprocess.run(cmd, check=True, text=True, capture_output=capture)
    if capture:
        print(out.stdout, end="", flush=True)
        return out.stdout
    return ""


def _daemon_up(socket: str) -> bool:
    try:
        with CRIClient(socket, timeout=2) as c:
            c.call(c.runtime.Version, pb.VersionRequest())
        return True
    except Exception:
        return False


def ensure_daemon(log_path: Path) -> None:
    socket = resolve_endpoint(None)
    if _daemon_up(socket):
        print(f"frakpyd already answers on {socket}")
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"starting frakpyd (log: {log_path})", flush=True)
    subprocess.Popen([str(BIN / "frakpyd")], stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
                     stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while not _daemon_up(socket):
        if time.monotonic() > deadline:
            sys.exit(f"frakpyd did not come up; see {log_path}")
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="frakpy-demo")
    p.add_argument("--keep", action="store_true", help="leave the demo pod running")
    args = p.parse_args(argv)
    ensure_daemon(Path("/run/frakpy/frakpyd.log"))
    _frakpy("version")
    work = Path(tempfile.mkdtemp(prefix="frakpy-demo-"))
    pod = {
        "metadata": {"name": "demo", "namespace": "default", "uid": f"demo-{int(time.time())}", "attempt": 0},
        "hostname": "demo",
        "log_directory": str(work / "logs"),
        "linux": {},
    }
    pod_file = work / "pod.json"
    pod_file.write_text(json.dumps(pod, indent=2))
    t0 = time.monotonic()
    pod_id = _frakpy("runp", str(pod_file), capture=True).strip()
    print(f"(RunPodSandbox took {time.monotonic() - t0:.2f}s: a QEMU VM booted to a ready agent)")
    _frakpy("pods")
    info = json.loads(_frakpy("inspectp", pod_id, capture=True))
    vm = json.loads(info.get("info", {}).get("info", "{}")).get("vm", {})
    if vm:
        print(f"\nVM pid {vm.get('pid')} on {vm.get('accelerator')} ({vm.get('accelerator_reason')}), "
              f"agent over {vm.get('transport')}; boot: {vm.get('boot')}")
    ip = info.get("status", {}).get("network", {}).get("ip", "")
    if ip:
        print(f"\n$ ping -c 2 {ip}    # the pod's IP, answered by the guest kernel through tap + tc redirect")
        subprocess.run(["busybox", "ping", "-c", "2", "-W", "2", ip], check=False)
    if not args.keep:
        _frakpy("stopp", pod_id)
        _frakpy("rmp", pod_id)
        _frakpy("pods")
    else:
        print(f"\nPod {pod_id[:12]} left running; try `{BIN}/frakpy pods`.")
    print(f"\nfrakpyd keeps running (pid in {os.environ.get('FRAKPY_SOCKET', '/run/frakpy/frakpy.sock')}.lock).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
