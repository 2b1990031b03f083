"""The agent over vsock in a real pod VM: kernel vhost-vsock where the host has it, else frakpy's
userspace vhost-user-vsock device (frakpy.vm.vsockdev), which is what runs on hosts like this one.

Run, answer (Health through RunPodSandbox, ExecSync in a container), survive a daemon SIGKILL and
be re-adopted over vsock, leave no backend process, socket or run dir; a bad vsock_port is refused.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from frakpy.cri.proto import api_pb2 as pb

from . import daemon_fixture as dfx
from .conftest import vm_requirements
from .registry_fixtures import requirements_missing

_missing = vm_requirements() or requirements_missing()
pytestmark = pytest.mark.skipif(_missing is not None, reason=_missing or "")

VSOCK_PORT = 2049  # not the default: proves the port reaches the guest agent
EXTRA = f"""
[handlers.frakpy]
agent_transport = "vsock"
vsock_port = {VSOCK_PORT}
template = false
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("vsock")
    with dfx.daemon_with_image(work, EXTRA) as (d, image, base):
        yield {"daemon": d, "image": image, "base": base}


def pod_config(name: str, log_dir: Path) -> pb.PodSandboxConfig:
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace="test", uid=f"uid-{name}", attempt=0),
        hostname=name, log_directory=str(log_dir))


def vm_info(c, pod_id: str) -> dict:
    st = c.call(c.runtime.PodSandboxStatus, pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True))
    return json.loads(st.info["info"])["vm"]


def backend_pids(sandbox_id: str) -> list[int]:
    """Live vsock backend processes of a sandbox (by the label on their command line)."""
    label = f"frakpy-vsock-{sandbox_id[:12]}".encode()
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if label in (entry / "cmdline").read_bytes().split(b"\0") and \
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                out.append(int(entry.name))
        except OSError:
            continue
    return out


def memory_of(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":")
        fields[key] = int(value.split()[0])
    return fields["Rss"] / 1024, fields["Pss"] / 1024


def exec_echo(c, cid: str, text: str) -> bytes:
    r = c.call(c.runtime.ExecSync, pb.ExecSyncRequest(container_id=cid, cmd=["echo", text], timeout=30))
    assert r.exit_code == 0
    return r.stdout


@pytest.fixture(scope="module")
def pod(env):
    d, image, base = env["daemon"], env["image"], env["base"]
    log_dir = base / "logs"
    log_dir.mkdir(exist_ok=True)
    sb_cfg = pod_config("vsock-pod", log_dir)
    with d.client(timeout=120) as c:
        pod_id = c.call(c.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=sb_cfg)).pod_sandbox_id
        cid = c.call(c.runtime.CreateContainer, pb.CreateContainerRequest(
            pod_sandbox_id=pod_id, sandbox_config=sb_cfg, config=pb.ContainerConfig(
                metadata=pb.ContainerMetadata(name="sleeper"), image=pb.ImageSpec(image=image),
                command=["sleep", "3600"], log_path="sleeper/0.log"))).container_id
        c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
    env.update(pod_id=pod_id, container_id=cid)
    return env


