"""Build the frakpy guest kernel: a minimal Linux ``vmlinux`` booted by QEMU through PVH.

Steps (each skipped when its result is already there):

1. make sure the build packages are installed (apt-get, only what is missing);
2. extract the distribution's ``linux-source`` tarball once under ``/var/cache/frakpy/kernel``;
   and apply ``kernel-config/patches/*.patch`` to it (reverting a set applied before that is
   no longer wanted, so one source tree serves every kernel key);
3. ``make allnoconfig`` with ``KCONFIG_ALLCONFIG`` = the ``kernel-config/*.config`` fragments
   concatenated (optional fragments such as ``pvm-guest.config`` only when asked for);
4. check that every option of the fragment took effect, warning about the ones that did not;
5. ``make vmlinux`` in the persistent build directory (incremental after a config change);
6. strip it and install it as ``<out>/vmlinux-<key>``.

``key`` is a truncated sha256 of the fragment text, the patches and the linux-source package
name and version, so the file name changes exactly when the kernel would.  If ``<out>/vmlinux-<key>``
already exists nothing else runs.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "kernel-config"
PATCH_DIR = CONFIG_DIR / "patches"
CACHE = Path("/var/cache/frakpy/kernel")
BUILD_DIR = CACHE / "build"
DEFAULT_OUT = Path("/var/lib/frakpy/guest")
# fragments that exist in kernel-config/ but are only used on request (--with NAME)
OPTIONAL_FRAGMENTS = {"pvm-guest"}
BUILD_DEPS = ["build-essential", "bc", "flex", "bison", "libelf-dev", "libssl-dev",
              "cpio", "xz-utils", "binutils", "patch"]
PREFERRED_SOURCE = "linux-source-6.1"   # what base.config was written and checked against
KEY_LEN = 16


def log(msg: str) -> None:
    print(f"[kernel] {msg}", flush=True)


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, **kw)


# ---------------------------------------------------------------- packages

def installed_version(pkg: str) -> str | None:
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Status}\t${Version}", pkg],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return None
    status, _, version = out.stdout.partition("\t")
    return version if status.endswith(" installed") else None


def apt_install(pkgs: list[str]) -> None:
    missing = [p for p in pkgs if installed_version(p) is None]
    if not missing:
        return
    log(f"apt-get install {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    argv = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if subprocess.run(argv, env=env).returncode != 0:
        run(["apt-get", "update"], env=env)
        run(argv, env=env)


def choose_source_package() -> str:
    """linux-source-6.1 on Debian 12; elsewhere the newest versioned linux-source-X.Y[.Z]."""
    if installed_version(PREFERRED_SOURCE):
        return PREFERRED_SOURCE
    names: list[str] = []
    for _ in range(2):
        out = subprocess.run(["apt-cache", "search", "--names-only", r"^linux-source-[0-9.]+$"],
                             capture_output=True, text=True).stdout
        names = [ln.split()[0] for ln in out.splitlines() if ln.strip()]
        if names:
            break
        run(["apt-get", "update"])
    if PREFERRED_SOURCE in names:
        return PREFERRED_SOURCE
    if not names:
        raise SystemExit("no linux-source-X.Y package available from apt")

    def vkey(n: str) -> tuple[int, ...]:
        return tuple(int(x) for x in n.removeprefix("linux-source-").split(".") if x.isdigit())
    return max(names, key=vkey)


# ---------------------------------------------------------------- fragment / key

def fragment_files(extra: list[str]) -> list[Path]:
    files = []
    for p in sorted(CONFIG_DIR.glob("*.config")):
        if p.stem in OPTIONAL_FRAGMENTS and p.stem not in extra:
            continue
        files.append(p)
    for name in extra:
        if not (CONFIG_DIR / f"{name}.config").is_file():
            raise SystemExit(f"no fragment kernel-config/{name}.config")
    return files


def fragment_text(files: list[Path]) -> str:
    parts = []
    for p in files:
        t = p.read_text()
        parts.append(f"# ---- {p.name}\n{t}{'' if t.endswith(chr(10)) else chr(10)}")
    return "".join(parts)


def patches_text() -> str:
    """The patches applied to the source, in name order, as one text (part of the key)."""
    return "".join(f"# ---- {p.name}\n{p.read_text()}" for p in sorted(PATCH_DIR.glob("*.patch")))


def kernel_key(fragment: str, src_pkg: str, src_version: str, patches: str = "") -> str:
    h = hashlib.sha256()
    h.update(fragment.encode())
    if patches:
        h.update(b"\0patches\0" + patches.encode())
    h.update(f"\0{src_pkg}={src_version}\0".encode())
    return h.hexdigest()[:KEY_LEN]


_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


def parse_config(text: str) -> dict[str, str]:
    """Option -> value; 'n' for '# ... is not set'.  Later lines win (like kconfig)."""
    opts: dict[str, str] = {}
    for ln in text.splitlines():
        ln = ln.strip()
        if m := _SET.match(ln):
            opts[m.group(1)] = m.group(2)
        elif m := _UNSET.match(ln):
            opts[m.group(1)] = "n"
    return opts


def config_mismatches(fragment: str, dotconfig: str) -> list[str]:
    want = parse_config(fragment)
    have = parse_config(dotconfig)
    bad = []
    for opt, val in want.items():
        got = have.get(opt, "n")
        if got != val:
            bad.append(f"{opt}: wanted {val}, got {'not set' if got == 'n' else got}")
    return bad


# ---------------------------------------------------------------- build

@dataclass
class Source:
    package: str
    version: str
    tree: Path


def ensure_source(pkg: str) -> Source:
    apt_install([pkg, *BUILD_DEPS])
    version = installed_version(pkg)
    assert version
    files = subprocess.run(["dpkg-query", "-L", pkg], capture_output=True, text=True,
                           check=True).stdout.split()
    tarballs = [f for f in files if re.search(r"/linux-source-[^/]*\.tar\.(xz|bz2|gz)$", f)]
    if not tarballs:
        raise SystemExit(f"{pkg} ships no linux-source tarball")
    tarball = Path(tarballs[0])
    tree = CACHE / re.sub(r"\.tar\.(xz|bz2|gz)$", "", tarball.name)
    marker = tree / ".frakpy-source"
    if marker.is_file() and marker.read_text().strip() == f"{pkg}={version}":
        return Source(pkg, version, tree)
    if (tree / "Makefile").is_file() and not marker.exists():
        # extracted by hand from this very package (the first build did so): adopt it
        marker.write_text(f"{pkg}={version}\n")
        return Source(pkg, version, tree)
    log(f"extracting {tarball} -> {CACHE}")
    if tree.exists():
        shutil.rmtree(tree)
    if BUILD_DIR.exists():      # objects from another source version are worthless
        shutil.rmtree(BUILD_DIR)
    CACHE.mkdir(parents=True, exist_ok=True)
    run(["tar", "-xaf", str(tarball), "-C", str(CACHE)])
    marker.write_text(f"{pkg}={version}\n")
    return Source(pkg, version, tree)


def apply_patches(tree: Path) -> None:
    """Bring the source tree to exactly our patch set: revert what an earlier set applied (kept in
    ``.frakpy-patches``), then apply the current one. Patch files are plain ``diff -u`` output
    against the tree's top directory (``patch -p1``); any text before the first ``---`` is a
    description."""
    record = tree / ".frakpy-patches"
    want = patches_text()
    have = record.read_text() if record.is_file() else ""
    if have == want:
        return
    if have:
        log("reverting the previously applied kernel patches")
        for one in reversed(have.split("# ---- ")[1:]):
            run(["patch", "-p1", "-R", "-s", "-d", str(tree)], input=one.encode())
        record.unlink()
    for p in sorted(PATCH_DIR.glob("*.patch")):
        log(f"applying kernel patch {p.name}")
        run(["patch", "-p1", "-N", "-s", "-d", str(tree), "-i", str(p)])
    if want:
        record.write_text(want)


def make(src: Source, *targets: str, logf=None, extra: list[str] = ()) -> None:
    argv = ["make", "-C", str(src.tree), "ARCH=x86_64", f"O={BUILD_DIR}", *extra, *targets]
    run(argv, stdout=logf, stderr=subprocess.STDOUT if logf else None)


def build(out: Path, extra: list[str] = (), force: bool = False, jobs: int | None = None) -> dict:
    """Build (or find) the kernel; returns {"path", "key", "release"}."""
    out = out.resolve()
    files = fragment_files(list(extra))
    fragment = fragment_text(files)
    pkg = choose_source_package()
    version = installed_version(pkg)
    if version is None:
        apt_install([pkg])
        version = installed_version(pkg)
    key = kernel_key(fragment, pkg, version, patches_text())
    dest = out / f"vmlinux-{key}"
    meta_path = out / f"vmlinux-{key}.json"
    if dest.is_file() and meta_path.is_file() and not force:
        meta = json.loads(meta_path.read_text())
        log(f"cached {dest} ({meta['release']})")
        return {"path": str(dest), "key": key, "release": meta["release"]}

    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        t0 = time.monotonic()
        src = ensure_source(pkg)
        apply_patches(src.tree)
        BUILD_DIR.mkdir(parents=True, exist_ok=True)
        frag_path = BUILD_DIR / "frakpy-fragment.config"
        frag_path.write_text(fragment)
        log(f"configuring {src.package} {src.version}: allnoconfig + "
            f"{', '.join(p.name for p in files)}")
        make(src, "allnoconfig", logf=subprocess.DEVNULL,
             extra=["-s", f"KCONFIG_ALLCONFIG={frag_path}"])
        dotconfig = (BUILD_DIR / ".config").read_text()
        bad = config_mismatches(fragment, dotconfig)
        if bad:
            log(f"WARNING: {len(bad)} fragment option(s) did not take effect "
                "(unknown symbol, unmet dependency or overridden):")
            for b in bad:
                log(f"  {b}")
        else:
            log(f"all {len(parse_config(fragment))} fragment options took effect")
        jobs = jobs or os.cpu_count() or 1
        build_log = CACHE / "build.log"
        log(f"make -j{jobs} vmlinux (log: {build_log}; from scratch ~5-10 min on 2 cores)")
        with open(build_log, "w") as lf:
            try:
                make(src, "vmlinux", logf=lf, extra=[f"-j{jobs}"])
            except subprocess.CalledProcessError as e:
                sys.stderr.write("".join(build_log.read_text().splitlines(True)[-40:]))
                raise SystemExit("kernel build failed") from e
        release = (BUILD_DIR / "include/config/kernel.release").read_text().strip()
        log(f"built {release} in {time.monotonic() - t0:.0f} s")

        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".vmlinux-{key}.tmp{os.getpid()}"
        run(["strip", "--strip-all", "-o", str(tmp), str(BUILD_DIR / "vmlinux")])
        notes = subprocess.run(["readelf", "-n", str(tmp)], capture_output=True, text=True).stdout
        if "0x00000012" not in notes:   # XEN_ELFNOTE_PHYS32_ENTRY: QEMU's PVH entry point
            tmp.unlink()
            raise SystemExit("stripped vmlinux has no PVH entry note (CONFIG_PVH off?)")
        os.chmod(tmp, 0o644)
        (out / f"vmlinux-{key}.config").write_text(dotconfig)
        meta = {"key": key, "release": release, "source_package": src.package,
                "source_version": src.version, "fragments": [p.name for p in files],
                "patches": sorted(p.name for p in PATCH_DIR.glob("*.patch")),
                "config_mismatches": bad}
        meta_tmp = out / f".vmlinux-{key}.json.tmp"
        meta_tmp.write_text(json.dumps(meta, indent=1) + "\n")
        os.replace(tmp, dest)
        os.replace(meta_tmp, meta_path)
        log(f"installed {dest} ({dest.stat().st_size / 1e6:.1f} MB)")
        return {"path": str(dest), "key": key, "release": release}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--with", dest="extra", action="append", default=[],
                    help="also apply kernel-config/NAME.config (e.g. pvm-guest)")
    ap.add_argument("--force", action="store_true", help="rebuild even if installed")
    ap.add_argument("-j", "--jobs", type=int)
    a = ap.parse_args(argv)
    print(json.dumps(build(a.out, a.extra, a.force, a.jobs)))


if __name__ == "__main__":
    main()
