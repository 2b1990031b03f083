"""Test images built offline from Debian packages, deterministically (same inputs, same digests).

``busybox_layout()`` writes an OCI layout with a busybox image in two layers: the first has
``/bin/busybox`` from Debian's ``busybox-static`` (``apt-get download`` + ``dpkg-deb -x``, cached
under ``/var/cache/frakpy/testimages``; the installed ``/bin/busybox`` of that package is the
fallback when apt cannot download) with one hard link per applet in ``/bin``, ``/etc/passwd`` and
``/etc/group`` (root, daemon, www-data 33, nobody 65534, frak 1234:1234) and a few files the
second layer changes: it whites out ``/etc/obsolete.conf``, makes ``/opt/old`` opaque and rewrites
``/etc/motd``. ``multiarch=True`` adds an arm64 manifest reusing the same layers with its own
config, under an OCI index.

Pitfall: Debian's busybox-static runs applets inside ``sh`` without exec'ing ``/bin/<applet>``
(standalone shell), so ``sh -c ls`` never execs ``/bin/ls``. Tests about what a container may exec
should build with ``dynamic=True``: Debian's dynamic ``busybox`` plus the glibc files it needs
(``libc6``), which execs real files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from frakpy.errors import FailedPrecondition
from frakpy.image import ocibuild as ob

CACHE_DIR = Path(os.environ.get("FRAKPY_TESTIMAGE_CACHE", "/var/cache/frakpy/testimages"))

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
frak:x:1234:1234:frak test user:/home/frak:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """root:x:0:
daemon:x:1:
www-data:x:33:
frak:x:1234:
nogroup:x:65534:
"""


def busybox_binary(cache_dir: Path = CACHE_DIR) -> Path:
    """A static busybox from Debian's busybox-static, cached."""
    target = cache_dir / "busybox-static" / "bin" / "busybox"
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        got = subprocess.run(["apt-get", "download", "busybox-static"], cwd=tmp, capture_output=True, text=True)
        debs = sorted(Path(tmp).glob("busybox-static_*.deb"))
        extracted = Path(tmp) / "x"
        if got.returncode == 0 and debs:
            subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(extracted)], check=True)
            binary = extracted / "bin" / "busybox"
        else:
            binary = Path("/bin/busybox")
            listed = subprocess.run(["dpkg", "-L", "busybox-static"], capture_output=True, text=True)
            if listed.returncode != 0 or not binary.is_file():
                raise FailedPrecondition(
                    "cannot get busybox-static: apt-get download failed "
                    f"({got.stderr.strip()[-200:]}) and the package is not installed"
                )
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(binary, target.with_suffix(".tmp"))
        os.chmod(target.with_suffix(".tmp"), 0o755)
        os.rename(target.with_suffix(".tmp"), target)
    return target


def debian_package(package: str, cache_dir: Path = CACHE_DIR) -> Path:
    """Files of a Debian package (``apt-get download`` + ``dpkg-deb -x``), extracted once into the cache."""
    target = cache_dir / "pkgs" / package
    if (target / ".complete").exists():
        return target
    (cache_dir / "pkgs").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        got = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
        debs = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if got.returncode != 0 or not debs:
            raise FailedPrecondition(
                f"apt-get download {package} failed: {got.stderr.strip()[-300:]}; run apt-get update first"
            )
        extracted = Path(tmp) / "x"
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(extracted)], check=True)
        (extracted / ".complete").write_text(debs[0].name)
        shutil.rmtree(target, ignore_errors=True)
        os.rename(extracted, target)
    return target


def dynamic_busybox_entries() -> tuple[Path, list[ob.Entry]]:
    """Debian's dynamic ``busybox`` (execs real files, unlike busybox-static's standalone shell) and
    the glibc files it needs, from ``busybox`` and ``libc6``."""
    busybox = debian_package("busybox") / "bin" / "busybox"
    libc = debian_package("libc6") / "lib" / "x86_64-linux-gnu"
    entries = [ob.directory("lib"), ob.directory("lib/x86_64-linux-gnu"), ob.directory("lib64")]
    for name in ("ld-linux-x86-64.so.2", "libc.so.6", "libresolv.so.2"):
        entries.append(ob.file(f"lib/x86_64-linux-gnu/{name}", source=libc / name, mode=0o755))
    entries.append(ob.symlink("lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"))
    return busybox, entries


