"""More container RPCs in real pod VMs: termination messages, GetContainerEvents,
UpdateContainerResources, PodSandboxStats, and output that survives a daemon SIGKILL."""

from __future__ import annotations

import signal
import threading
import time

import grpc
import pytest

from frakpy.cri.proto import api_pb2 as pb

from . import daemon_fixture as dfx
from .conftest import vm_requirements
from .registry_fixtures import requirements_missing
from .test_containers import container_config, create, cstatus, pod_config, read_log, wait_state

_missing = vm_requirements() or requirements_missing()
pytestmark = pytest.mark.skipif(_missing is not None, reason=_missing or "")


class Env:
    def __init__(self, d: dfx.Daemon, image: str, work) -> None:
        self.d, self.image, self.work = d, image, work


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("containers-more")
    with dfx.daemon_with_image(work) as (d, image, _base):
        yield Env(d, image, work)


@pytest.fixture(scope="module")
def pod(env):
    """One pod shared by the tests of this module (boots are slow under TCG)."""
    sb_cfg = pod_config("more", env.work / "logs")
    with env.d.client(timeout=120) as c:
        pod_id = c.call(c.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=sb_cfg)).pod_sandbox_id
    return pod_id, sb_cfg


def test_termination_message(env, pod):
    pod_id, sb_cfg = pod
    with env.d.client(timeout=120) as c:
        cid = create(c, pod_id, sb_cfg, container_config(
            "term", env.image, ["sh", "-c", "printf 'it went wrong' > /dev/termination-log; exit 1"]))
        c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
        st = wait_state(c, cid, pb.CONTAINER_EXITED)
        assert st.state == pb.CONTAINER_EXITED and st.exit_code == 1
        assert st.message == "it went wrong"

        # a custom path, and a message over the 4096-byte cap
        cfg = container_config("term2", env.image, ["sh", "-c", "head -c 6000 /dev/zero | tr '\\0' x > /tmp/msg"],
                               annotations={"io.kubernetes.container.terminationMessagePath": "/tmp/msg"})
        cid2 = create(c, pod_id, sb_cfg, cfg)
        c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid2))
        st = wait_state(c, cid2, pb.CONTAINER_EXITED)
        assert st.exit_code == 0 and st.message == "x" * 4096

        # FallbackToLogsOnError: an empty termination-log and a failure give the log's tail
        cfg = container_config("term3", env.image, ["sh", "-c", "echo first; echo last words >&2; exit 2"],
                               annotations={"io.kubernetes.container.terminationMessagePolicy":
                                            "FallbackToLogsOnError"})
        cid3 = create(c, pod_id, sb_cfg, cfg)
        c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid3))
        st = wait_state(c, cid3, pb.CONTAINER_EXITED)
        assert st.exit_code == 2 and st.message.endswith("last words\n"), st.message
        for x in (cid, cid2, cid3):
            c.call(c.runtime.RemoveContainer, pb.RemoveContainerRequest(container_id=x))


def test_container_events(env, pod):
    pod_id, sb_cfg = pod
    got: list[pb.ContainerEventResponse] = []
    with env.d.client(timeout=120) as c:
        call = c.runtime.GetContainerEvents(pb.GetEventsRequest(), timeout=300)

        def consume() -> None:
            try:
                for ev in call:
                    got.append(ev)
            except grpc.RpcError:
                pass

        t = threading.Thread(target=consume, daemon=True)
        t.start()
        time.sleep(1.0)  # let the subscription reach the daemon
        cid = create(c, pod_id, sb_cfg, container_config("ev", env.image, ["sleep", "3600"]))
        c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
        c.call(c.runtime.StopContainer, pb.StopContainerRequest(container_id=cid, timeout=2))
        c.call(c.runtime.RemoveContainer, pb.RemoveContainerRequest(container_id=cid))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len([e for e in got if e.container_id == cid]) < 4:
            time.sleep(0.1)
        call.cancel()
        t.join(5)
    mine = [e for e in got if e.container_id == cid]
    assert [e.container_event_type for e in mine] == [
        pb.CONTAINER_CREATED_EVENT, pb.CONTAINER_STARTED_EVENT, pb.CONTAINER_STOPPED_EVENT,
        pb.CONTAINER_DELETED_EVENT]
    assert all(e.pod_sandbox_status.id == pod_id for e in mine)
    assert all(e.created_at > 0 for e in mine)
    assert [e.created_at for e in mine] == sorted(e.created_at for e in mine)
    states = [e.containers_statuses[0].state for e in mine]
    assert states[:3] == [pb.CONTAINER_CREATED, pb.CONTAINER_RUNNING, pb.CONTAINER_EXITED]
    assert all(e.containers_statuses[0].id == cid for e in mine)


