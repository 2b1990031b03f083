"""Inside the VM after RemoveContainer (seen from a privileged observer), and container stats via CRI."""

from __future__ import annotations

import time

import pytest

from frakpy.cri.proto import api_pb2 as pb

from . import test_containers as tc
from .test_containers import container_config, create, pod_config, wait_state

env = tc.env  # registry, pushed busybox, daemon, pulled image
pytestmark = tc.pytestmark


def in_vm(c, observer: str, script: str) -> str:
    """Run ``script`` in the VM's own mount namespace (PID 1 is the guest agent)."""
    r = c.call(c.runtime.ExecSync, pb.ExecSyncRequest(
        container_id=observer, cmd=["nsenter", "-t", "1", "-m", "--", "sh", "-c", script], timeout=30))
    assert r.exit_code == 0, r.stderr.decode()
    return r.stdout.decode()


def test_remove_leaves_nothing_in_the_guest(env, tmp_path):
    d, image, _work = env
    with d.client() as c:
        sb = pod_config("cleanup", tmp_path)
        sb.linux.security_context.privileged = True  # for the observer
        pod_id = c.call(c.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=sb)).pod_sandbox_id
        observer_cfg = container_config("observer", image, ["sleep", "3600"])
        observer_cfg.linux.security_context.privileged = True
        observer_cfg.linux.security_context.namespace_options.pid = pb.NODE
        observer = create(c, pod_id, sb, observer_cfg)
        c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=observer))

        cid = create(c, pod_id, sb, container_config("victim", image, ["sh", "-c", "echo bye; sleep 3600"]))
        c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
        assert cid in in_vm(c, observer, "ls /run/frakpy/containers; cat /proc/mounts; ls /run/crun")

        c.call(c.runtime.StopContainer, pb.StopContainerRequest(container_id=cid, timeout=0))
        assert wait_state(c, cid, pb.CONTAINER_EXITED).state == pb.CONTAINER_EXITED
        c.call(c.runtime.RemoveContainer, pb.RemoveContainerRequest(container_id=cid))
        after = in_vm(c, observer, "ls /run/frakpy/containers; cat /proc/mounts; ls /run/crun; "
                                   "ls /sys/fs/cgroup/frakpy/*/ 2>/dev/null || true")
        assert cid not in after, after
        c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])


def test_container_stats(env, tmp_path):
    d, image, _work = env
    with d.client() as c:
        sb = pod_config("stats", tmp_path)
        pod_id = c.call(c.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=sb)).pod_sandbox_id
        cid = create(c, pod_id, sb, container_config("busy", image, ["sh", "-c", "while :; do :; done"]))
        c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
        time.sleep(2)
        st = c.call(c.runtime.ContainerStats, pb.ContainerStatsRequest(container_id=cid)).stats
        assert st.attributes.id == cid
        assert st.cpu.usage_core_nano_seconds.value > 0
        assert st.memory.working_set_bytes.value > 0
        time.sleep(1)
        again = c.call(c.runtime.ContainerStats, pb.ContainerStatsRequest(container_id=cid)).stats
        # a busy loop on the VM's one vCPU: close to a whole core (1e9 nano cores) under TCG
        assert again.cpu.HasField("usage_nano_cores") and again.cpu.usage_nano_cores.value > 1e8
        listed = c.call(c.runtime.ListContainerStats, pb.ListContainerStatsRequest(
            filter=pb.ContainerStatsFilter(pod_sandbox_id=pod_id))).stats
        assert [s.attributes.id for s in listed] == [cid]
        c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