def applets(binary: Path) -> list[str]:
    out = subprocess.run([str(binary), "--list"], capture_output=True, text=True, check=True).stdout
    return sorted({a.strip() for a in out.split() if a.strip() and "/" not in a})


def busybox_layers(binary: Path | None = None, *, dynamic: bool = False) -> list[list[ob.Entry]]:
    """The two layers of the busybox test image; ``dynamic`` takes Debian's dynamic busybox + glibc."""
    extra: list[ob.Entry] = []
    if dynamic:
        binary, extra = dynamic_busybox_entries()
    binary = binary or busybox_binary()
    base: list[ob.Entry] = [
        *extra,
        ob.directory("bin"),
        ob.directory("etc"),
        ob.directory("tmp", mode=0o1777),
        ob.directory("root", mode=0o700),
        ob.directory("home"),
        ob.directory("home/frak", mode=0o750, uid=1234, gid=1234),
        ob.directory("var/www", uid=33, gid=33),
        ob.directory("proc"),
        ob.directory("sys"),
        ob.directory("dev"),
        ob.file("bin/busybox", source=binary, mode=0o755),
        ob.file("etc/passwd", PASSWD),
        ob.file("etc/group", GROUP),
        ob.file("etc/shadow", "root:*:19000:0:99999:7:::\n", mode=0o640),
        ob.file("etc/motd", "frakpy test image, layer 1\n"),
        ob.file("etc/obsolete.conf", "removed by layer 2\n"),
        ob.file("opt/old/a", "a\n"),
        ob.file("opt/old/b", "b\n"),
        ob.file("home/frak/.profile", "export PS1='frak$ '\n", uid=1234, gid=1234),
        ob.symlink("usr/bin/env", "/bin/env"),
    ]
    for applet in applets(binary):
        if applet != "busybox":
            base.append(ob.hardlink(f"bin/{applet}", "bin/busybox"))
    top: list[ob.Entry] = [
        ob.whiteout("etc/obsolete.conf"),
        ob.opaque("opt/old"),
        ob.file("opt/old/c", "c\n"),
        ob.file("etc/motd", "frakpy test image, layer 2\n"),
        ob.file("etc/frakpy-release", "FRAKPY_TESTIMAGE=busybox\n"),
    ]
    return [base, top]


def busybox_spec(
    layers: list[list[ob.Entry]] | None = None,
    *,
    architecture: str = "amd64",
    variant: str = "",
    **config: Any,
) -> ob.ImageSpec:
    spec = ob.ImageSpec(
        layers=layers if layers is not None else busybox_layers(),
        cmd=["sh"],
        working_dir="/",
        architecture=architecture,
        variant=variant,
        labels={"org.frakpy.test": "busybox", "org.frakpy.arch": architecture},
    )
    for key, value in config.items():
        setattr(spec, key, value)
    return spec


def busybox_layout(
    out: Path, *, tag: str = "latest", multiarch: bool = False, dynamic: bool = False, **config: Any
) -> dict[str, Any]:
    """Write an OCI layout with the busybox image (or an amd64+arm64 index) tagged ``tag``.

    Returns the top-level descriptor (manifest, or index when ``multiarch``).
    """
    layout = ob.OCILayout(out)
    layers = busybox_layers(dynamic=dynamic)
    cache: dict[int, tuple[dict[str, Any], str]] = {}
    amd64 = layout.add_image(busybox_spec(layers, **config), layer_cache=cache)
    if not multiarch:
        layout.tag(amd64, tag)
        return amd64
    arm64 = layout.add_image(busybox_spec(layers, architecture="arm64", variant="v8", **config), layer_cache=cache)
    index = layout.add_index([arm64, amd64])
    layout.tag(index, tag)
    return index
