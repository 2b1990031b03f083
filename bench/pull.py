"""Pull benchmark: a ~100 MB multi-layer image from a local registry, cold and warm.

Builds an image of incompressible random layers (deterministic seed), pushes it to a
docker-registry on 127.0.0.1 started for the run, then pulls it with ImageStore into a fresh
state dir (cold) and again (warm). Reports download MB/s, unpack+mkfs.erofs time and
time-to-fsimage-ready as JSON and a table. ``peer_pull`` is the hook for the containerd
comparison (``ctr``/crictl pull of the same reference), left to be filled in.

    .venv/bin/python bench/pull.py [--mb 100] [--layers 5] [--runs 1] [--json out.json]
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


def peer_pull(ref: str) -> dict[str, float] | None:
    """Hook: pull ``ref`` with the peer runtime (containerd) and return the same keys; None = not run."""
    return None


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=3)
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
            results["peer"] = peer_pull(ref)
        finally:
            registry.close()
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    table = Table(title=f"frakpy pull, {args.mb} MB in {args.layers} layers, local registry")
    for col in ("run", "kind", "total s", "download s", "MB/s", "unpack+mkfs s", "fsimage MB"):
        table.add_column(col, justify="right")
    for i, run in enumerate(results["runs"]):
        for kind in ("cold", "warm"):
            r = run[kind]
            table.add_row(
                str(i),
                kind,
                f"{r['total_s']:.2f}",
                f"{r['download_s']:.2f}",
                f"{r['download_mb_per_s']:.0f}",
                f"{r['unpack_mkfs_s']:.2f}",
                f"{r['fsimage_mb']:.0f}",
            )
    Console(stderr=True).print(table)


if __name__ == "__main__":
    asyncio.run(main())
