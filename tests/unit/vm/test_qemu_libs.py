"""QEMU's library path: the no-op libcapstone from images/qemulibs.py, and the handler key that keeps
the real one."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from frakpy.config import Config, GuestConfig, HandlerConfig
from frakpy.sandbox.vmboot import handler_spec
from frakpy.vm.qemu import qemu_env


def guest_dir(tmp_path: Path, with_libs: bool) -> Config:
    g = tmp_path / "guest"
    (g / "qemu-libs-k").mkdir(parents=True)
    (g / "vmlinux").write_bytes(b"k")
    (g / "rootfs.erofs").write_bytes(b"r")
    manifest = {"kernel": str(g / "vmlinux"), "rootfs": str(g / "rootfs.erofs"), "rootfs_fstype": "erofs"}
    if with_libs:
        manifest["qemu_lib_dir"] = str(g / "qemu-libs-k")
    (g / "guest.json").write_text(json.dumps(manifest))
    return Config(guest=GuestConfig(manifest=str(g / "guest.json")))


def test_manifest_libs_reach_qemu_unless_the_handler_wants_capstone(tmp_path: Path) -> None:
    cfg = guest_dir(tmp_path, with_libs=True)
    spec, _ = handler_spec(cfg, HandlerConfig(accelerator="tcg"), "x", tmp_path)
    assert spec.qemu_lib_dir == tmp_path / "guest" / "qemu-libs-k"
    real, _ = handler_spec(cfg, HandlerConfig(accelerator="tcg", qemu_capstone=True), "x", tmp_path)
    assert real.qemu_lib_dir is None
    older, _ = handler_spec(guest_dir(tmp_path / "old", with_libs=False), HandlerConfig(accelerator="tcg"), "x",
                            tmp_path)
    assert older.qemu_lib_dir is None


def test_qemu_env_puts_the_libs_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    assert "LD_LIBRARY_PATH" not in qemu_env()
    assert qemu_env(tmp_path)["LD_LIBRARY_PATH"] == str(tmp_path)
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/lib")
    assert qemu_env(tmp_path)["LD_LIBRARY_PATH"] == f"{tmp_path}:/opt/lib"
    assert "glibc.malloc.arena_max=1" in qemu_env(tmp_path)["GLIBC_TUNABLES"]


@pytest.mark.skipif(not (shutil.which("gcc") and shutil.which("qemu-system-x86_64") and shutil.which("nm")),
                    reason="needs gcc, nm and qemu-system-x86_64")
def test_stub_capstone_builds_exports_the_whole_api_and_qemu_starts_with_it(tmp_path: Path) -> None:
    from images import qemulibs

    built = qemulibs.build(tmp_path)
    stub = Path(built["path"]) / "libcapstone.so.4"
    assert qemulibs.build(tmp_path) == built  # cached by key
    exported = set(subprocess.run(["nm", "-D", "--defined-only", str(stub)], capture_output=True, text=True,
                                  check=True).stdout.split())
    real = Path("/usr/lib/x86_64-linux-gnu/libcapstone.so.4")
    if real.exists():
        wanted = {s for s in subprocess.run(["nm", "-D", "--defined-only", str(real)], capture_output=True,
                                            text=True, check=True).stdout.split() if s.startswith("cs_")}
        assert wanted <= exported
    ldd = subprocess.run(["ldd", shutil.which("qemu-system-x86_64")], capture_output=True, text=True,
                         env=qemu_env(stub.parent)).stdout
    if "libcapstone.so.4" in ldd:
        assert str(stub) in ldd
