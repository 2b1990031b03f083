"""Pod sandboxes are real QEMU VMs: lifecycle, filters, errors, crash and restart recovery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from frakpy.cri.client import CRIError
from frakpy.cri.proto import api_pb2 as pb

from . import daemon_fixture as dfx
from .conftest import vm_requirements

pytestmark = pytest.mark.skipif(vm_requirements() is not None, reason=vm_requirements() or "")


def pod_config(name: str, uid: str | None = None, labels: dict[str, str] | None = None,
               **linux: object) -> pb.PodSandboxConfig:
    cfg = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace="test", uid=uid or f"uid-{name}", attempt=0),
        hostname=name, log_directory=f"/tmp/frakpy-test-logs/{name}", labels=labels or {},
        annotations={"note": "integration"},
    )
    if linux:
        cfg.linux.security_context.namespace_options.CopyFrom(pb.NamespaceOption(**linux))
    return cfg


def run(c, cfg: pb.PodSandboxConfig, handler: str = "") -> str:
    return c.call(c.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=cfg, runtime_handler=handler)).pod_sandbox_id


def status(c, pod_id: str, verbose: bool = False) -> pb.PodSandboxStatusResponse:
    return c.call(c.runtime.PodSandboxStatus, pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=verbose))


def vm_info(c, pod_id: str) -> dict:
    return json.loads(status(c, pod_id, verbose=True).info["info"])["vm"]


def qemu_pids() -> set[int]:
    """Live QEMU processes (an exited one may linger as a zombie until init reaps it)."""
    out = subprocess.run(["pgrep", "-x", "qemu-system-x86"], capture_output=True, text=True).stdout
    live = set()
    for pid in {int(p) for p in out.split()}:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            live.add(pid)
    return live


def remove_all(c) -> None:
    for item in c.call(c.runtime.ListPodSandbox, pb.ListPodSandboxRequest()).items:
        c.call(c.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=item.id))
        c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=item.id))


EXTRA = """
[handlers.slowboot]
boot_timeout_s = 4
kernel_params = "init=/usr/bin/sleep -- 3600"

[handlers.large]
vcpus = 2
memory_mib = 384

[handlers.daxroot]
template = false

