"""The `fake` fixture: a real in-process gRPC server on a temp unix socket with fake CRI services."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from frakpy.cli.main import main
from frakpy.cri.proto import api_pb2 as pb
from frakpy.cri.proto import api_pb2_grpc as pbg
from frakpy.cri.proto import frakpy_pb2 as fpb
from frakpy.cri.proto import frakpy_pb2_grpc as fpbg

NOW_NS = 1_700_000_000 * 10**9

POD_WEB = "aaaa1111" + "0" * 56
POD_DB = "aaaa2222" + "0" * 56
POD_JOB = "bbbb3333" + "0" * 56
CTR_APP = "cccc1111" + "1" * 56
CTR_OLD = "cccc2222" + "1" * 56
CTR_JOB = "dddd4444" + "1" * 56
IMG_BUSYBOX = "sha256:" + "e" * 64
IMG_NGINX = "sha256:" + "f" * 64


def _pod(pid: str, name: str, ns: str, state: int, created: int, labels: dict[str, str]) -> pb.PodSandbox:
    return pb.PodSandbox(
        id=pid,
        metadata=pb.PodSandboxMetadata(name=name, namespace=ns, uid=f"uid-{name}", attempt=1),
        state=state,
        created_at=created,
        labels=labels,
        runtime_handler="frakpy" if name != "db" else "",
    )


def _ctr(cid: str, pod: str, name: str, state: int, created: int) -> pb.Container:
    return pb.Container(
        id=cid,
        pod_sandbox_id=pod,
        metadata=pb.ContainerMetadata(name=name, attempt=0),
        image=pb.ImageSpec(image="docker.io/library/busybox:latest"),
        image_ref=IMG_BUSYBOX,
        state=state,
        created_at=created,
        labels={"app": name},
    )


@dataclass
class FakeState:
    log_path: str = ""
    calls: list[tuple[str, Any]] = field(default_factory=list)
    pods: list[pb.PodSandbox] = field(
        default_factory=lambda: [
            _pod(POD_WEB, "web", "default", pb.SANDBOX_READY, NOW_NS - 10**9 * 3600, {"tier": "front"}),
            _pod(POD_DB, "db", "kube-system", pb.SANDBOX_NOTREADY, NOW_NS - 10**9 * 60, {"tier": "back"}),
            _pod(POD_JOB, "job", "default", pb.SANDBOX_READY, NOW_NS, {}),
        ]
    )
    containers: list[pb.Container] = field(
        default_factory=lambda: [
            _ctr(CTR_APP, POD_WEB, "app", pb.CONTAINER_RUNNING, NOW_NS),
            _ctr(CTR_OLD, POD_WEB, "old", pb.CONTAINER_EXITED, NOW_NS - 10**9),
            _ctr(CTR_JOB, POD_JOB, "job", pb.CONTAINER_RUNNING, NOW_NS - 2 * 10**9),
        ]
    )
    images: list[pb.Image] = field(
        default_factory=lambda: [
            pb.Image(id=IMG_BUSYBOX, repo_tags=["docker.io/library/busybox:latest"], size=4_261_550),
            pb.Image(id=IMG_NGINX, repo_digests=["docker.io/library/nginx@sha256:abc"], size=70_000_000),
        ]
    )

    progress: list[fpb.PullProgress] | None = None
    """Snapshots WatchPull streams; None: the service answers UNIMPLEMENTED (like containerd)."""
    pull_started: threading.Event = field(default_factory=threading.Event)

    def record(self, name: str, req: Any) -> None:
        self.calls.append((name, req))

    def last(self, name: str) -> Any:
        found = [r for n, r in self.calls if n == name]
        assert found, f"{name} was not called; calls: {[n for n, _ in self.calls]}"
        return found[-1]

    def names(self) -> list[str]:
        return [n for n, _ in self.calls]


def _labels_match(labels: Any, selector: Any) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


class FakeRuntime(pbg.RuntimeServiceServicer):
    def __init__(self, st: FakeState) -> None:
        self.st = st

    def Version(self, req, ctx):  # noqa: N802 - gRPC method names
        self.st.record("Version", req)
        return pb.VersionResponse(
            version="0.1.0", runtime_name="frakpy", runtime_version="0.0.1", runtime_api_version="v1"
        )

    def Status(self, req, ctx):  # noqa: N802
        self.st.record("Status", req)
        status = pb.RuntimeStatus(conditions=[pb.RuntimeCondition(type="RuntimeReady", status=True)])
        return pb.StatusResponse(status=status, info={"config": json.dumps({"vcpus": 1}), "raw": "not json"})

    def ListPodSandbox(self, req, ctx):  # noqa: N802
        self.st.record("ListPodSandbox", req)
        f = req.filter
        items = [
            p
            for p in self.st.pods
            if (not f.id or p.id == f.id)
            and (not f.HasField("state") or p.state == f.state.state)
            and _labels_match(p.labels, f.label_selector)
        ]
        return pb.ListPodSandboxResponse(items=items)

    def ListContainers(self, req, ctx):  # noqa: N802
        self.st.record("ListContainers", req)
        f = req.filter
        items = [
            c
            for c in self.st.containers
            if (not f.id or c.id == f.id)
            and (not f.pod_sandbox_id or c.pod_sandbox_id == f.pod_sandbox_id)
            and (not f.HasField("state") or c.state == f.state.state)
            and _labels_match(c.labels, f.label_selector)
        ]
        return pb.ListContainersResponse(containers=items)

    def _find(self, cid: str, ctx: Any) -> pb.Container:
        for c in self.st.containers:
            if c.id == cid:
                return c
        ctx.abort(grpc.StatusCode.NOT_FOUND, f"container {cid} not found")
        raise AssertionError

    def RunPodSandbox(self, req, ctx):  # noqa: N802
        self.st.record("RunPodSandbox", req)
        return pb.RunPodSandboxResponse(pod_sandbox_id="newpod")

    def StopPodSandbox(self, req, ctx):  # noqa: N802
        self.st.record("StopPodSandbox", req)
        return pb.StopPodSandboxResponse()

    def RemovePodSandbox(self, req, ctx):  # noqa: N802
        self.st.record("RemovePodSandbox", req)
        return pb.RemovePodSandboxResponse()

    def PodSandboxStatus(self, req, ctx):  # noqa: N802
        self.st.record("PodSandboxStatus", req)
        status = pb.PodSandboxStatus(id=req.pod_sandbox_id, state=pb.SANDBOX_READY)
        return pb.PodSandboxStatusResponse(status=status, info={"vm": '{"pid": 42}'})

    def CreateContainer(self, req, ctx):  # noqa: N802
        self.st.record("CreateContainer", req)
        return pb.CreateContainerResponse(container_id="newctr")

    def StartContainer(self, req, ctx):  # noqa: N802
        self.st.record("StartContainer", req)
        self._find(req.container_id, ctx)
        return pb.StartContainerResponse()

    def StopContainer(self, req, ctx):  # noqa: N802
        self.st.record("StopContainer", req)
        if req.container_id == CTR_JOB:
            ctx.abort(grpc.StatusCode.FAILED_PRECONDITION, "agent of pod job is not answering")
        return pb.StopContainerResponse()

    def RemoveContainer(self, req, ctx):  # noqa: N802
        self.st.record("RemoveContainer", req)
        return pb.RemoveContainerResponse()

    def ContainerStatus(self, req, ctx):  # noqa: N802
        self.st.record("ContainerStatus", req)
        c = self._find(req.container_id, ctx)
        status = pb.ContainerStatus(id=c.id, metadata=c.metadata, state=c.state, log_path=self.st.log_path)
        return pb.ContainerStatusResponse(status=status)

    def ExecSync(self, req, ctx):  # noqa: N802
        self.st.record("ExecSync", req)
        return pb.ExecSyncResponse(
            stdout=b"out: " + " ".join(req.cmd).encode() + b"\n", stderr=b"warn\n", exit_code=3
        )


class FakeImages(pbg.ImageServiceServicer):
    def __init__(self, st: FakeState) -> None:
        self.st = st

    def ListImages(self, req, ctx):  # noqa: N802
        self.st.record("ListImages", req)
        return pb.ListImagesResponse(images=self.st.images)

    def ImageStatus(self, req, ctx):  # noqa: N802
        self.st.record("ImageStatus", req)
        for img in self.st.images:
            if req.image.image in (img.id, *img.repo_tags):
                info = {"info": '{"layers": 1}'} if req.verbose else {}
                return pb.ImageStatusResponse(image=img, info=info)
        return pb.ImageStatusResponse()

    def PullImage(self, req, ctx):  # noqa: N802
        self.st.record("PullImage", req)
        self.st.pull_started.set()
        return pb.PullImageResponse(image_ref=IMG_BUSYBOX)

    def RemoveImage(self, req, ctx):  # noqa: N802
        self.st.record("RemoveImage", req)
        return pb.RemoveImageResponse()

    # ImageFsInfo is left to the generated base class: it answers UNIMPLEMENTED.


class FakeProgress(fpbg.ProgressServicer):
    def __init__(self, st: FakeState) -> None:
        self.st = st

    def WatchPull(self, req, ctx):  # noqa: N802
        self.st.record("WatchPull", req)
        if self.st.progress is None:
            ctx.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        yield fpb.PullProgress(image="docker.io/library/busybox:latest", stage=fpb.PULL_STAGE_WAITING)
        self.st.pull_started.wait(5)  # the pull begins when PullImage arrives
        yield from self.st.progress


@dataclass
class Fake:
    socket: str
    state: FakeState
    tmp: Path

    def run(self, *argv: str) -> int:
        return main(["-r", self.socket, *argv])


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[Fake]:
    tmp = Path(tempfile.mkdtemp(prefix="frakpy-cli-", dir="/tmp"))  # short: unix socket paths are limited
    sock = str(tmp / "cri.sock")
    st = FakeState()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pbg.add_RuntimeServiceServicer_to_server(FakeRuntime(st), server)
    pbg.add_ImageServiceServicer_to_server(FakeImages(st), server)
    fpbg.add_ProgressServicer_to_server(FakeProgress(st), server)
    server.add_insecure_port(f"unix://{sock}")
    server.start()
    monkeypatch.setattr("frakpy.cli.output._now", lambda: NOW_NS / 1e9 + 5)
    monkeypatch.delenv("FRAKPY_SOCKET", raising=False)
    try:
        yield Fake(sock, st, tmp)
    finally:
        server.stop(None).wait()
        shutil.rmtree(tmp, ignore_errors=True)
