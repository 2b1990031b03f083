"""Build the frakpy guest (kernel + root filesystem) and write the manifest the daemon reads.

    python images/build.py [--out DIR] [--kernel-only | --rootfs-only] [--force]

Both halves are content-keyed and cached (see kernel.py and rootfs.py), so a second run
with nothing changed only computes the keys.  ``<out>/guest.json`` is replaced atomically:

    {"kernel": "/abs/vmlinux-<key>", "rootfs": "/abs/rootfs-<key>.erofs",
     "rootfs_fstype": "erofs", "kernel_key": ..., "rootfs_key": ...,
     "kernel_version": "6.1.x-frakpy", "qemu_lib_dir": "/abs/qemu-libs-<key>"}

``qemu_lib_dir`` (qemulibs.py) holds libraries frakpyd puts first on QEMU's library path; it is
left out when they cannot be built or QEMU does not start with them.

With --kernel-only / --rootfs-only the other half is taken from the existing manifest.
Must run as root (apt-get, mknod, chroot).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernel  # noqa: E402
import qemulibs  # noqa: E402
import rootfs  # noqa: E402

MANIFEST = "guest.json"


def write_manifest(out: Path, manifest: dict) -> Path:
    path = out / MANIFEST
    tmp = out / f".{MANIFEST}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=kernel.DEFAULT_OUT)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--kernel-only", action="store_true")
    g.add_argument("--rootfs-only", action="store_true")
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    ap.add_argument("--fstype", choices=rootfs.FSTYPES, default=rootfs.DEFAULT_FSTYPE)
    ap.add_argument("--with", dest="extra", action="append", default=[],
                    help="extra kernel fragment kernel-config/NAME.config (e.g. pvm-guest)")
    a = ap.parse_args(argv)

    t0 = time.monotonic()
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    old: dict = {}
    try:
        old = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        pass
    manifest = dict(old)

    if not a.rootfs_only:
        k = kernel.build(out, a.extra, a.force)
        manifest.update(kernel=k["path"], kernel_key=k["key"], kernel_version=k["release"])
    if not a.kernel_only:
        r = rootfs.build(out, a.fstype, a.force)
        manifest.update(rootfs=r["path"], rootfs_key=r["key"], rootfs_fstype=r["fstype"])

    libs = qemulibs.build(out)
    if libs:
        manifest["qemu_lib_dir"] = libs["path"]
    else:
        manifest.pop("qemu_lib_dir", None)

    missing = [k for k in ("kernel", "rootfs") if not manifest.get(k)
               or not Path(manifest[k]).is_file()]
    if missing:
        print(f"[build] {' and '.join(missing)} not built yet: run without "
              f"--kernel-only/--rootfs-only", file=sys.stderr)
        return 1
    path = write_manifest(out, manifest)
    print(f"[build] wrote {path} in {time.monotonic() - t0:.1f} s")
    print(json.dumps(manifest, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