def test_pod_runs_with_its_agent_on_vsock(pod) -> None:
    d, pod_id = pod["daemon"], pod["pod_id"]
    with d.client(timeout=120) as c:
        vm = vm_info(c, pod_id)
        assert vm["transport"] == "vsock"
        run_dir = Path(vm["run_dir"])
        argv = (run_dir / "qemu.argv").read_text().splitlines()
        assert f"frakpy.vsock_port={VSOCK_PORT}" in argv[argv.index("-append") + 1].split()
        if os.path.exists("/dev/vhost-vsock"):
            assert vm["vsock"]["backend"] == "kernel" and vm["vsock"]["cid"] >= 3
            assert vm["agent"] == f"vsock://{vm['vsock']['cid']}:{VSOCK_PORT}"
        else:
            assert vm["vsock"] == {"backend": "user", "cid": 3}
            assert vm["agent"] == f"hvsock://{run_dir}/vsock.sock:{VSOCK_PORT}"
            assert any(a.startswith("vhost-user-vsock-") for a in argv)
            assert any(a.startswith("memory-backend-memfd,id=ram,") and "share=on" in a for a in argv)
            pids = backend_pids(pod_id)
            assert pids == [int((run_dir / "vsock.pid").read_text())]
            assert os.getsid(pids[0]) != os.getsid(d.proc.pid), "the backend must be in a session of its own"
            rss, pss = memory_of(pids[0])
            print(f"\nvsock backend pid {pids[0]}: RSS {rss:.1f} MiB, PSS {pss:.1f} MiB")
        assert exec_echo(c, pod["container_id"], "over vsock") == b"over vsock\n"
        boot = vm["boot"]
        print(f"cold boot {boot.get('total_s')} s, GuestDetails round trip {boot.get('agent_rpc_roundtrip_s')} s")


def test_agent_health_round_trip_over_vsock(pod) -> None:
    """Health straight over the pod's agent URI from a separate client, as re-adoption does it."""
    d, pod_id = pod["daemon"], pod["pod_id"]
    with d.client() as c:
        uri = vm_info(c, pod_id)["agent"]
    code = (
        "import asyncio, sys, time\n"
        "from frakpy.agent.client import AgentClient\n"
        "async def main():\n"
        f"    a = await AgentClient.connect({uri!r}, timeout=30)\n"
        "    await a.health(timeout=30)\n"
        "    t = []\n"
        "    for _ in range(20):\n"
        "        t0 = time.monotonic(); await a.health(timeout=30); t.append(time.monotonic() - t0)\n"
        "    await a.close()\n"
        "    t.sort(); print(f'health p50 {t[len(t)//2]*1000:.2f} ms')\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    print("\n" + out.stdout.strip())


def test_daemon_sigkill_and_restart_readopts_over_vsock(pod) -> None:
    d, base, pod_id = pod["daemon"], pod["base"], pod["pod_id"]
    with d.client() as c:
        vm = vm_info(c, pod_id)
    backends = backend_pids(pod_id)
    dfx.stop(d, signal.SIGKILL)
    assert backend_pids(pod_id) == backends, "the vsock backend must outlive the daemon"
    d2 = dfx.start(base, d.config)
    pod["daemon"] = d2
    with d2.client(timeout=120) as c:
        st = c.call(c.runtime.PodSandboxStatus, pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id))
        assert st.status.state == pb.SANDBOX_READY
        assert f"sandbox {pod_id[:12]} re-adopted" in d2.log_text()
        again = vm_info(c, pod_id)
        assert (again["pid"], again["agent"], again["vsock"]) == (vm["pid"], vm["agent"], vm["vsock"])
        assert exec_echo(c, pod["container_id"], "after the restart") == b"after the restart\n"
    assert backend_pids(pod_id) == backends


def test_stop_and_remove_leave_nothing(pod) -> None:
    d, pod_id = pod["daemon"], pod["pod_id"]
    with d.client(timeout=120) as c:
        vm = vm_info(c, pod_id)
        run_dir = Path(vm["run_dir"])
        c.call(c.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        assert backend_pids(pod_id) == []
        assert not (run_dir / "vsock.sock").exists() and not (run_dir / "vsock.pid").exists()
        c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        assert not run_dir.exists()
    assert backend_pids(pod_id) == []


@pytest.mark.parametrize("port", ["0", "4294967295", '"1024"'])
def test_bad_vsock_port_is_refused_naming_the_key(tmp_path: Path, port: str) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"[handlers.vs]\nagent_transport = \"vsock\"\nvsock_port = {port}\n")
    out = subprocess.run([sys.executable, "-m", "frakpy", "config", "check", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "handlers.vs.vsock_port" in out.stdout + out.stderr
