"""Pull progress: the hub's coalescing watchers and the frakpy.v1.Progress/WatchPull stream."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

from frakpy.cri import server as cri_server
from frakpy.cri.progress import ProgressServicer
from frakpy.cri.proto import frakpy_pb2 as fpb
from frakpy.cri.proto import frakpy_pb2_grpc as fpbg
from frakpy.errors import Unavailable
from frakpy.image.progress import ProgressHub
from frakpy.image.store import PullProgress

REF = "docker.io/library/busybox:latest"
L1, L2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
IMG = "sha256:" + "9" * 64


def _events(ref: str = REF) -> list[PullProgress]:
    return [
        PullProgress(ref, "resolved", "sha256:" + "m" * 64, 0, 2),
        PullProgress(ref, "config", IMG),
        PullProgress(ref, "exists", L1, 100, 100),
        PullProgress(ref, "waiting", L2, 0, 1000),
        PullProgress(ref, "resumed", L2, 400, 1000),
        PullProgress(ref, "downloading", L2, 700, 1000),
        PullProgress(ref, "downloading", L2, 1000, 1000),
        PullProgress(ref, "downloaded", L2, 1000, 1000),
        PullProgress(ref, "unpacking", IMG),
        PullProgress(ref, "layer-unpacking", L1),
        PullProgress(ref, "layer-unpacked", L1),
        PullProgress(ref, "ready", IMG, 4096, 4096),
    ]


def test_state_folds_events() -> None:
    hub = ProgressHub()
    state = hub.begin(REF)
    stages = []
    for event in _events():
        state.apply(event)
        snap = state.snapshot()
        stages.append((snap.stage, {x.digest[-1]: x.state for x in snap.layers}))
    assert stages[3] == ("downloading", {"1": "downloaded", "2": "waiting"})
    assert stages[5] == ("downloading", {"1": "downloaded", "2": "downloading"})
    assert stages[6][1]["2"] == "verifying"  # every byte is in; digest check pending
    assert stages[9] == ("building", {"1": "unpacking", "2": "downloaded"})
    snap = state.snapshot()
    assert snap.stage == "done" and snap.fs_size == 4096 and snap.image_id == IMG
    l1, l2 = snap.layers
    assert l1.cached and not l2.cached and l2.resumed_from == 400 and l2.downloaded == 1000
    hub.end(state)
    assert hub.active(REF) is None


async def test_watch_waits_for_the_pull_and_coalesces() -> None:
    hub = ProgressHub()
    got = []

    async def watch() -> None:
        async for snap in hub.watch(REF, wait_s=5, min_interval_s=0.05):
            got.append(snap)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.01)  # the watcher is waiting for a pull to begin
    state = hub.begin(REF)
    for n in range(1, 1001):  # a burst of updates: the watcher sees only some of them
        state.apply(PullProgress(REF, "downloading", L2, n, 1000))
    await asyncio.sleep(0.1)
    for event in _events()[-4:]:
        state.apply(event)
    hub.end(state)
    await asyncio.wait_for(watcher, 5)
    assert got[0].stage == "waiting"
    assert 3 <= len(got) <= 11
    assert got[-1].stage == "done"
    versions = [s.version for s in got]
    assert versions == sorted(versions)


async def test_watch_gives_up_without_a_pull_and_sees_failures() -> None:
    hub = ProgressHub()
    assert [s.stage async for s in hub.watch(REF, wait_s=0.05)] == ["waiting"]  # registered, then gave up
    assert hub._waiting == {}
    state = hub.begin(REF)
    again = hub.begin(REF)  # a concurrent pull of the same reference shares the state
    assert again is state
    task = asyncio.create_task(_collect(hub))
    await asyncio.sleep(0.01)
    hub.end(state, Unavailable("registry down"))
    hub.end(state)
    snaps = await asyncio.wait_for(task, 5)
    assert snaps[-1].stage == "failed" and "registry down" in snaps[-1].error


async def _collect(hub: ProgressHub) -> list:
    return [s async for s in hub.watch(REF, wait_s=1, min_interval_s=0)]


@pytest.fixture
async def progress_server():
    hub = ProgressHub()
    tmp = Path(tempfile.mkdtemp(prefix="frakpy-prog-", dir="/tmp"))
    sock = f"unix://{tmp}/s.sock"
    server = cri_server.build([], [], [ProgressServicer(SimpleNamespace(progress=hub), min_interval_s=0)])
    server.add_insecure_port(sock)
    await server.start()
    channel = grpc.aio.insecure_channel(sock)
    try:
        yield hub, fpbg.ProgressStub(channel)
    finally:
        await channel.close()
        await server.stop(None)


async def test_watch_pull_over_grpc(progress_server) -> None:
    hub, stub = progress_server
    call = stub.WatchPull(fpb.WatchPullRequest(image="busybox", wait_seconds=5))  # normalised server-side
    received: list[fpb.PullProgress] = []
    first = asyncio.Event()

    async def read() -> None:
        async for msg in call:
            received.append(msg)
            first.set()

    reader = asyncio.create_task(read())
    await asyncio.wait_for(first.wait(), 5)  # WAITING: the watch is registered before the pull begins
    assert received[0].stage == fpb.PULL_STAGE_WAITING and received[0].image == REF
    state = hub.begin(REF)
    for event in _events():
        state.apply(event)
        await asyncio.sleep(0)
    hub.end(state)
    await asyncio.wait_for(reader, 5)
    last = received[-1]
    assert last.image == REF and last.stage == fpb.PULL_STAGE_DONE and last.fs_size == 4096
    assert [(x.digest, x.state, x.cached) for x in last.layers] == [
        (L1, fpb.LAYER_STATE_DONE, True),
        (L2, fpb.LAYER_STATE_DONE, False),
    ]
    assert last.layers[1].resumed_from == 400 and last.elapsed_ns > 0

    bad = stub.WatchPull(fpb.WatchPullRequest(image="Not A Ref"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in bad:
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
