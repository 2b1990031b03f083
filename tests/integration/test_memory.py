"""Free page reporting: memory a container frees inside a cold-booted pod goes back to the host; QEMU runs
with the no-op libcapstone of the guest build."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from frakpy.cri.proto import api_pb2 as pb

from . import daemon_fixture as dfx
from .conftest import vm_requirements
from .registry_fixtures import requirements_missing
from .test_containers import container_config, create, pod_config, wait_state

_missing = vm_requirements() or requirements_missing()
pytestmark = pytest.mark.skipif(_missing is not None, reason=_missing or "")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no Rss in smaps_rollup")


def test_memory_freed_in_the_guest_returns_to_the_host(tmp_path: Path) -> None:
    with dfx.daemon_with_image(tmp_path, vm_mode="cold") as (d, image, _base), d.client(timeout=120) as c:
        sb_cfg = pod_config("fpr", tmp_path / "logs")
        pod_id = c.call(c.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=sb_cfg)).pod_sandbox_id
        st = c.call(c.runtime.PodSandboxStatus, pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True))
        vm = json.loads(st.info["info"])["vm"]
        argv = Path(vm["run_dir"], "qemu.argv").read_text()
        assert "free-page-reporting=on" in argv
        qemu = vm["pid"]
        manifest = json.loads(dfx.GUEST_MANIFEST.read_text())
        if manifest.get("qemu_lib_dir"):  # QEMU loaded the no-op disassembler, not the real one
            maps = Path(f"/proc/{qemu}/maps").read_text()
            assert f"{manifest['qemu_lib_dir']}/libcapstone.so.4" in maps
            assert "/usr/lib/x86_64-linux-gnu/libcapstone" not in maps
        before = rss_mib(qemu)
        # dd's 128 MiB buffer is written by the kernel (read from /dev/zero), then freed at exit
        cfg = container_config("hog", image, ["dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"])
        cid = create(c, pod_id, sb_cfg, cfg)
        c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
        assert wait_state(c, cid, pb.CONTAINER_EXITED).exit_code == 0
        peak = rss_mib(qemu)
        assert peak > before + 100, (before, peak)  # the guest really touched the buffer
        deadline = time.monotonic() + 90  # the guest reports free pages in rounds, 2 s apart
        while rss_mib(qemu) > before + 40 and time.monotonic() < deadline:
            time.sleep(1)
        after = rss_mib(qemu)
        assert after < before + 40, f"QEMU RSS {before:.0f} -> peak {peak:.0f} -> {after:.0f} MiB"
        print(f"QEMU RSS: {before:.0f} MiB idle, {peak:.0f} MiB after the container, {after:.0f} MiB later")
