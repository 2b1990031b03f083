"""``frakpy pull``: PullImage with per-layer progress from frakpy.v1.Progress/WatchPull.

CRI's PullImage answers only at the end, so the CLI first opens WatchPull (frakpyd's own service
on the same socket) in a thread, waits for its first message (WAITING: the watch is registered,
so the pull cannot slip past it), then calls PullImage, and after it returns lets the stream end
with its final snapshot. Snapshots are drawn as one rich progress
bar per layer on a terminal, or as one plain line per state change otherwise. A runtime without
the service (containerd, CRI-O, an older frakpyd) answers UNIMPLEMENTED and the pull goes on
without bars. The summary line comes from PullImage and ImageStatus either way.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

import grpc

from frakpy.cli import output
from frakpy.cri.client import CRIClient
from frakpy.cri.proto import api_pb2 as pb
from frakpy.cri.proto import frakpy_pb2 as fpb
from frakpy.cri.proto import frakpy_pb2_grpc as fpbg

STAGE_TEXT = {
    fpb.PULL_STAGE_RESOLVING: "resolving",
    fpb.PULL_STAGE_DOWNLOADING: "downloading",
    fpb.PULL_STAGE_BUILDING: "building image filesystem",
    fpb.PULL_STAGE_DONE: "done",
    fpb.PULL_STAGE_FAILED: "failed",
    fpb.PULL_STAGE_WAITING: "waiting for the pull to begin",
}
LAYER_TEXT = {
    fpb.LAYER_STATE_WAITING: "waiting",
    fpb.LAYER_STATE_DOWNLOADING: "downloading",
    fpb.LAYER_STATE_VERIFYING: "verifying",
    fpb.LAYER_STATE_DOWNLOADED: "downloaded",
    fpb.LAYER_STATE_UNPACKING: "unpacking",
    fpb.LAYER_STATE_DONE: "done",
}
READY_WAIT_S = 5.0  # how long PullImage waits for WatchPull to be registered
FINAL_GRACE_S = 5.0  # after PullImage returns, how long to wait for the watcher's final snapshot
ERROR_GRACE_S = 1.0  # the same after PullImage failed


def short_digest(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


def layer_text(layer: fpb.LayerProgress) -> str:
    if layer.cached:
        return "already present" if layer.state != fpb.LAYER_STATE_DONE else "done (already present)"
    return LAYER_TEXT.get(layer.state, "unknown")


class PlainRenderer:
    """One line per stage or layer state change (for logs and pipes)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.stage: int | None = None
        self.layers: dict[str, str] = {}

    def __enter__(self) -> PlainRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, snap: fpb.PullProgress) -> None:
        if snap.stage == fpb.PULL_STAGE_WAITING:
            return
        lines = []
        if snap.stage != self.stage and snap.stage != fpb.PULL_STAGE_DONE:
            self.stage = snap.stage
            text = STAGE_TEXT.get(snap.stage, "unknown")
            if snap.stage == fpb.PULL_STAGE_FAILED:
                text += f": {snap.error}"
            lines.append(f"{snap.image}: {text}")
        for layer in snap.layers:
            text = layer_text(layer)
            if self.layers.get(layer.digest) == text:
                continue
            self.layers[layer.digest] = text
            detail = f"{output.human_size(layer.size)}"
            if layer.resumed_from and not layer.cached:
                detail += f", resumed at {output.human_size(layer.resumed_from)}"
            lines.append(f"{short_digest(layer.digest)}: {text} ({detail})")
        for line in lines:
            self.out.write(line + "\n")
        self.out.flush()


class RichRenderer:
    """A rich progress bar per layer plus a stage line."""

    def __init__(self, out: TextIO, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TransferSpeedColumn,
        )

        self.console = console or Console(file=out)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TextColumn("{task.fields[state]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self.stage_task: Any = None  # added with the first snapshot: nothing is drawn without the service
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> RichRenderer:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, snap: fpb.PullProgress) -> None:
        if snap.stage == fpb.PULL_STAGE_WAITING:
            return
        stage = STAGE_TEXT.get(snap.stage, "")
        if snap.stage == fpb.PULL_STAGE_FAILED:
            stage += f": {snap.error}"
        total = sum(layer.size for layer in snap.layers) or None
        done = sum(layer.downloaded for layer in snap.layers)
        if self.stage_task is None:
            self.stage_task = self.progress.add_task("total", total=total, state=stage)
        self.progress.update(self.stage_task, total=total, completed=done, state=stage)
        for layer in snap.layers:
            task = self.tasks.get(layer.digest)
            if task is None:
                task = self.tasks[layer.digest] = self.progress.add_task(
                    short_digest(layer.digest), total=layer.size or None, state=""
                )
            self.progress.update(task, total=layer.size or None, completed=layer.downloaded, state=layer_text(layer))
        if snap.stage in (fpb.PULL_STAGE_DONE, fpb.PULL_STAGE_FAILED):
            self.progress.refresh()


