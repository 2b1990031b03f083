"""`frakpy images import` loads a project-built image into a running daemon's store; a container runs from it."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from frakpy.cri.proto import api_pb2 as pb
from frakpy.image import testimages

from . import daemon_fixture as dfx
from .conftest import vm_requirements

pytestmark = pytest.mark.skipif(vm_requirements() is not None, reason=vm_requirements() or "")


def test_import_then_run(tmp_path):
    layout = tmp_path / "layout"
    testimages.busybox_layout(layout, dynamic=True)
    base = dfx.short_tmpdir()
    d = dfx.start(base, dfx.write_config(base))
    try:
        out = subprocess.run([sys.executable, "-m", "frakpy", "images", "import", str(layout),
                              "--name", "local/busybox", "--config", str(d.config)],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert "imported sha256:" in out.stdout
        bad = subprocess.run([sys.executable, "-m", "frakpy", "images", "import", str(tmp_path / "nope"),
                              "--config", str(d.config)], capture_output=True, text=True)
        assert bad.returncode == 1 and "nope" in bad.stderr
        with d.client() as c:
            st = c.call(c.image.ImageStatus, pb.ImageStatusRequest(image=pb.ImageSpec(image="local/busybox:latest")))
            assert st.image.id.startswith("sha256:")
            pod = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="imp", namespace="t", uid="imp"),
                                      log_directory=str(tmp_path / "logs"))
            pod_id = c.call(c.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=pod)).pod_sandbox_id
            ctr = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c"),
                                     image=pb.ImageSpec(image="local/busybox:latest"),
                                     command=["sh", "-c", "echo imported-ok"], log_path="c.log")
            cid = c.call(c.runtime.CreateContainer, pb.CreateContainerRequest(
                pod_sandbox_id=pod_id, config=ctr, sandbox_config=pod)).container_id
            c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
            deadline = time.monotonic() + 60
            while c.call(c.runtime.ContainerStatus, pb.ContainerStatusRequest(
                    container_id=cid)).status.state != pb.CONTAINER_EXITED:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert "imported-ok" in (tmp_path / "logs" / "c.log").read_text()
            c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    finally:
        dfx.stop(d)
        dfx.cleanup_host(base)
