"""containerd 1.6 + runc as a CRI peer for side-by-side benchmarks, private to one run.

    with Peer(registry_host="127.0.0.1:5000") as peer:
        with CRIClient(peer.endpoint) as c: ...

Everything lives under its own directory in /tmp: socket, root, state, CNI config, IPAM state and
the rendered ``config.toml``. Missing packages (``containerd runc containernetworking-plugins``)
are installed with apt. The pause image is a static C program (sleeps until SIGTERM/SIGINT, reaps
children) built with ``gcc -static`` and pushed to the given local registry, which containerd
reaches through a ``hosts.toml`` mirror entry. CNI is a bridge conflist of its own (own bridge
name, 10.252.0.0/16, ``ipMasq`` off so nothing leaves the machine). The CRI plugin runs with
``restrict_oom_score_adj = true`` (this machine withholds CAP_SYS_RESOURCE).

``close()`` always cleans up: removes its pods and containers through CRI, stops containerd,
kills leftover shims started for its socket (by pid), deletes the network namespaces its pods
used, unmounts what is left under its directory, deletes its bridge and removes the directory.

Run alone (``python bench/peer.py``) it starts, runs one pod, prints its address and cleans up.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from frakpy.cri.client import CRIClient  # noqa: E402
from frakpy.cri.proto import api_pb2 as pb  # noqa: E402

PACKAGES = {"containerd": "/usr/bin/containerd", "runc": "/usr/sbin/runc",
            "containernetworking-plugins": "/usr/lib/cni/bridge"}
CNI_BIN = "/usr/lib/cni"
SUBNET = "10.252.0.0/16"

PAUSE_C = r"""
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
    struct sigaction q = {0}, r = {0};
    q.sa_handler = quit; r.sa_handler = reap; r.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    sigaction(SIGINT, &q, NULL); sigaction(SIGTERM, &q, NULL); sigaction(SIGCHLD, &r, NULL);
    for (;;) pause();
}
"""


def ensure_packages() -> None:
    missing = [p for p, f in PACKAGES.items() if not os.path.exists(f)]
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    got = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing],
                         env=env, capture_output=True, text=True)
    if got.returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing],
                       env=env, check=True, capture_output=True)


def build_pause_image(work: Path, registry_host: str, tag: str = "bench") -> str:
    """Compile the static pause binary, write an OCI layout, push it; returns the image name."""
    from frakpy.image import ocibuild as ob
    from frakpy.image.push import push_layout
    from frakpy.image.registry import PullConfig, RegistryConfig

    work.mkdir(parents=True, exist_ok=True)
    src, binary = work / "pause.c", work / "pause"
    src.write_text(PAUSE_C)
    subprocess.run(["gcc", "-static", "-Os", "-s", "-o", str(binary), str(src)], check=True)
    layout = ob.OCILayout(work / "pause-layout")
    spec = ob.ImageSpec(layers=[[ob.file("pause", source=binary, mode=0o755)]], entrypoint=["/pause"],
                        env=[], working_dir="/")
    layout.tag(layout.add_image(spec), tag)
    image = f"{registry_host}/pause:{tag}"
    cfg = PullConfig(registries=[RegistryConfig(name=registry_host, insecure=True)])
    asyncio.run(push_layout(work / "pause-layout", image, config=cfg))
    return image


class Peer:
    def __init__(self, registry_host: str, base: Path | None = None) -> None:
        self.registry_host = registry_host
        self.base = base or Path(tempfile.mkdtemp(prefix="ctrd", dir="/tmp"))
        self.socket = self.base / "containerd.sock"
        self.endpoint = f"unix://{self.socket}"
        self.bridge = "ctb" + self.base.name[-6:].replace("_", "x").replace("-", "x").lower()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.base / "containerd.log"
        self.pause_image = ""
        self.netns: set[str] = set()
        self.version = ""

    # ---- set-up ----------------------------------------------------------------------------
    def render(self) -> Path:
        b = self.base
        (b / "cni").mkdir(parents=True, exist_ok=True)
        conflist = {
            "cniVersion": "1.0.0",
            "name": f"peer-{self.bridge}",
            "plugins": [{
                "type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": False,
                "hairpinMode": True,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": SUBNET}]],
                         "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(b / "ipam")},
            }],
        }
        (b / "cni" / "10-peer.conflist").write_text(json.dumps(conflist, indent=2))
        hosts = b / "certs.d" / self.registry_host
        hosts.mkdir(parents=True, exist_ok=True)
        (hosts / "hosts.toml").write_text(textwrap.dedent(f"""\
            server = "http://{self.registry_host}"

            [host."http://{self.registry_host}"]
              capabilities = ["pull", "resolve"]
              skip_verify = true
            """))
        config = b / "config.toml"
        config.write_text(textwrap.dedent(f"""\
            version = 2
            root = "{b}/root"
            state = "{b}/state"
            disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",
                                "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs",
                                "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]

            [grpc]
              address = "{self.socket}"
            [ttrpc]
              address = "{b}/containerd.sock.ttrpc"
            [debug]
              address = ""
              level = "info"
            [metrics]
              address = ""

            [plugins."io.containerd.grpc.v1.cri"]
              sandbox_image = "{self.pause_image}"
              restrict_oom_score_adj = true
              disable_apparmor = true
              enable_selinux = false
              stream_server_address = "127.0.0.1"
              stream_server_port = "0"
              enable_cdi = false
              [plugins."io.containerd.grpc.v1.cri".containerd]
                snapshotter = "overlayfs"
                default_runtime_name = "runc"
                [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
                  runtime_type = "io.containerd.runc.v2"
                  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
                    BinaryName = "{shutil.which("runc") or PACKAGES["runc"]}"
                    SystemdCgroup = false
              [plugins."io.containerd.grpc.v1.cri".cni]
                bin_dir = "{CNI_BIN}"
                conf_dir = "{b}/cni"
                max_conf_num = 1
              [plugins."io.containerd.grpc.v1.cri".registry]
                config_path = "{b}/certs.d"
            """))
        return config

    def start(self) -> Peer:
        try:
            ensure_packages()
            self.pause_image = build_pause_image(self.base / "pause", self.registry_host)
            config = self.render()
            self.proc = subprocess.Popen(
                ["containerd", "--config", str(config)], stdout=open(self.log, "wb"),  # noqa: SIM115
                stderr=subprocess.STDOUT, start_new_session=True)
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.socket.exists():
                try:
                    with CRIClient(self.endpoint, timeout=2) as c:
                        v = c.call(c.runtime.Version, pb.VersionRequest())
                        c.call(c.runtime.Status, pb.StatusRequest())
                    self.version = f"{v.runtime_name} {v.runtime_version}"
                    return
                except Exception as exc:  # noqa: BLE001
                    last = exc
            time.sleep(0.05)
        raise RuntimeError(f"containerd CRI not ready in {timeout}s ({last}):\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def track_pod(self, c: CRIClient, pod_id: str) -> None:
        """Remember a pod's netns path so close() can delete it if containerd does not."""
        try:
            st = c.call(c.runtime.PodSandboxStatus, pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True))
            info = json.loads(st.info.get("info", "{}"))
            for ns in info.get("runtimeSpec", {}).get("linux", {}).get("namespaces", []):
                if ns.get("type") == "network" and ns.get("path"):
                    self.netns.add(ns["path"])
        except Exception:  # noqa: BLE001
            pass

    # ---- clean-up ----------------------------------------------------------------------------
    def _remove_pods(self) -> None:
        if self.proc is None or self.proc.poll() is not None or not self.socket.exists():
            return
        try:
            with CRIClient(self.endpoint, timeout=30) as c:
                for ctr in c.call(c.runtime.ListContainers, pb.ListContainersRequest()).containers:
                    try:
                        c.call(c.runtime.StopContainer, pb.StopContainerRequest(container_id=ctr.id, timeout=0))
                        c.call(c.runtime.RemoveContainer, pb.RemoveContainerRequest(container_id=ctr.id))
                    except Exception:  # noqa: BLE001
                        pass
                for pod in c.call(c.runtime.ListPodSandbox, pb.ListPodSandboxRequest()).items:
                    self.track_pod(c, pod.id)
                    try:
                        c.call(c.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod.id))
                        c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id))
                    except Exception:  # noqa: BLE001
                        pass
        except Exception:  # noqa: BLE001
            pass

    def _own_shims(self) -> list[int]:
        """Pids of containerd-shim processes started for this containerd (its socket in argv)."""
        out = []
        needle = str(self.socket).encode()
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                argv = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and b"containerd-shim" in argv[0] and needle in argv:
                out.append(int(d.name))
        return out

    def close(self) -> None:
        self._remove_pods()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self._own_shims():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for ns in self.netns:
            subprocess.run(["umount", ns], capture_output=True)
            try:
                os.unlink(ns)
            except OSError:
                pass
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        for m in sorted((m for m in mounts if m.startswith(str(self.base) + "/")), key=len, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Peer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def main() -> int:
    from tests.integration.registry_fixtures import Registry

    work = Path(tempfile.mkdtemp(prefix="peer-reg", dir="/tmp"))
    reg = Registry(work / "registry")
    try:
        with Peer(reg.host) as peer:
            print(f"{peer.version} on {peer.endpoint} (pause {peer.pause_image}, bridge {peer.bridge})")
            cfg = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="p", namespace="bench", uid="peer-p"),
                                      hostname="p", log_directory=str(peer.base / "logs"))
            with CRIClient(peer.endpoint, timeout=60) as c:
                t0 = time.monotonic()
                pod_id = c.call(c.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=cfg)).pod_sandbox_id
                peer.track_pod(c, pod_id)
                print(f"RunPodSandbox {time.monotonic() - t0:.3f}s netns {sorted(peer.netns)}")
    finally:
        reg.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