class Watcher(threading.Thread):
    """Consumes WatchPull in a thread and hands each snapshot to a renderer."""

    def __init__(self, cri: CRIClient, image: str, renderer: Any, wait_s: float) -> None:
        super().__init__(name="frakpy-pull-watch", daemon=True)
        self.stub = fpbg.ProgressStub(cri.channel)  # type: ignore[no-untyped-call]
        self.request = fpb.WatchPullRequest(image=image, wait_seconds=wait_s)
        self.renderer = renderer
        self.call: Any = None
        self.last: fpb.PullProgress | None = None
        self.unsupported = False
        self.error: str = ""
        self.finished = threading.Event()
        self.ready = threading.Event()  # first message received (or the stream ended)
        self._lock = threading.Lock()
        self._cancelled = False

    def run(self) -> None:
        try:
            with self._lock:
                if self._cancelled:
                    return
                self.call = self.stub.WatchPull(self.request)
            for snap in self.call:
                self.ready.set()
                if snap.stage != fpb.PULL_STAGE_WAITING:
                    self.last = snap
                self.renderer.update(snap)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code == grpc.StatusCode.UNIMPLEMENTED:
                self.unsupported = True
            elif code != grpc.StatusCode.CANCELLED:
                self.error = f"{code.name if code else 'UNKNOWN'}: {exc.details() if hasattr(exc, 'details') else exc}"
        finally:
            self.finished.set()
            self.ready.set()

    @property
    def final(self) -> bool:
        return self.last is not None and self.last.stage in (fpb.PULL_STAGE_DONE, fpb.PULL_STAGE_FAILED)

    def stop(self, grace_s: float, *, failed: bool = False) -> None:
        """Wait up to ``grace_s`` for the stream to end on its own, then cancel it.

        After a successful PullImage a registered watch always gets the final snapshot soon; after
        a failed one it is awaited only if the watch saw the pull (it may have failed before
        beginning, e.g. a malformed reference)."""
        if not failed or (self.last is not None and not self.final):
            self.finished.wait(grace_s)
        with self._lock:
            self._cancelled = True
            if self.call is not None and not self.finished.is_set():
                self.call.cancel()
        self.join(5)


def downloaded_bytes(snap: fpb.PullProgress | None) -> int:
    """Bytes fetched by this pull (cached layers and resumed prefixes excluded)."""
    if snap is None:
        return 0
    return sum(max(0, layer.downloaded - layer.resumed_from) for layer in snap.layers if not layer.cached)


def summary(image_ref: str, image: pb.Image | None, elapsed: float, snap: fpb.PullProgress | None) -> str:
    """``Pulled <ref>: id <12>, 4.26MB in 1.2s (3.5 MB/s, 4.2MB downloaded)``."""
    size = output.human_size(image.size) if image is not None and image.size else "size unknown"
    name = image.repo_tags[0] if image is not None and image.repo_tags else image_ref
    line = f"Pulled {name}: id {output.short_id(image_ref)}, {size} in {elapsed:.1f}s"
    if snap is not None:
        fetched = downloaded_bytes(snap)
        rate = fetched / elapsed / 1e6 if elapsed > 0 else 0.0
        line += f" ({rate:.1f} MB/s, {output.human_size(fetched)} downloaded"
        cached = sum(1 for layer in snap.layers if layer.cached)
        if cached:
            line += f", {cached} of {len(snap.layers)} layers already present"
        line += ")"
    return line


def run_pull(cri: CRIClient, req: pb.PullImageRequest, timeout: float, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    tty = out.isatty()
    renderer: Any = RichRenderer(out) if tty else PlainRenderer(out)
    watcher = Watcher(cri, req.image.image, renderer, wait_s=min(timeout, 600.0))
    started = time.monotonic()
    with renderer:
        watcher.start()
        watcher.ready.wait(READY_WAIT_S)
        try:
            resp = cri.call(cri.image.PullImage, req, timeout=timeout)
        except BaseException:
            watcher.stop(ERROR_GRACE_S, failed=True)
            raise
        watcher.stop(FINAL_GRACE_S)
    elapsed = time.monotonic() - started
    try:
        status = cri.call(cri.image.ImageStatus, pb.ImageStatusRequest(image=pb.ImageSpec(image=resp.image_ref)))
        image = status.image if status.image.id else None
    except Exception:  # noqa: BLE001 - the summary is best effort; the pull succeeded
        image = None
    print(f"Image is up to date for {resp.image_ref}", file=out)
    print(summary(resp.image_ref, image, elapsed, watcher.last), file=out)
    if watcher.error:
        print(f"frakpy: (progress stream: {watcher.error})", file=sys.stderr)
    return 0
