"""Containers run in real pod VMs: create/start/exit/logs, exec, stop, remove, errors."""

from __future__ import annotations

import re
import time
from pathlib import Path

import grpc
import pytest

from frakpy.cri.client import CRIError
from frakpy.cri.proto import api_pb2 as pb

from . import daemon_fixture as dfx
from .conftest import vm_requirements
from .registry_fixtures import requirements_missing

_missing = vm_requirements() or requirements_missing()
pytestmark = pytest.mark.skipif(_missing is not None, reason=_missing or "")

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z (stdout|stderr) ([PF]) (.*)$")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("containers")
    with dfx.daemon_with_image(work) as (d, image, _base):
        yield d, image, work


def pod_config(name: str, log_dir: Path) -> pb.PodSandboxConfig:
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace="test", uid=f"uid-{name}", attempt=0),
        hostname=name, log_directory=str(log_dir),
    )


def container_config(name: str, image: str, command: list[str], **kw) -> pb.ContainerConfig:
    return pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=image),
                              command=command, log_path=f"{name}/0.log", **kw)


def create(c, pod_id: str, sb_cfg: pb.PodSandboxConfig, cfg: pb.ContainerConfig) -> str:
    return c.call(c.runtime.CreateContainer, pb.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=cfg, sandbox_config=sb_cfg)).container_id


def cstatus(c, cid: str) -> pb.ContainerStatus:
    return c.call(c.runtime.ContainerStatus, pb.ContainerStatusRequest(container_id=cid)).status


def wait_state(c, cid: str, state: int, timeout: float = 60.0) -> pb.ContainerStatus:
    deadline = time.monotonic() + timeout
    while True:
        st = cstatus(c, cid)
        if st.state == state or time.monotonic() > deadline:
            return st
        time.sleep(0.2)


def read_log(path: Path, want: int, timeout: float = 20.0) -> list[tuple[str, str, str]]:
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= want or time.monotonic() > deadline:
            out = []
            for line in lines:
                m = LINE.match(line)
                assert m, f"not a CRI log line: {line!r}"
                out.append(m.groups())
            return out
        time.sleep(0.2)


def test_run_to_completion_logs_and_exit_code(env):
    d, image, work = env
    log_dir = work / "logs-exit"
    sb_cfg = pod_config("exit", log_dir)
    with d.client(timeout=120) as c:
        pod_id = c.call(c.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=sb_cfg)).pod_sandbox_id
        cfg = container_config("app", image, ["sh", "-c", "echo hello; echo err >&2; exit 3"],
                               labels={"role": "job"})
        cid = create(c, pod_id, sb_cfg, cfg)
        st = cstatus(c, cid)
        assert st.state == pb.CONTAINER_CREATED and st.created_at > 0
        assert st.log_path == str(log_dir / "app/0.log")
        c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
        st = wait_state(c, cid, pb.CONTAINER_EXITED)
        assert st.state == pb.CONTAINER_EXITED, st
        assert st.exit_code == 3 and st.reason == "Error"
        assert st.started_at > 0 and st.finished_at >= st.started_at
        assert st.image.image == image and st.image_ref.startswith("sha256:")
        assert st.labels["role"] == "job"
        lines = read_log(log_dir / "app/0.log", 2)
        assert ("stdout", "F", "hello") in lines and ("stderr", "F", "err") in lines

        listed = c.call(c.runtime.ListContainers, pb.ListContainersRequest(filter=pb.ContainerFilter(
            pod_sandbox_id=pod_id, state=pb.ContainerStateValue(state=pb.CONTAINER_EXITED)))).containers
        assert [x.id for x in listed] == [cid]
        none = c.call(c.runtime.ListContainers, pb.ListContainersRequest(filter=pb.ContainerFilter(
            label_selector={"role": "other"}))).containers
        assert cid not in [x.id for x in none]

        c.call(c.runtime.RemoveContainer, pb.RemoveContainerRequest(container_id=cid))
        c.call(c.runtime.RemoveContainer, pb.RemoveContainerRequest(container_id=cid))
        with pytest.raises(CRIError) as exc:
            cstatus(c, cid)
        assert exc.value.code == grpc.StatusCode.NOT_FOUND


