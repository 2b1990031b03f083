"""Start frakpyd as a real subprocess on a temporary socket; always stopped afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frakpy.cri.client import CRIClient

GUEST_MANIFEST = Path(os.environ.get("FRAKPY_GUEST_MANIFEST", "/var/lib/frakpy/guest/guest.json"))
# How test pods start: "template" (restored from a VM template, the default) or "cold" (booted).
VM_MODE = os.environ.get("FRAKPY_TEST_VM_MODE", "template")
# Test daemons share their templates (one build per guest/profile for the whole run).
TEST_TEMPLATES = Path(os.environ.get("FRAKPY_TEST_TEMPLATES", "/var/lib/frakpy/test-templates"))


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    socket: Path
    state_dir: Path
    run_dir: Path
    config: Path
    log: Path

    def client(self, timeout: float = 60.0) -> CRIClient:
        return CRIClient(f"unix://{self.socket}", timeout=timeout)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def short_tmpdir(prefix: str = "fk") -> Path:
    """Unix socket paths are limited to 108 bytes: keep runtime dirs short."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def bridge_name(base: Path) -> str:
    return "frk" + base.name[-6:].replace("_", "x").replace("-", "x").lower()


def install_test_network(base: Path) -> None:
    """A bridge conflist private to this daemon: own bridge, own /24, own IPAM state."""
    from frakpy.network.defaults import install_default

    octet = 1 + (int.from_bytes(base.name.encode(), "little") % 250)
    install_default(str(base / "cni"), bridge=bridge_name(base), subnet=f"10.251.{octet}.0/24",
                    data_dir=str(base / "ipam"), name=f"frakpy-test-{octet}")


def write_config(base: Path, extra: str = "", *, cni: bool = True, vm_mode: str | None = None,
                 templates_dir: Path | None = None) -> Path:
    """``vm_mode`` ("template"/"cold", default VM_MODE) sets the default handler's ``template``
    unless ``extra`` has its own [handlers.frakpy] table."""
    if cni:
        install_test_network(base)
    mode = vm_mode or VM_MODE
    if "[handlers.frakpy]" not in extra:
        extra += f"\n[handlers.frakpy]\ntemplate = {'true' if mode == 'template' else 'false'}\n"
    cfg = base / "config.toml"
    cfg.write_text(
        "[daemon]\n"
        f'socket = "{base}/frakpy.sock"\n'
        f'state_dir = "{base}/state"\n'
        f'run_dir = "{base}/run"\n'
        'log_level = "debug"\n'
        "[guest]\n"
        f'manifest = "{GUEST_MANIFEST}"\n'
        f'templates_dir = "{templates_dir or TEST_TEMPLATES}"\n'
        "[cni]\n"
        f'conf_dir = "{base}/cni"\n'
        f'netns_dir = "{base}/netns"\n' + extra
    )
    return cfg


def start(base: Path, config: Path | None = None, wait: bool = True, env: dict[str, str] | None = None) -> Daemon:
    config = config or write_config(base)
    log = base / f"frakpyd-{int(time.time() * 1000)}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "frakpy", "daemon", "--config", str(config)],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    d = Daemon(proc, base / "frakpy.sock", base / "state", base / "run", config, log)
    if wait:
        wait_ready(d)
    return d


def wait_ready(d: Daemon, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if d.proc.poll() is not None:
            raise RuntimeError(f"frakpyd exited with {d.proc.returncode}:\n{d.log_text()}")
        if d.socket.exists():
            try:
                with d.client(timeout=2) as c:
                    from frakpy.cri.proto import api_pb2 as pb
                    c.call(c.runtime.Version, pb.VersionRequest())
                return
            except Exception:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"frakpyd did not come up in {timeout}s:\n{d.log_text()}")


def stop(d: Daemon, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
    if d.proc.poll() is None:
        d.proc.send_signal(sig)
        try:
            d.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            d.proc.kill()
            d.proc.wait()
    return d.proc.returncode


def stop_whoever_serves(base: Path, timeout: float = 30.0) -> None:
    """Stop the daemon holding this base's socket, even one a test restarted under a new handle."""
    lock = base / "frakpy.sock.lock"
    try:
        pid = int(lock.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def cleanup_host(base: Path) -> None:
    """What a test daemon leaves on the host by design: its bridge and netns dir mount."""
    subprocess.run(["ip", "link", "del", bridge_name(base)], capture_output=True)
    subprocess.run(["umount", "-l", str(base / "netns")], capture_output=True)
    # the daemon's volume mount namespace (frakpy.sandbox.share) is pinned by a bind: unpin it
    subprocess.run(["umount", "-l", str(base / "run" / "shares.mntns")], capture_output=True)
    # binds in the node's namespace under the pods' 9p shares would let rmtree delete the bound
    # host directories' contents through them (frakpyd keeps its binds in its own namespace)
    shares = f"{base}/run/shares/"
    with open("/proc/self/mountinfo") as f:
        binds = [line.split()[4] for line in f if line.split()[4].startswith(shares)]
    for target in sorted(binds, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True)
    with open("/proc/self/mountinfo") as f:
        if any(line.split()[4].startswith(shares) for line in f):
            print(f"cleanup_host: mounts left under {shares}; not removing {base}")
            return
    if os.environ.get("FRAKPY_KEEP_TEST_DIRS") != "1":  # keep logs for debugging when asked
        import shutil

        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def running_daemon(base: Path | None = None, extra_config: str = "") -> Iterator[Daemon]:
    base = base or short_tmpdir()
    d = start(base, write_config(base, extra_config))
    try:
        yield d
    finally:
        stop(d)
        cleanup_host(base)


@contextmanager
def daemon_with_image(work: Path, extra: str = "", **config_kw: Any) -> Iterator[tuple[Daemon, str, Path]]:
    """A real registry serving the project-built busybox image, a daemon that trusts it over plain
    HTTP, the image pulled through CRI; every pod removed and everything stopped afterwards."""
    import asyncio

    from frakpy.cri.proto import api_pb2 as pb
    from frakpy.image import testimages
    from frakpy.image.push import push_layout
    from frakpy.image.registry import PullConfig, RegistryConfig

    from .registry_fixtures import Registry

    reg = Registry(work / "registry")
    base = short_tmpdir()
    d = None
    try:
        testimages.busybox_layout(work / "busybox", dynamic=True, entrypoint=["/bin/sh", "-c"], cmd=["echo hi"])
        image = f"{reg.host}/busybox:test"
        cfg = PullConfig(registries=[RegistryConfig(name=reg.host, insecure=True)])
        asyncio.run(push_layout(work / "busybox", image, config=cfg))
        d = start(base, write_config(base, f'[registries."{reg.host}"]\ninsecure = true\n' + extra, **config_kw))
        with d.client() as c:
            c.call(c.image.PullImage, pb.PullImageRequest(image=pb.ImageSpec(image=image)))
        print(f"\nfrakpyd log: {d.log}")
        yield d, image, base
    finally:
        if d is not None:
            with d.client(timeout=120) as c:
                for item in c.call(c.runtime.ListPodSandbox, pb.ListPodSandboxRequest()).items:
                    c.call(c.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=item.id))
                    c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=item.id))
            stop(d)
            stop_whoever_serves(base)  # a test may have restarted the daemon
        cleanup_host(base)
        reg.close()