[handlers.diskroot]
template = false
root_dax = false
"""


@pytest.fixture(scope="module")
def daemon():
    base = dfx.short_tmpdir()
    d = dfx.start(base, dfx.write_config(base, EXTRA))
    try:
        yield d
    finally:
        with d.client() as c:
            remove_all(c)
        dfx.stop(d)
        dfx.cleanup_host(base)


@pytest.mark.parametrize(("handler", "device", "dax"), [("daxroot", "pmem", True), ("diskroot", "virtio-blk", False)])
def test_root_image_read_in_place_or_from_a_disk(daemon, handler: str, device: str, dax: bool):
    """By default the guest maps its root image as persistent memory (EROFS reads it in place and
    the host shares its pages between VMs); root_dax = false boots it from a virtio-blk disk."""
    with daemon.client() as c:
        pod_id = run(c, pod_config(f"root-{handler}"), handler)
        try:
            vm = vm_info(c, pod_id)
            assert vm["root_device"] == device and vm["boot"]["mode"] == "cold"
            fs, options = vm["boot"]["root_mount"].split()[1:]
            assert fs == "erofs" and "ro" in options.split(",")
            assert ("dax=always" in options.split(",")) == dax, vm["boot"]["root_mount"]
            argv = (Path(vm["run_dir"]) / "qemu.argv").read_text().splitlines()
            assert any(a.startswith("memory-backend-file,id=rootfs,") and "readonly=on" in a for a in argv) == dax
            assert any(a.startswith("virtio-blk-") for a in argv) != dax
        finally:
            remove_all(c)


def test_run_status_list_stop_remove(daemon):
    with daemon.client() as c:
        pod_id = run(c, pod_config("life", labels={"app": "web", "tier": "front"}))
        st = status(c, pod_id).status
        assert st.state == pb.SANDBOX_READY
        assert st.metadata.name == "life" and st.metadata.namespace == "test"
        assert st.labels["app"] == "web" and st.annotations["note"] == "integration"
        assert st.runtime_handler == "frakpy"
        assert abs(st.created_at / 1e9 - time.time()) < 600
        vm = vm_info(c, pod_id)
        assert vm["accelerator"] in {"tcg", "kvm"} and vm["transport"] in {"serial", "vsock"}
        assert vm["pid"] in qemu_pids()
        assert vm["boot"]["total_s"] > 0
        if vm["boot"]["mode"] == "cold":  # the boot breakdown on the kernel's own clock
            b = vm["boot"]
            assert 0 < b["kernel_to_init_s"] < b["kernel_to_agent_start_s"] < b["kernel_to_agent_ready_s"], b
            assert b["guest_clock_lag_s"] >= 0, b
            assert b["qemu_to_kernel_s"] + b["kernel_to_agent_ready_s"] <= b["total_s"] + 0.05, b
        assert vm["root_device"] == "pmem"
        run_dir = Path(vm["run_dir"])
        assert (run_dir / "qemu.argv").read_text().startswith("qemu-system-x86_64\n")

        items = c.call(c.runtime.ListPodSandbox, pb.ListPodSandboxRequest()).items
        assert pod_id in [i.id for i in items]

        c.call(c.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        assert status(c, pod_id).status.state == pb.SANDBOX_NOTREADY
        assert vm["pid"] not in qemu_pids()
        # stop and remove are idempotent
        c.call(c.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        c.call(c.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        assert not run_dir.exists()
        with pytest.raises(CRIError) as exc:
            status(c, pod_id)
        assert exc.value.code == grpc.StatusCode.NOT_FOUND


def test_filters(daemon):
    with daemon.client() as c:
        a = run(c, pod_config("fa", labels={"app": "a", "env": "x"}))
        b = run(c, pod_config("fb", labels={"app": "b", "env": "x"}), handler="large")
        c.call(c.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=b))

        def ids(**f) -> set[str]:
            req = pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(**f))
            return {i.id for i in c.call(c.runtime.ListPodSandbox, req).items}

        assert {a, b} <= ids()
        assert ids(id=a) == {a}
        assert ids(id=a[:10]) == {a}
        assert a in ids(state=pb.PodSandboxStateValue(state=pb.SANDBOX_READY))
        assert b not in ids(state=pb.PodSandboxStateValue(state=pb.SANDBOX_READY))
        assert b in ids(state=pb.PodSandboxStateValue(state=pb.SANDBOX_NOTREADY))
        assert ids(label_selector={"app": "a"}) == {a}
        assert ids(label_selector={"env": "x"}) >= {a, b}
        assert ids(label_selector={"env": "x", "app": "b"}) == {b}
        assert ids(label_selector={"app": "zzz"}) == set()
        assert ids(id=a, label_selector={"app": "b"}) == set()
        large = [i for i in c.call(c.runtime.ListPodSandbox, pb.ListPodSandboxRequest()).items if i.id == b]
        assert large[0].runtime_handler == "large"
        for pod in (a, b):
            c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod))


def _assert_nothing_left(daemon, before: set[int]) -> None:
    assert qemu_pids() <= before, "a QEMU process was left behind"
    leftovers = list((daemon.run_dir / "sandboxes").glob("*")) if (daemon.run_dir / "sandboxes").exists() else []
    assert leftovers == [], f"run dirs left behind: {leftovers}"


@pytest.mark.parametrize(
    ("cfg", "handler", "code", "needle"),
    [
        (pod_config("bad-handler"), "gpu", grpc.StatusCode.INVALID_ARGUMENT, "unknown runtime handler 'gpu'"),
        (pod_config("hostnet", network=pb.NODE), "", grpc.StatusCode.INVALID_ARGUMENT, "host's network"),
        (pod_config("hostpid", pid=pb.NODE, ipc=pb.NODE), "", grpc.StatusCode.INVALID_ARGUMENT, "PID and IPC"),
        (pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="x")), "", grpc.StatusCode.INVALID_ARGUMENT,
         "namespace and uid"),
    ],
)
def test_bad_requests_leave_nothing(daemon, cfg, handler, code, needle):
    before = qemu_pids()
    with daemon.client() as c:
        with pytest.raises(CRIError) as exc:
            run(c, cfg, handler)
        assert exc.value.code == code
        assert needle in str(exc.value)
        assert all(i.metadata.name != cfg.metadata.name
                   for i in c.call(c.runtime.ListPodSandbox, pb.ListPodSandboxRequest()).items)
    _assert_nothing_left(daemon, before)


def test_same_pod_twice_is_already_exists(daemon):
    with daemon.client() as c:
        pod_id = run(c, pod_config("twice"))
        with pytest.raises(CRIError) as exc:
            run(c, pod_config("twice"))
        assert exc.value.code == grpc.StatusCode.ALREADY_EXISTS
        assert pod_id in str(exc.value)
        c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        # once removed, the name is free again
        pod_id = run(c, pod_config("twice"))
        c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def test_boot_timeout_names_stage_and_leaks_nothing(daemon):
    before = qemu_pids()
    with daemon.client() as c:
        with pytest.raises(CRIError) as exc:
            run(c, pod_config("slow"), handler="slowboot")
        assert exc.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "stage reached" in str(exc.value)
    _assert_nothing_left(daemon, before)


def test_qemu_killed_from_outside_goes_notready(daemon):
    with daemon.client() as c:
        pod_id = run(c, pod_config("victim"))
        pid = vm_info(c, pod_id)["pid"]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while status(c, pod_id).status.state != pb.SANDBOX_NOTREADY:
            assert time.monotonic() < deadline, "sandbox still READY after its QEMU died"
            time.sleep(0.1)
        c.call(c.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        assert not any(i.id == pod_id for i in c.call(c.runtime.ListPodSandbox, pb.ListPodSandboxRequest()).items)


def test_daemon_sigkill_and_restart_readopts(daemon):
    base = dfx.short_tmpdir()
    d = dfx.start(base, dfx.write_config(base))
    try:
        with d.client() as c:
            pod_id = run(c, pod_config("survivor"))
            pid = vm_info(c, pod_id)["pid"]
        dfx.stop(d, signal.SIGKILL)
        assert pid in qemu_pids(), "the VM must outlive the daemon"
        d = dfx.start(base, d.config)
        with d.client() as c:
            st = status(c, pod_id)
            assert st.status.state == pb.SANDBOX_READY  # re-adopted: QMP and agent reconnected
            assert vm_info(c, pod_id)["pid"] == pid
            assert "re-adopted" in d.log_text()
            # and the adopted VM is still fully manageable
            c.call(c.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
            assert pid not in qemu_pids()
            c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    finally:
        with d.client() as c:
            remove_all(c)
        dfx.stop(d)
        dfx.cleanup_host(base)


def test_graceful_daemon_stop_keeps_pods(daemon):
    base = dfx.short_tmpdir()
    d = dfx.start(base, dfx.write_config(base))
    try:
        with d.client() as c:
            pod_id = run(c, pod_config("keeper"))
            pid = vm_info(c, pod_id)["pid"]
        assert dfx.stop(d) == 0
        assert pid in qemu_pids()
        d = dfx.start(base, d.config)
        with d.client() as c:
            assert status(c, pod_id).status.state == pb.SANDBOX_READY
    finally:
        with d.client() as c:
            remove_all(c)
        dfx.stop(d)
        dfx.cleanup_host(base)


def test_daemon_killed_between_cni_add_and_vm_start_is_cleaned_up(daemon):
    """SIGKILL while RunPodSandbox holds a netns and an IP but no VM: the restart undoes it all."""
    import threading

    base = dfx.short_tmpdir()
    d = dfx.start(base, dfx.write_config(base), env={"FRAKPY_FAILPOINT": "after-cni-add"})
    errors: list[Exception] = []

    def call() -> None:
        try:
            with d.client(timeout=60) as c:
                run(c, pod_config("halfway"))
        except Exception as exc:  # the daemon dies under it
            errors.append(exc)

    t = threading.Thread(target=call)
    t.start()
    try:
        deadline = time.monotonic() + 30
        while "failpoint after-cni-add" not in d.log_text():
            assert time.monotonic() < deadline, d.log_text()
            time.sleep(0.05)
        netns = list((base / "netns").glob("frakpy-*"))
        leases = [p for p in (base / "ipam").rglob("*") if p.is_file() and p.name[0].isdigit()]
        assert netns and leases, "CNI ADD should have created a netns and an IP lease"
        dfx.stop(d, signal.SIGKILL)
        t.join(30)
        assert errors
        d = dfx.start(base, d.config)
        assert "was being created when frakpyd stopped" in d.log_text()
        assert not list((base / "netns").glob("frakpy-*"))
        assert not [p for p in (base / "ipam").rglob("*") if p.is_file() and p.name[0].isdigit()]
        with d.client() as c:
            assert not c.call(c.runtime.ListPodSandbox, pb.ListPodSandboxRequest()).items
            pod_id = run(c, pod_config("halfway"))  # the name is free again and a retry works
            c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    finally:
        dfx.stop(d)
        dfx.cleanup_host(base)


def test_broken_cni_config_fails_runpodsandbox_cleanly():
    """A plugin that fails: NetworkReady still says why when the config is unusable, RunPodSandbox
    carries the plugin's own message, and nothing (netns, VM, run dir, record) is left."""
    base = dfx.short_tmpdir()
    cfg = dfx.write_config(base, cni=False)
    (base / "cni").mkdir(exist_ok=True)
    (base / "cni" / "10-broken.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "broken",
        "plugins": [{"type": "bridge", "bridge": dfx.bridge_name(base),
                     "ipam": {"type": "host-local", "ranges": [[{"subnet": "not-a-subnet"}]]}}],
    }))
    before = qemu_pids()
    d = dfx.start(base, cfg)
    try:
        with d.client() as c:
            with pytest.raises(CRIError) as exc:
                run(c, pod_config("badnet"))
            assert "not-a-subnet" in str(exc.value) or "invalid CIDR" in str(exc.value), str(exc.value)
            assert not c.call(c.runtime.ListPodSandbox, pb.ListPodSandboxRequest()).items
        assert not list((base / "netns").glob("frakpy-*"))
        assert not list((base / "run" / "sandboxes").glob("*"))
        assert qemu_pids() <= before
        (base / "cni" / "10-broken.conflist").write_text("{not json")
        with d.client() as c:
            conds = {x.type: x for x in c.call(c.runtime.Status, pb.StatusRequest()).status.conditions}
        assert conds["NetworkReady"].status is False
        assert conds["NetworkReady"].reason == "NetworkPluginNotReady"
    finally:
        dfx.stop(d)
        dfx.cleanup_host(base)
