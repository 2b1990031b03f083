"""Pull benchmark: a ~100 MB multi-layer image from a local registry, cold and warm.

Builds an image of incompressible random layers (deterministic seed), pushes it to a
docker-registry on 127.0.0.1 started for the run, then pulls it with ImageStore into a fresh
state dir (cold) and again (warm). Reports download MB/s, unpack+mkfs.erofs time and
time-to-fsimage-ready as JSON and a table.

Unless ``--no-peer``, the same reference is then pulled by containerd 1.6 (bench/peer.py: own
socket/root/state under /tmp, registry reached over plain HTTP through its hosts.toml) via CRI
``PullImage`` with frakpy's CRIClient. containerd's PullImage returns once the layers are fetched
and unpacked into its overlayfs snapshotter, i.e. the image is ready to run. Cold: CRI
RemoveImage first (containerd 1.6 deletes with synchronous GC, dropping the unreferenced content
blobs and snapshots; the residue left in its root is checked and reported), then PullImage;
warm: a second PullImage (re-resolves the manifest, content already present). The table shows
both and the ratio frakpy/containerd of the total times (< 1 = frakpy faster).

    .venv/bin/python bench/pull.py [--mb 100] [--layers 5] [--runs 1] [--no-peer] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from frakpy.image import ocibuild as ob  # noqa: E402
from frakpy.image.push import push_layout  # noqa: E402
from frakpy.image.registry import PullConfig, RegistryConfig  # noqa: E402
from frakpy.image.store import ImageStore, PullProgress  # noqa: E402
from frakpy.store.db import Database  # noqa: E402
from tests.integration.registry_fixtures import Registry, requirements_missing  # noqa: E402


def build_layout(path: Path, total_mb: int, layers: int) -> dict[str, Any]:
    rng = random.Random(1234)
    per_layer = total_mb * (1 << 20) // layers
    specs = []
    for i in range(layers):
        files = [ob.file(f"data/layer{i}/f{j}.bin", rng.randbytes(per_layer // 4)) for j in range(4)]
        specs.append(files)
    layout = ob.OCILayout(path)
    desc = layout.add_image(ob.ImageSpec(layers=specs, cmd=["/bin/true"], compresslevel=1))
    layout.tag(desc, "latest")
    return desc


async def timed_pull(store: ImageStore, ref: str) -> dict[str, float]:
    marks: dict[str, float] = {}
    compressed = 0

    def progress(event: PullProgress) -> None:
        nonlocal compressed
        now = time.perf_counter()
        marks.setdefault(event.phase, now)
        if event.phase == "downloaded":
            marks["last_downloaded"] = now
            compressed += event.total

    start = time.perf_counter()
    record = await store.pull(ref, progress=progress)
    end = time.perf_counter()
    download_s = max(0.0, marks.get("last_downloaded", start) - marks.get("resolved", start))
    return {
        "total_s": end - start,
        "resolve_s": marks.get("resolved", start) - start,
        "download_s": download_s,
        "downloaded_mb": compressed / 1e6,
        "download_mb_per_s": (compressed / 1e6 / download_s) if compressed and download_s > 0 else 0.0,
        "unpack_mkfs_s": (marks["ready"] - marks["unpacking"]) if "unpacking" in marks else 0.0,
        "image_mb": record.size / 1e6,
        "fsimage_mb": record.fsimage_size / 1e6,
    }


def _containerd_residue(root: Path) -> dict[str, int]:
    """What containerd still holds in its root: content blobs (count, bytes) and overlay snapshots."""
    blobs = root / "io.containerd.content.v1.content" / "blobs" / "sha256"
    snaps = root / "io.containerd.snapshotter.v1.overlayfs" / "snapshots"
    files = list(blobs.iterdir()) if blobs.is_dir() else []
    return {
        "blobs": len(files),
        "blob_bytes": sum(f.stat().st_size for f in files),
        "snapshots": len(list(snaps.iterdir())) if snaps.is_dir() else 0,
    }


def peer_pull(ref: str, registry_host: str, runs: int, downloaded_mb: float) -> dict[str, Any] | None:
    """Pull ``ref`` with containerd (CRI PullImage through CRIClient), cold and warm, ``runs`` times.

    ``downloaded_mb`` is the compressed size of the image (what frakpy downloaded), used for an
    end-to-end MB/s; containerd's CRI does not expose a download/unpack split.
    """
    from bench.peer import Peer
    from frakpy.cri.client import CRIClient
    from frakpy.cri.proto import api_pb2 as pb

    out: dict[str, Any] = {"runs": []}
    spec = pb.ImageSpec(image=ref)

    def timed(c: CRIClient) -> dict[str, float]:
        t0 = time.perf_counter()
        image_ref = c.call(c.image.PullImage, pb.PullImageRequest(image=spec), timeout=600).image_ref
        total = time.perf_counter() - t0
        st = c.call(c.image.ImageStatus, pb.ImageStatusRequest(image=spec))
        return {
            "total_s": total,
            "downloaded_mb": downloaded_mb,
            "end_to_end_mb_per_s": downloaded_mb / total if total > 0 else 0.0,
            "image_mb": st.image.size / 1e6,
            "image_ref": image_ref,
        }

    with Peer(registry_host) as peer:
        out["runtime"] = peer.version
        root = peer.base / "root"
        with CRIClient(peer.endpoint, timeout=120) as c:
            for _ in range(runs):
                c.call(c.image.RemoveImage, pb.RemoveImageRequest(image=spec))  # no-op if absent
                residue = _containerd_residue(root)
                cold = timed(c)
                cold["residue_before"] = residue
                warm = timed(c)
                out["runs"].append({"cold": cold, "warm": warm})
            c.call(c.image.RemoveImage, pb.RemoveImageRequest(image=spec))
            out["residue_after_remove"] = _containerd_residue(root)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=3)
    parser.add_argument("--no-peer", action="store_true", help="frakpy only, no containerd comparison")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    missing = requirements_missing()
    if missing:
        sys.exit(f"bench/pull.py {missing}")
    with tempfile.TemporaryDirectory(prefix="frakpy-bench-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        build_layout(work / "layout", args.mb, args.layers)
        build_s = time.perf_counter() - t0
        registry = Registry(work / "registry")
        try:
            config = PullConfig(
                registries=[RegistryConfig(name=registry.host, insecure=True)],
                max_concurrent_downloads=args.concurrency,
            )
            ref = f"{registry.host}/bench/random:latest"
            await push_layout(work / "layout", ref, config=config)
            results: dict[str, Any] = {"image_build_s": build_s, "layers": args.layers, "runs": []}
            for run in range(args.runs):
                state = work / f"state{run}"
                store = ImageStore(Database(state / "frakpy.db"), state, config)
                cold = await timed_pull(store, ref)
                warm = await timed_pull(store, ref)
                await store.aclose()
                results["runs"].append({"cold": cold, "warm": warm})
            results["peer"] = None
            if not args.no_peer:
                mb = results["runs"][0]["cold"]["downloaded_mb"]
                results["peer"] = await asyncio.to_thread(peer_pull, ref, registry.host, args.runs, mb)
        finally:
            registry.close()
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    table = Table(title=f"pull, {args.mb} MB in {args.layers} layers, local registry (127.0.0.1)")
    for col in (
        "run",
        "kind",
        "runtime",
        "total s",
        "download s",
        "MB/s dl",
        "MB/s e2e",
        "unpack+mkfs s",
        "fsimage MB",
        "frakpy/containerd",
    ):
        table.add_column(col, justify="right")
    peer = results["peer"]
    for i, run in enumerate(results["runs"]):
        for kind in ("cold", "warm"):
            r = run[kind]
            p = peer["runs"][i][kind] if peer else None
            table.add_row(
                str(i),
                kind,
                "frakpy",
                f"{r['total_s']:.3f}",
                f"{r['download_s']:.3f}",
                f"{r['download_mb_per_s']:.0f}",
                f"{r['downloaded_mb'] / r['total_s']:.0f}" if kind == "cold" and r["total_s"] > 0 else "-",
                f"{r['unpack_mkfs_s']:.2f}",
                f"{r['fsimage_mb']:.0f}",
                f"{r['total_s'] / p['total_s']:.2f}x" if p else "-",
            )
            if p:
                table.add_row(
                    str(i),
                    kind,
                    "containerd",
                    f"{p['total_s']:.3f}",
                    "-",
                    "-",
                    f"{p['end_to_end_mb_per_s']:.0f}" if kind == "cold" else "-",
                    "-",
                    "-",
                    "",
                )
    console = Console(stderr=True)
    if not console.is_terminal:
        console.width = 160  # piped: rich defaults to 80 columns and would truncate the table
    console.print(table)
    if peer:
        console.print(
            f"containerd: {peer['runtime']} (CRI PullImage = fetch + unpack to overlayfs); "
            f"residue before each cold pull: {[r['cold']['residue_before'] for r in peer['runs']]}, "
            f"after final RemoveImage: {peer['residue_after_remove']}"
        )


if __name__ == "__main__":
    asyncio.run(main())