def test_update_container_resources(env, pod):
    pod_id, sb_cfg = pod
    with env.d.client(timeout=120) as c:
        cid = create(c, pod_id, sb_cfg, container_config("upd", env.image, ["sleep", "3600"]))
        c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
        assert wait_state(c, cid, pb.CONTAINER_RUNNING).state == pb.CONTAINER_RUNNING

        def cat(path: str) -> str:
            r = c.call(c.runtime.ExecSync, pb.ExecSyncRequest(container_id=cid, cmd=["cat", path], timeout=20))
            assert r.exit_code == 0, r.stderr
            return r.stdout.decode().strip()

        assert cat("/sys/fs/cgroup/memory.max") == "max"
        c.call(c.runtime.UpdateContainerResources, pb.UpdateContainerResourcesRequest(
            container_id=cid, linux=pb.LinuxContainerResources(memory_limit_in_bytes=64 * 1024 * 1024,
                                                                cpu_quota=50000, cpu_period=100000)))
        assert cat("/sys/fs/cgroup/memory.max") == str(64 * 1024 * 1024)
        assert cat("/sys/fs/cgroup/cpu.max") == "50000 100000"
        c.call(c.runtime.StopContainer, pb.StopContainerRequest(container_id=cid, timeout=0))
        c.call(c.runtime.RemoveContainer, pb.RemoveContainerRequest(container_id=cid))


def test_pod_sandbox_stats(env, pod):
    pod_id, sb_cfg = pod
    with env.d.client(timeout=120) as c:
        cid = create(c, pod_id, sb_cfg, container_config("stat", env.image, ["sleep", "3600"]))
        c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
        assert wait_state(c, cid, pb.CONTAINER_RUNNING).state == pb.CONTAINER_RUNNING
        s = c.call(c.runtime.PodSandboxStats, pb.PodSandboxStatsRequest(pod_sandbox_id=pod_id)).stats
        assert s.attributes.id == pod_id and s.attributes.metadata.name == "more"
        assert s.linux.cpu.usage_core_nano_seconds.value > 0
        assert s.linux.memory.working_set_bytes.value > 0
        assert s.linux.memory.available_bytes.value > 0
        assert s.linux.network.default_interface.name
        assert s.linux.network.default_interface.rx_bytes.value >= 0
        assert [x.attributes.id for x in s.linux.containers] == [cid]
        assert s.linux.containers[0].memory.working_set_bytes.value > 0
        listed = c.call(c.runtime.ListPodSandboxStats, pb.ListPodSandboxStatsRequest()).stats
        assert pod_id in [x.attributes.id for x in listed]
        only = c.call(c.runtime.ListPodSandboxStats, pb.ListPodSandboxStatsRequest(
            filter=pb.PodSandboxStatsFilter(id=pod_id[:10]))).stats
        assert [x.attributes.id for x in only] == [pod_id]
        c.call(c.runtime.StopContainer, pb.StopContainerRequest(container_id=cid, timeout=0))
        c.call(c.runtime.RemoveContainer, pb.RemoveContainerRequest(container_id=cid))


def test_daemon_sigkill_keeps_every_line(env, pod):
    pod_id, sb_cfg = pod
    log_path = env.work / "logs" / "count" / "0.log"
    with env.d.client(timeout=120) as c:
        cid = create(c, pod_id, sb_cfg, container_config(
            "count", env.image, ["sh", "-c", "i=0; while true; do i=$((i+1)); echo $i; sleep 0.1; done"]))
        c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
        assert wait_state(c, cid, pb.CONTAINER_RUNNING).state == pb.CONTAINER_RUNNING
        read_log(log_path, 20)
    for _ in range(3):
        dfx.stop(env.d, signal.SIGKILL)
        time.sleep(1.0)  # the container keeps printing while no daemon reads
        env.d = dfx.start(env.d.socket.parent, env.d.config)
        with env.d.client(timeout=120) as c:
            assert cstatus(c, cid).state == pb.CONTAINER_RUNNING
        time.sleep(1.5)
    with env.d.client(timeout=120) as c:
        c.call(c.runtime.StopContainer, pb.StopContainerRequest(container_id=cid, timeout=2))
        st = cstatus(c, cid)
        assert st.state == pb.CONTAINER_EXITED
        time.sleep(1.0)
        lines = read_log(log_path, 1)
        numbers = [int(text) for stream, tag, text in lines]
        assert all(stream == "stdout" and tag == "F" for stream, tag, _ in lines)
        assert numbers == list(range(1, len(numbers) + 1)), _gaps(numbers)
        assert len(numbers) > 40
        c.call(c.runtime.RemoveContainer, pb.RemoveContainerRequest(container_id=cid))


def _gaps(numbers: list[int]) -> str:
    seen: set[int] = set()
    dups = [n for n in numbers if n in seen or seen.add(n)]
    missing = sorted(set(range(1, max(numbers, default=0) + 1)) - set(numbers))
    return f"{len(numbers)} lines, duplicated {dups[:20]}, missing {missing[:20]}"
