"""Build the host-side libraries frakpyd puts on QEMU's LD_LIBRARY_PATH (``qemu-libs/*.c``).

Today one: ``libcapstone.so.4``, a no-op stand-in for the disassembler QEMU links but uses only
for debug output (see the source's comment for why and what it costs). The output is
``<out>/qemu-libs-<key>/`` where ``key`` hashes the sources and the compiler's version; before it
is recorded, the stand-in is checked by running ``qemu-system-x86_64 -version`` against it (a QEMU
that needs more of the library than the stub has would fail to start right there).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "qemu-libs"
KEY_LEN = 16
# library file name -> its source
LIBS = {"libcapstone.so.4": "capstone-stub.c"}


def log(msg: str) -> None:
    print(f"[qemu-libs] {msg}", file=sys.stderr, flush=True)


def compiler_version(cc: str) -> str:
    out = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[0] if out else cc


def libs_key(cc_version: str) -> str:
    h = hashlib.sha256(cc_version.encode())
    for lib, src in sorted(LIBS.items()):
        h.update(f"\0{lib}\0".encode() + (SOURCES / src).read_bytes())
    return h.hexdigest()[:KEY_LEN]


def check_with_qemu(libdir: Path, qemu: str) -> str:
    """'' when ``qemu -version`` starts with these libraries first on its path, else why not."""
    if shutil.which(qemu) is None:
        return f"{qemu} is not installed"
    env = dict(os.environ, LD_LIBRARY_PATH=str(libdir))
    r = subprocess.run([qemu, "-version"], capture_output=True, text=True, env=env)
    return "" if r.returncode == 0 else (r.stderr.strip() or f"exit status {r.returncode}")


def build(out: Path, qemu: str = "qemu-system-x86_64", cc: str = "gcc") -> dict:
    """Compile (or reuse) the libraries; {"path": dir, "key": key}, or {} when QEMU cannot use them."""
    if shutil.which(cc) is None:
        log(f"no C compiler ({cc}): QEMU keeps its own libraries")
        return {}
    key = libs_key(compiler_version(cc))
    dest = out / f"qemu-libs-{key}"
    if not dest.is_dir():
        tmp = out / f".qemu-libs-{key}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            for lib, src in LIBS.items():
                subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-shared", "-fPIC", f"-Wl,-soname,{lib}",
                                "-o", str(tmp / lib), str(SOURCES / src)], check=True)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log(f"built {dest}")
    why = check_with_qemu(dest, qemu)
    if why:
        log(f"{qemu} does not start with {dest} ({why}): QEMU keeps its own libraries")
        return {}
    return {"path": str(dest), "key": key}
