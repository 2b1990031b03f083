"""The PCI machine types: a pod on q35 and on pc boots (or restores), hot-adds its image disk on
virtio-scsi-pci and runs a container, like the default microvm."""

from __future__ import annotations

import json

import pytest

from frakpy.cri.proto import api_pb2 as pb

from . import daemon_fixture as dfx
from .conftest import vm_requirements
from .registry_fixtures import requirements_missing

_missing = vm_requirements() or requirements_missing()
pytestmark = pytest.mark.skipif(_missing is not None, reason=_missing or "")

EXTRA = """
[handlers.q35]
machine = "q35"
[handlers.pc]
machine = "pc"
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("machines")
    with dfx.daemon_with_image(work, EXTRA) as (d, image, _base):
        yield d, image


@pytest.mark.parametrize("machine", ["q35", "pc"])
@pytest.mark.parametrize("attempt", [0, 1])  # the second pod of a handler restores its template
def test_pod_and_container_on_pci_machine(env, machine: str, attempt: int) -> None:
    d, image = env
    cfg = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(
        name=f"{machine}-{attempt}", namespace="machines", uid=f"uid-{machine}-{attempt}"), hostname=machine)
    with d.client(timeout=180) as c:
        pod_id = c.call(c.runtime.RunPodSandbox, pb.RunPodSandboxRequest(
            config=cfg, runtime_handler=machine)).pod_sandbox_id
        try:
            st = c.call(c.runtime.PodSandboxStatus, pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True))
            vm = json.loads(st.info["info"])["vm"]
            assert vm["machine"] == machine
            if dfx.VM_MODE == "template":
                assert vm["boot"]["mode"] == "template", vm["boot"]
            ccfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c"), image=pb.ImageSpec(image=image),
                                      command=["sleep", "3600"])
            cid = c.call(c.runtime.CreateContainer, pb.CreateContainerRequest(
                pod_sandbox_id=pod_id, config=ccfg, sandbox_config=cfg)).container_id
            c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
            r = c.call(c.runtime.ExecSync, pb.ExecSyncRequest(container_id=cid, cmd=["echo", machine], timeout=60))
            assert r.exit_code == 0 and r.stdout.decode().strip() == machine
        finally:
            c.call(c.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
            c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
