"""Live state of running pulls, for watchers (the ``frakpy.v1.Progress/WatchPull`` stream).

The :class:`~frakpy.image.store.ImageStore` feeds every :class:`~frakpy.image.store.PullProgress`
event of a pull into a :class:`PullState` kept by the :class:`ProgressHub` under the normalised
reference. Watchers never get a queue: each remembers the last version it saw and waits on an
event; when it wakes it reads the *current* state (latest-state coalescing), so a slow or stuck
watcher costs one snapshot of memory, not a backlog, and never slows the pull.

Concurrent pulls of one reference share a state. A state leaves the hub when its last pull ends;
watchers already holding it still see the final DONE or FAILED snapshot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from frakpy.image.store import PullProgress

# Pull stages and layer states (the names match frakpy.v1's PullStage / LayerState enums).
RESOLVING, DOWNLOADING, BUILDING, DONE, FAILED = "resolving", "downloading", "building", "done", "failed"
WAITING = "waiting"  # a watcher's first snapshot when no pull is running yet
TERMINAL = frozenset({DONE, FAILED})
L_WAITING, L_DOWNLOADING, L_VERIFYING, L_DOWNLOADED, L_UNPACKING, L_DONE = (
    "waiting",
    "downloading",
    "verifying",
    "downloaded",
    "unpacking",
    "done",
)


@dataclass
class LayerState:
    digest: str
    size: int = 0
    downloaded: int = 0
    state: str = L_WAITING
    cached: bool = False
    resumed_from: int = 0


@dataclass
class Snapshot:
    """A copy of a pull's state at one moment."""

    ref: str
    stage: str
    manifest_digest: str
    image_id: str
    layers: list[LayerState]
    fs_size: int
    error: str
    elapsed_ns: int
    version: int


@dataclass
class PullState:
    ref: str
    stage: str = RESOLVING
    manifest_digest: str = ""
    image_id: str = ""
    layers: dict[str, LayerState] = field(default_factory=dict)
    fs_size: int = 0
    error: str = ""
    started_ns: int = field(default_factory=time.monotonic_ns)
    ended_ns: int = 0
    version: int = 0
    pulls: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def snapshot(self) -> Snapshot:
        end = self.ended_ns or time.monotonic_ns()
        return Snapshot(
            ref=self.ref,
            stage=self.stage,
            manifest_digest=self.manifest_digest,
            image_id=self.image_id,
            layers=[LayerState(**vars(layer)) for layer in self.layers.values()],
            fs_size=self.fs_size,
            error=self.error,
            elapsed_ns=end - self.started_ns,
            version=self.version,
        )

    def _bump(self) -> None:
        self.version += 1
        self._changed.set()

    def _layer(self, digest: str) -> LayerState:
        layer = self.layers.get(digest)
        if layer is None:
            layer = self.layers[digest] = LayerState(digest)
        return layer

    def apply(self, event: PullProgress) -> None:
        """Fold one store event into the state (unknown phases are ignored)."""
        phase = event.phase
        if phase == "resolved":
            self.manifest_digest = event.digest
            self.stage = DOWNLOADING
        elif phase == "config":
            self.image_id = event.digest
        elif phase in ("waiting", "exists"):
            layer = self._layer(event.digest)
            layer.size = event.total
            if phase == "exists":
                layer.cached, layer.downloaded, layer.state = True, event.total, L_DOWNLOADED
        elif phase in ("downloading", "resumed"):
            layer = self._layer(event.digest)
            layer.downloaded = event.current
            layer.size = event.total or layer.size
            if phase == "resumed":
                layer.resumed_from = event.current
            if layer.state in (L_WAITING, L_DOWNLOADING, L_VERIFYING):
                full = layer.size and layer.downloaded >= layer.size
                layer.state = L_VERIFYING if full else L_DOWNLOADING
        elif phase == "downloaded":
            layer = self._layer(event.digest)
            layer.downloaded, layer.state = event.total or layer.size, L_DOWNLOADED
        elif phase == "unpacking":
            self.stage = BUILDING
            self.image_id = self.image_id or event.digest
        elif phase == "layer-unpacking":
            self.stage = BUILDING
            self._layer(event.digest).state = L_UNPACKING
        elif phase == "layer-unpacked":
            self._layer(event.digest).state = L_DONE
        elif phase == "ready":
            self.stage, self.image_id, self.fs_size = DONE, event.digest, event.total
            for layer in self.layers.values():
                layer.state = L_DONE
            self.ended_ns = time.monotonic_ns()
        else:
            return
        self._bump()

    def fail(self, error: BaseException) -> None:
        self.stage, self.error = FAILED, str(error) or type(error).__name__
        self.ended_ns = time.monotonic_ns()
        self._bump()


class ProgressHub:
    """Pull states by normalised reference, and waiting watchers."""

    def __init__(self) -> None:
        self._states: dict[str, PullState] = {}
        self._waiting: dict[str, set[asyncio.Future[PullState]]] = {}

    def active(self, ref: str) -> PullState | None:
        return self._states.get(ref)

    def begin(self, ref: str) -> PullState:
        """A pull of ``ref`` starts: its (possibly shared) state."""
        state = self._states.get(ref)
        if state is None or state.stage in TERMINAL:
            state = self._states[ref] = PullState(ref)
        state.pulls += 1
        for waiter in self._waiting.pop(ref, ()):
            if not waiter.done():
                waiter.set_result(state)
        return state

    def end(self, state: PullState, error: BaseException | None = None) -> None:
        """One pull of ``state`` ended; the last one to end decides DONE or FAILED."""
        state.pulls -= 1
        if error is not None and state.stage not in TERMINAL:
            state.fail(error)
        if state.pulls <= 0:
            if self._states.get(state.ref) is state:
                del self._states[state.ref]
            if state.stage not in TERMINAL:  # cancelled without an error
                state.fail(error or asyncio.CancelledError("pull cancelled"))

    async def watch(self, ref: str, wait_s: float = 30.0, min_interval_s: float = 0.1) -> AsyncIterator[Snapshot]:
        """Snapshots of the next (or current) pull of ``ref`` until it ends.

        When no pull is running, first yields a WAITING snapshot once the watcher is registered
        (a pull that begins after it will be seen), then waits up to ``wait_s`` for one; nothing
        more is yielded if none begins. Between two snapshots at least ``min_interval_s`` passes
        (except for the final one).
        """
        state = self._states.get(ref)
        if state is None:
            started: asyncio.Future[PullState] = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(ref, set()).add(started)
            try:
                yield Snapshot(ref, WAITING, "", "", [], 0, "", 0, -1)
                state = await asyncio.wait_for(asyncio.shield(started), wait_s)
            except TimeoutError:
                return
            finally:
                waiters = self._waiting.get(ref)
                if waiters is not None:
                    waiters.discard(started)
                    if not waiters:
                        del self._waiting[ref]
        seen = -1
        while True:
            state._changed.clear()
            if state.version != seen:
                snap = state.snapshot()
                seen = snap.version
                yield snap
                if snap.stage in TERMINAL:
                    return
                if min_interval_s > 0 and state.stage not in TERMINAL:
                    await asyncio.sleep(min_interval_s)
                continue
            await state._changed.wait()