def test_exec_stop_remove(env):
    d, image, work = env
    sb_cfg = pod_config("sleeper", work / "logs-sleep")
    with d.client(timeout=120) as c:
        pod_id = c.call(c.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=sb_cfg)).pod_sandbox_id
        cid = create(c, pod_id, sb_cfg, container_config("sleep", image, ["sleep", "3600"]))
        # the same name and attempt in the same pod is refused
        with pytest.raises(CRIError) as exc:
            create(c, pod_id, sb_cfg, container_config("sleep", image, ["sleep", "1"]))
        assert exc.value.code == grpc.StatusCode.ALREADY_EXISTS
        c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
        assert wait_state(c, cid, pb.CONTAINER_RUNNING).state == pb.CONTAINER_RUNNING

        r = c.call(c.runtime.ExecSync, pb.ExecSyncRequest(container_id=cid, cmd=["echo", "hi"], timeout=20))
        assert r.stdout == b"hi\n" and r.exit_code == 0
        r = c.call(c.runtime.ExecSync, pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "echo no >&2; exit 4"],
                                                          timeout=20))
        assert r.stderr == b"no\n" and r.exit_code == 4
        with pytest.raises(CRIError) as exc:
            c.call(c.runtime.ExecSync, pb.ExecSyncRequest(container_id=cid, cmd=["sleep", "30"], timeout=1))
        assert exc.value.code == grpc.StatusCode.DEADLINE_EXCEEDED

        c.call(c.runtime.ReopenContainerLog, pb.ReopenContainerLogRequest(container_id=cid))

        started = time.monotonic()
        c.call(c.runtime.StopContainer, pb.StopContainerRequest(container_id=cid, timeout=5))
        assert time.monotonic() - started < 30
        st = cstatus(c, cid)
        assert st.state == pb.CONTAINER_EXITED and st.exit_code != 0
        c.call(c.runtime.StopContainer, pb.StopContainerRequest(container_id=cid, timeout=5))  # idempotent
        c.call(c.runtime.RemoveContainer, pb.RemoveContainerRequest(container_id=cid))
        c.call(c.runtime.RemoveContainer, pb.RemoveContainerRequest(container_id=cid))
        # the image disk was detached with its last container: a new one attaches it again
        cid2 = create(c, pod_id, sb_cfg, container_config("again", image, ["true"]))
        c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id=cid2))
        st = wait_state(c, cid2, pb.CONTAINER_EXITED)
        assert st.exit_code == 0 and st.reason == "Completed"

        # the pod goes away with its containers
        c.call(c.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        with pytest.raises(CRIError) as exc:
            cstatus(c, cid2)
        assert exc.value.code == grpc.StatusCode.NOT_FOUND


def test_bad_inputs(env):
    d, image, work = env
    sb_cfg = pod_config("bad", work / "logs-bad")
    with d.client(timeout=120) as c:
        with pytest.raises(CRIError) as exc:
            create(c, "0" * 64, sb_cfg, container_config("x", image, ["true"]))
        assert exc.value.code == grpc.StatusCode.NOT_FOUND
        pod_id = c.call(c.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=sb_cfg)).pod_sandbox_id
        missing = image.rsplit(":", 1)[0] + ":missing"
        with pytest.raises(CRIError) as exc:
            create(c, pod_id, sb_cfg, container_config("x", missing, ["true"]))
        assert exc.value.code == grpc.StatusCode.NOT_FOUND and "missing" in exc.value.details
        cfg = container_config("vol", image, ["true"])
        cfg.mounts.add(container_path="/data", host_path="/nonexistent/frakpy-volume")
        with pytest.raises(CRIError) as exc:
            create(c, pod_id, sb_cfg, cfg)
        assert exc.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert exc.value.details == "mount /data: host path /nonexistent/frakpy-volume does not exist"
        with pytest.raises(CRIError) as exc:
            c.call(c.runtime.StartContainer, pb.StartContainerRequest(container_id="f" * 64))
        assert exc.value.code == grpc.StatusCode.NOT_FOUND
        c.call(c.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        with pytest.raises(CRIError) as exc:
            create(c, pod_id, sb_cfg, container_config("late", image, ["true"]))
        assert exc.value.code == grpc.StatusCode.FAILED_PRECONDITION
