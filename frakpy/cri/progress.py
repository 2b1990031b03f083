"""frakpy.v1.Progress: live pull progress beside CRI's unary PullImage (same socket)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from frakpy.cri.proto import frakpy_pb2 as fpb
from frakpy.image import reference as refs
from frakpy.image.progress import Snapshot
from frakpy.image.store import ImageStore

DEFAULT_WAIT_S = 30.0
MAX_WAIT_S = 600.0

_STAGES = {
    "resolving": fpb.PULL_STAGE_RESOLVING,
    "downloading": fpb.PULL_STAGE_DOWNLOADING,
    "building": fpb.PULL_STAGE_BUILDING,
    "done": fpb.PULL_STAGE_DONE,
    "failed": fpb.PULL_STAGE_FAILED,
    "waiting": fpb.PULL_STAGE_WAITING,
}
_LAYER_STATES = {
    "waiting": fpb.LAYER_STATE_WAITING,
    "downloading": fpb.LAYER_STATE_DOWNLOADING,
    "verifying": fpb.LAYER_STATE_VERIFYING,
    "downloaded": fpb.LAYER_STATE_DOWNLOADED,
    "unpacking": fpb.LAYER_STATE_UNPACKING,
    "done": fpb.LAYER_STATE_DONE,
}


def to_proto(snap: Snapshot) -> fpb.PullProgress:
    return fpb.PullProgress(
        image=snap.ref,
        stage=_STAGES.get(snap.stage, fpb.PULL_STAGE_UNSPECIFIED),
        manifest_digest=snap.manifest_digest,
        image_id=snap.image_id,
        layers=[
            fpb.LayerProgress(
                digest=layer.digest,
                size=layer.size,
                downloaded=layer.downloaded,
                state=_LAYER_STATES.get(layer.state, fpb.LAYER_STATE_UNSPECIFIED),
                cached=layer.cached,
                resumed_from=layer.resumed_from,
            )
            for layer in snap.layers
        ],
        fs_size=snap.fs_size,
        error=snap.error,
        elapsed_ns=snap.elapsed_ns,
    )


class ProgressServicer:
    def __init__(self, images: ImageStore, min_interval_s: float = 0.1) -> None:
        self.images = images
        self.min_interval_s = min_interval_s

    async def WatchPull(self, request: fpb.WatchPullRequest, context: Any) -> AsyncIterator[fpb.PullProgress]:  # noqa: N802
        ref = str(refs.parse(request.image))
        wait = request.wait_seconds if request.wait_seconds > 0 else DEFAULT_WAIT_S
        async for snap in self.images.progress.watch(ref, min(wait, MAX_WAIT_S), self.min_interval_s):
            yield to_proto(snap)
