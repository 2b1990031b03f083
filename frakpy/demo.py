"""The README's main job: frakpyd up, a pod VM and a container in it, output shown.

There is no internet here, so the demo serves its own image: a local registry on
127.0.0.1:5055 (Debian's docker-registry) holding a busybox image built by frakpy's test
image builder, declared as a plain-HTTP registry in /etc/frakpy/config.toml. It starts
frakpyd on the default socket (restarting one that lacks that registry: pods survive a
restart), then drives it with the `frakpy` CLI exactly as a user would. The pod is removed
at the end unless --keep is given; the daemon and the registry stay up.
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


DEMO_REGISTRY = "127.0.0.1:5055"
DEMO_IMAGE = f"{DEMO_REGISTRY}/demo/busybox:latest"
CONFIG = Path("/etc/frakpy/config.toml")


def ensure_config() -> bool:
    """Declare the demo registry in the config; True when the file changed."""
    text = CONFIG.read_text() if CONFIG.exists() else ""
    if f'[registries."{DEMO_REGISTRY}"]' in text:
        return False
    CONFIG.parent.mkdir(parents=True, exist_ok=True)
    CONFIG.write_text(text + f'\n# added by the frakpy demo: its local registry speaks plain HTTP\n'
                             f'[registries."{DEMO_REGISTRY}"]\ninsecure = true\n')
    from frakpy import config as cfgmod

    cfgmod.load(CONFIG)  # fail loudly here rather than in the daemon
    print(f"declared the demo registry {DEMO_REGISTRY} in {CONFIG}")
    return True


def ensure_registry() -> None:
    import asyncio
    import socket

    from frakpy.image import testimages
    from frakpy.image.push import push_layout
    from frakpy.image.registry import PullConfig, RegistryConfig

    host, port = DEMO_REGISTRY.split(":")
    root = Path("/var/lib/frakpy/demo-registry")
    try:
        socket.create_connection((host, int(port)), timeout=0.5).close()
    except OSError:
        root.mkdir(parents=True, exist_ok=True)
        (root / "config.yml").write_text(
            "version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\n"
            f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}}}\nhttp: {{addr: {DEMO_REGISTRY}}}\n")
        subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")], stdin=subprocess.DEVNULL,
                         stdout=open(root / "registry.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection((host, int(port)), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit(f"the demo registry did not start; see {root / 'registry.log'}")
                time.sleep(0.1)
        print(f"started a local registry on {DEMO_REGISTRY} (data in {root})")
    layout = Path("/var/cache/frakpy/demo-image")
    if not (layout / "index.json").exists():
        testimages.busybox_layout(layout, dynamic=True)
    cfg = PullConfig(registries=[RegistryConfig(name=DEMO_REGISTRY, insecure=True)])
    asyncio.run(push_layout(layout, DEMO_IMAGE, config=cfg))


def restart_daemon(log_path: Path) -> None:
    lock = Path(resolve_endpoint(None).removeprefix("unix://") + ".lock")
    try:
        pid = int(lock.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    print(f"restarting frakpyd (pid {pid}) to load the new config; pods keep running")
    os.kill(pid, 15)
    deadline = time.monotonic() + 30
    while _daemon_up(resolve_endpoint(None)) and time.monotonic() < deadline:
        time.sleep(0.1)
    ensure_daemon(log_path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="frakpy-demo")
    p.add_argument("--keep", action="store_true", help="leave the demo pod running")
    args = p.parse_args(argv)
    log_path = Path("/run/frakpy/frakpyd.log")
    changed = ensure_config()
    ensure_registry()
    ensure_daemon(log_path)
    if changed:
        restart_daemon(log_path)
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
    took = time.monotonic() - t0
    _frakpy("pods")
    info = json.loads(_frakpy("inspectp", pod_id, capture=True))
    extra = info.get("info", {})  # `frakpy inspectp` parses the verbose info's JSON values
    if isinstance(extra, str):
        extra = json.loads(extra or "{}")
    vm = extra.get("vm", {})
    boot = vm.get("boot", {})
    how = (f"a QEMU VM restored from the handler's VM template {boot.get('template', '')}"
           if boot.get("mode") == "template" else "a QEMU VM booted to a ready agent")
    print(f"(RunPodSandbox took {took:.2f}s: {how}; the first pod of a handler also builds the template)")
    if vm:
        print(f"\nVM pid {vm.get('pid')} on {vm.get('accelerator')} ({vm.get('accelerator_reason')}), "
              f"agent over {vm.get('transport')}; boot: {vm.get('boot')}")
    ip = info.get("status", {}).get("network", {}).get("ip", "")
    if ip:
        print(f"\n$ ping -c 2 {ip}    # the pod's IP, answered by the guest kernel through tap + tc redirect")
        subprocess.run(["busybox", "ping", "-c", "2", "-W", "2", ip], check=False)
    _frakpy("pull", DEMO_IMAGE)
    ctr = {
        "metadata": {"name": "hello", "attempt": 0},
        "image": {"image": DEMO_IMAGE},
        "command": ["sh", "-c",
                    "echo hello from $(hostname), kernel $(uname -r); "
                    "echo my address: $(ip -4 -o addr show eth0 | awk '{print $4}'); exec sleep 3600"],
        "log_path": "hello.log",
        "linux": {},
    }
    ctr_file = work / "container.json"
    ctr_file.write_text(json.dumps(ctr, indent=2))
    t0 = time.monotonic()
    ctr_id = _frakpy("create", pod_id, str(ctr_file), str(pod_file), capture=True).strip()
    _frakpy("start", ctr_id)
    print(f"(CreateContainer + StartContainer took {time.monotonic() - t0:.2f}s)")
    time.sleep(1.0)
    _frakpy("ps")
    _frakpy("logs", ctr_id)
    _frakpy("exec", ctr_id, "ps")
    print()
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
