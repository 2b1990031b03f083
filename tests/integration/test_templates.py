"""Pods restored from a VM template: clones differ where they must, templates follow what they
were built from, a broken template falls back to a cold boot and is rebuilt, restarts re-adopt.

Each test daemon here keeps its templates in its own directory (the rest of the suite shares one),
so builds, rebuilds and corruption are observed in isolation."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import pytest

from frakpy.cri.proto import api_pb2 as pb

from . import daemon_fixture as dfx
from .conftest import vm_requirements
from .registry_fixtures import requirements_missing

_missing = vm_requirements() or requirements_missing()
pytestmark = pytest.mark.skipif(_missing is not None, reason=_missing or "")

PROBE = ("cat /proc/sys/kernel/random/boot_id; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; "
         "echo; date +%s")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("templates")
    tdir = work / "templates"
    with dfx.daemon_with_image(work, vm_mode="template", templates_dir=tdir) as (d, image, base):
        yield d, image, work, tdir


def pod_config(name: str) -> pb.PodSandboxConfig:
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace="tmpl", uid=f"uid-{name}", attempt=0), hostname=name)


def run_pod(c, name: str, handler: str = "") -> tuple[str, dict]:
    pod_id = c.call(c.runtime.RunPodSandbox, pb.RunPodSandboxRequest(
        config=pod_config(name), runtime_handler=handler)).pod_sandbox_id
    st = c.call(c.runtime.PodSandboxStatus, pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True))
    return pod_id, json.loads(st.info["info"])["vm"]


def remove_pod(c, pod_id: str) -> None:
    c.call(c.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def probe(c, pod_id: str, image: str, name: str) -> tuple[str, str, int]:
    cfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=image),
                             command=["sleep", "3600"])
    cid = c.call(c.runtime.CreateContainer, pb.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=cfg, sandbox_config=pod_config(name))).container_id
    c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
    r = c.call(c.runtime.ExecSync, pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", PROBE], timeout=30))
    assert r.exit_code == 0, r.stderr
    boot_id, rnd, now = r.stdout.decode().split()
    return boot_id, rnd, int(now)


def templates_in(tdir: Path) -> list[str]:
    return sorted(p.parent.name for p in tdir.glob("*/meta.json"))


def test_clones_differ_in_randomness_and_boot_id_and_know_the_time(env):
    d, image, _work, tdir = env
    with d.client(timeout=120) as c:
        a, vm_a = run_pod(c, "clone-a")
        b, vm_b = run_pod(c, "clone-b")
        try:
            assert vm_a["boot"]["mode"] == "template" and vm_b["boot"]["mode"] == "template"
            assert vm_a["boot"]["template"] == vm_b["boot"]["template"]
            assert len(templates_in(tdir)) == 1
            boot_a, rnd_a, now_a = probe(c, a, image, "clone-a")
            boot_b, rnd_b, now_b = probe(c, b, image, "clone-b")
            assert boot_a != boot_b
            assert rnd_a != rnd_b and len(rnd_a) == 64
            for now in (now_a, now_b):  # SetupSandbox set the clock the template had frozen
                assert abs(now - time.time()) < 30
        finally:
            remove_pod(c, a)
            remove_pod(c, b)


def test_restored_pod_has_its_own_network_identity(env):
    d, image, _work, _tdir = env
    with d.client(timeout=120) as c:
        pod_id, vm = run_pod(c, "netid")
        try:
            assert vm["boot"]["mode"] == "template"
            st = c.call(c.runtime.PodSandboxStatus, pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id))
            ip = st.status.network.ip
            assert ip
            cfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="n"), image=pb.ImageSpec(image=image),
                                     command=["sleep", "3600"])
            cid = c.call(c.runtime.CreateContainer, pb.CreateContainerRequest(
                pod_sandbox_id=pod_id, config=cfg, sandbox_config=pod_config("netid"))).container_id
            c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
            r = c.call(c.runtime.ExecSync, pb.ExecSyncRequest(container_id=cid, cmd=["ip", "addr"], timeout=30))
            out = r.stdout.decode()
            assert ip in out
            assert "02:46:52:4b:00:01" not in out  # the template's MAC was replaced by the pod's
        finally:
            remove_pod(c, pod_id)


def test_profile_change_builds_a_new_template(env, tmp_path):
    _d, _image, _work, tdir = env
    base = dfx.short_tmpdir()
    ldir = tmp_path / "templates"
    d = dfx.start(base, dfx.write_config(base, "[handlers.frakpy]\ntemplate = true\n", templates_dir=ldir))
    try:
        with d.client(timeout=120) as c:
            pod_id, vm = run_pod(c, "profile-1")
            first = vm["boot"]["template"]
            remove_pod(c, pod_id)
        dfx.stop(d)
        d = dfx.start(base, dfx.write_config(base, "[handlers.frakpy]\ntemplate = true\nmemory_mib = 320\n",
                                              templates_dir=ldir))
        with d.client(timeout=120) as c:
            pod_id, vm = run_pod(c, "profile-2")
            assert vm["boot"]["mode"] == "template"
            assert vm["boot"]["template"] != first
            assert vm["memory_mib"] == 320
            remove_pod(c, pod_id)
        assert len(templates_in(ldir)) == 2  # the old one goes once it is old enough to be unused
    finally:
        dfx.stop(d)
        dfx.cleanup_host(base)
        shutil.rmtree(base, ignore_errors=True)


def test_guest_image_change_builds_a_new_template(tmp_path):
    base = dfx.short_tmpdir()
    ldir = tmp_path / "templates"
    manifest = json.loads(dfx.GUEST_MANIFEST.read_text())
    rootfs_copy = tmp_path / "rootfs-copy.img"
    shutil.copyfile(manifest["rootfs"], rootfs_copy)
    d = dfx.start(base, dfx.write_config(base, templates_dir=ldir, vm_mode="template"))
    try:
        with d.client(timeout=120) as c:
            pod_id, vm = run_pod(c, "image-1")
            first = vm["boot"]["template"]
            remove_pod(c, pod_id)
        dfx.stop(d)
        extra = f'[handlers.frakpy]\ntemplate = true\nrootfs = "{rootfs_copy}"\n'
        d = dfx.start(base, dfx.write_config(base, extra, templates_dir=ldir))
        with d.client(timeout=120) as c:
            pod_id, vm = run_pod(c, "image-2")
            assert vm["boot"]["mode"] == "template" and vm["boot"]["template"] != first
            assert vm["rootfs"] == str(rootfs_copy)
            remove_pod(c, pod_id)
    finally:
        dfx.stop(d)
        dfx.cleanup_host(base)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("damage", ["state-bytes", "state-unloadable"])
def test_corrupted_template_falls_back_to_cold_boot_and_is_rebuilt(env, damage):
    d, _image, _work, tdir = env
    with d.client(timeout=120) as c:
        pod_id, vm = run_pod(c, f"warm-{damage}")
        remove_pod(c, pod_id)
        (name,) = templates_in(tdir)
        state = tdir / name / "state"
        data = bytearray(state.read_bytes())
        if damage == "state-bytes":  # caught by the checksum before QEMU sees it
            data[len(data) // 2] ^= 0xFF
            state.write_bytes(bytes(data))
        else:  # a state QEMU itself refuses to load, with a matching checksum
            import hashlib

            data[:64] = b"\0" * 64
            state.write_bytes(bytes(data))
            meta = json.loads((tdir / name / "meta.json").read_text())
            meta["state_sha256"] = hashlib.sha256(bytes(data)).hexdigest()
            (tdir / name / "meta.json").write_text(json.dumps(meta))
        pod_id, vm = run_pod(c, f"fallback-{damage}")
        try:
            assert vm["boot"]["mode"] == "cold"
            assert "cold boot instead" in d.log_text()
            assert c.call(c.runtime.PodSandboxStatus, pb.PodSandboxStatusRequest(
                pod_sandbox_id=pod_id)).status.state == pb.SANDBOX_READY
        finally:
            remove_pod(c, pod_id)
        pod_id, vm = run_pod(c, f"rebuilt-{damage}")
        try:
            assert vm["boot"]["mode"] == "template"
        finally:
            remove_pod(c, pod_id)
        info = json.loads(c.call(c.runtime.Status, pb.StatusRequest(verbose=True)).info["templates"])
        assert info["counters"]["fallbacks"] >= 1 and info["counters"]["restores"] >= 1


def test_restored_pod_is_readopted_after_daemon_sigkill(env):
    d, image, work, _tdir = env
    with d.client(timeout=120) as c:
        pod_id, vm = run_pod(c, "adoptee")
        assert vm["boot"]["mode"] == "template"
    dfx.stop(d, signal.SIGKILL)
    d2 = dfx.start(d.socket.parent, d.config)
    env_d = d2
    try:
        with d2.client(timeout=120) as c:
            st = c.call(c.runtime.PodSandboxStatus, pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id))
            assert st.status.state == pb.SANDBOX_READY
            _boot, _rnd, now = probe(c, pod_id, image, "adoptee")
            assert abs(now - time.time()) < 30
            remove_pod(c, pod_id)
    finally:
        # the module fixture stops whoever serves the socket; keep the handle current for it
        d.proc = env_d.proc
        d.log = env_d.log


def test_concurrent_first_pods_share_one_template_build(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    base = dfx.short_tmpdir()
    ldir = tmp_path / "templates"
    d = dfx.start(base, dfx.write_config(base, templates_dir=ldir, vm_mode="template"))
    try:
        with d.client(timeout=180) as c:
            with ThreadPoolExecutor(3) as ex:
                started = list(ex.map(lambda i: run_pod(c, f"together-{i}"), range(3)))
            try:
                warnings = [line for line in d.log_text().splitlines() if "WARNING" in line]
                assert [vm["boot"]["mode"] for _, vm in started] == ["template"] * 3, warnings
                assert len({vm["boot"]["template"] for _, vm in started}) == 1
                assert d.log_text().count("built in") == 1
                assert len(templates_in(ldir)) == 1
            finally:
                for pod_id, _ in started:
                    remove_pod(c, pod_id)
    finally:
        dfx.stop(d)
        dfx.cleanup_host(base)
        shutil.rmtree(base, ignore_errors=True)
