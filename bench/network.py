"""Pod network setup/teardown latency with the real CNI plugins (root; host-only test bridge).

    sudo .venv/bin/python bench/network.py [-n 20]

Uses a temporary conf dir (bridge ``frbench0``, 10.250.88.0/24, host-local dataDir in the temp
dir, no portmap) and a temporary netns run dir; removes the bridge at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from frakpy.network import PodNetwork
from frakpy.network.defaults import default_conflist


async def cycle(pn: PodNetwork, n: int) -> tuple[list[float], list[float]]:
    up, down = [], []
    for i in range(n):
        sid = f"bench{i:015d}"
        t0 = time.perf_counter()
        info = await pn.setup(sid, f"p{i}", "bench", f"uid-{i}")
        t1 = time.perf_counter()
        info.tap.close()
        await pn.teardown(sid, info.cni_cache_json)
        up.append(t1 - t0)
        down.append(time.perf_counter() - t1)
    return up, down


def run(n: int, bin_dirs: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp, "net.d")
        conf.mkdir()
        doc = default_conflist(
            name="frbench", bridge="frbench0", subnet="10.250.88.0/24", data_dir=f"{tmp}/ipam", portmap=False
        )
        (conf / "10-frbench.conflist").write_text(json.dumps(doc))
        pn = PodNetwork(str(conf), bin_dirs, state_dir=f"{tmp}/state", netns_dir=f"{tmp}/netns")
        try:
            up, down = asyncio.run(cycle(pn, n))
        finally:
            subprocess.run(["ip", "link", "del", "frbench0"], capture_output=True)
            subprocess.run(["umount", "-l", f"{tmp}/netns"], capture_output=True)
    for label, xs in (("setup", up), ("teardown", down)):
        med, worst = statistics.median(xs) * 1000, max(xs) * 1000
        print(f"{label:9s} n={len(xs)} median={med:.1f}ms max={worst:.1f}ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=10)
    ap.add_argument("--bin-dir", action="append", default=None)
    args = ap.parse_args()
    run(args.n, args.bin_dir or ["/opt/cni/bin", "/usr/lib/cni"])


if __name__ == "__main__":
    main()
