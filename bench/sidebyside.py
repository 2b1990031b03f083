"""Run frakpy and containerd side by side for a benchmark: one registry holding the test image,
a frakpyd trusting it, optionally the containerd peer; every pod, daemon and dir removed after."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.peer import Peer
from frakpy.cri.proto import api_pb2 as pb
from frakpy.image import testimages
from frakpy.image.push import push_layout
from frakpy.image.registry import PullConfig, RegistryConfig
from tests.integration import daemon_fixture as dfx
from tests.integration.registry_fixtures import Registry


@dataclass
class SideBySide:
    work: Path
    image: str
    frakpy_endpoint: str
    peer: Peer | None


@contextmanager
def frakpy_and_peer(prefix: str, with_peer: bool = True) -> Iterator[SideBySide]:
    work = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    reg = Registry(work / "registry")
    base = dfx.short_tmpdir()
    d = None
    peer = None
    try:
        testimages.busybox_layout(work / "busybox", tag="bench", dynamic=True)
        image = f"{reg.host}/busybox:bench"
        cfg = PullConfig(registries=[RegistryConfig(name=reg.host, insecure=True)])
        asyncio.run(push_layout(work / "busybox", image, config=cfg))
        # FRAKPY_BENCH_CONFIG: extra frakpyd config for a run, e.g. "[handlers.frakpy]\ntb_size_mib = 16"
        extra = os.environ.get("FRAKPY_BENCH_CONFIG", "").replace("\\n", "\n")
        d = dfx.start(base, dfx.write_config(base, f'[registries."{reg.host}"]\ninsecure = true\n' + extra))
        if with_peer:
            peer = Peer(reg.host).start()
        yield SideBySide(work, image, f"unix://{d.socket}", peer)
    finally:
        if peer is not None:
            peer.close()
        if d is not None:
            try:
                with d.client(timeout=120) as c:
                    for item in c.call(c.runtime.ListPodSandbox, pb.ListPodSandboxRequest()).items:
                        c.call(c.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=item.id))
                        c.call(c.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=item.id))
            except Exception as exc:  # noqa: BLE001 - clean-up reports and goes on
                print(f"frakpy clean-up: {exc}", file=sys.stderr)
            dfx.stop(d)
        dfx.cleanup_host(base)
        reg.close()
        shutil.rmtree(work, ignore_errors=True)


def report(result: dict[str, Any], json_path: str | None, table: Callable[[dict[str, Any]], str]) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    if json_path:
        Path(json_path).write_text(text)
    print()
    print(table(result))


BenchRuntime = Callable[..., dict[str, Any]]


def run_side_by_side(prefix: str, args: Any, bench_runtime: BenchRuntime, result: dict[str, Any],
                     frakpy_extra: dict[str, Any] | None = None) -> None:
    """Run ``bench_runtime`` against frakpyd, then (unless ``args.no_peer``) containerd, in one
    environment; fills ``result["runtimes"]`` and the load averages around the runs."""
    result.setdefault("runtimes", {})
    result["load_avg_start"] = os.getloadavg()
    with frakpy_and_peer(prefix, not args.no_peer) as sb:
        print("frakpy ...", file=sys.stderr, flush=True)
        fk = bench_runtime("frakpy", sb.frakpy_endpoint, sb.image, sb.work / "logs-frakpy", args)
        fk.update(frakpy_extra or {})
        result["runtimes"]["frakpy"] = fk
        if sb.peer is not None:
            print("containerd ...", file=sys.stderr, flush=True)
            result["runtimes"]["containerd"] = bench_runtime("containerd", sb.peer.endpoint, sb.image,
                                                             sb.work / "logs-containerd", args,
                                                             on_pod=sb.peer.track_pod)
        result["load_avg_end"] = os.getloadavg()


def ratio_table(result: dict[str, Any], rows: list[tuple[str, Callable[[dict[str, Any]], float | None]]],
                width: int = 42) -> str:
    """One line per metric: frakpy, containerd and frakpy/containerd; a metric a runtime lacks is '-'."""
    rts = result["runtimes"]
    fk, ct = rts.get("frakpy", {}), rts.get("containerd", {})

    def value(r: dict[str, Any], get: Callable[[dict[str, Any]], float | None]) -> float | None:
        try:
            return get(r)
        except (KeyError, TypeError, ZeroDivisionError):
            return None

    lines = [f"{'metric':{width}} {'frakpy':>10} {'containerd':>11} {'ratio':>7}"]
    for label, get in rows:
        a, b = value(fk, get), value(ct, get)
        fa = f"{a:10.1f}" if a is not None else f"{'-':>10}"
        fb = f"{b:11.1f}" if b is not None else f"{'-':>11}"
        ratio = f"{a / b:7.2f}" if a is not None and b else f"{'-':>7}"
        lines.append(f"{label:{width}} {fa} {fb} {ratio}")
    return "\n".join(lines)
