"""VM templates without QEMU: what the key covers, the template's and a clone's command lines."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from frakpy.errors import FailedPrecondition
from frakpy.vm import template
from frakpy.vm.qemu import render_argv
from frakpy.vm.spec import VMSpec


@pytest.fixture
def pod(tmp_path: Path) -> VMSpec:
    kernel, rootfs = tmp_path / "vmlinux", tmp_path / "rootfs.img"
    kernel.write_bytes(b"k" * 10)
    rootfs.write_bytes(b"r" * 10)
    return VMSpec(vm_id="a" * 64, run_dir=tmp_path / "run", kernel=kernel, rootfs=rootfs, tsc_khz=2000000,
                  qemu_binary="/bin/true", qmp_fd=3, agent_fd=4, tap_fd=5, tap_fds=[5], mac="0a:58:0a:00:00:05")


def key(spec: VMSpec) -> str:
    return template.key_of(template.variant(spec))


def test_key_is_stable_and_ignores_pod_backends(pod: VMSpec, tmp_path: Path) -> None:
    other_pod = dataclasses.replace(pod, vm_id="b" * 64, run_dir=tmp_path / "other", tap_fd=9, tap_fds=[9],
                                    mac="0a:58:0a:00:00:09", qmp_fd=7, agent_fd=8)
    assert key(pod) == key(other_pod)


@pytest.mark.parametrize("change", [
    {"memory_mib": 512}, {"vcpus": 2}, {"machine": "q35"}, {"accel": "kvm"}, {"kernel_params": "x=1"},
    {"transport": "vsock"}, {"tap_fd": None, "tap_fds": []}, {"rootfs_fstype": "ext4"}, {"root_dax": True},
])
def test_key_changes_with_what_must_match(pod: VMSpec, change: dict) -> None:
    assert key(pod) != key(dataclasses.replace(pod, **change))


def test_key_changes_when_the_guest_image_is_rebuilt(pod: VMSpec) -> None:
    before = key(pod)
    pod.rootfs.write_bytes(b"r" * 11)
    assert key(pod) != before


def test_template_argv_shares_ram_and_has_a_placeholder_nic(pod: VMSpec, tmp_path: Path) -> None:
    t = template.template_spec(pod, "k" * 20, tmp_path / "trun", tmp_path / "work")
    t.qmp_fd, t.agent_fd = 3, 4
    argv = render_argv(t)
    text = "\n".join(argv)
    assert f"memory-backend-file,id=ram,size=256M,mem-path={tmp_path}/work/memory,share=on" in argv
    assert "microvm,x-option-roms=off,memory-backend=ram" in argv
    assert "hubport,id=net0,hubid=0" in argv and "tap," not in text
    assert f"virtio-net-device,netdev=net0,mac={template.TEMPLATE_MAC}" in argv
    assert "frakpy.template=1" in argv[argv.index("-append") + 1]
    assert "-incoming" not in argv


def test_clone_argv_maps_the_template_privately_and_loads_its_state(pod: VMSpec, tmp_path: Path) -> None:
    t = template.Template("frakpy", "k" * 20, tmp_path / "frakpy-kkk")
    argv = render_argv(template.clone_spec(pod, template.Pinned(t, "b", 12, 11)))
    # the memory through QEMU's inherited fd: a discard or prune meanwhile unlinks only the name
    assert "memory-backend-file,id=ram,size=256M,mem-path=/proc/self/fd/12,share=off" in argv
    assert argv[argv.index("-incoming") + 1] == "defer"
    assert "tap,id=net0,fd=5,vhost=off" in argv  # the pod's own tap
    assert "-kernel" not in argv  # a restored guest never boots: no 15 MiB kernel copy in QEMU


def test_cold_argv_is_unchanged(pod: VMSpec) -> None:
    argv = render_argv(pod)
    assert "-kernel" in argv and "-incoming" not in argv
    assert not any("memory-backend" in a for a in argv)


def test_unsupported_variants(pod: VMSpec) -> None:
    assert template.unsupported(pod) == ""
    assert "multi-queue" in template.unsupported(dataclasses.replace(pod, tap_fds=[5, 6]))
    assert "vsock" in template.unsupported(dataclasses.replace(pod, transport="vsock"))
    # a reported free page of a clone would be punched out of the template file every clone maps
    assert "free page reporting" in template.unsupported(dataclasses.replace(pod, free_page_reporting=True))


def test_free_page_reporting_argv(pod: VMSpec) -> None:
    argv = render_argv(dataclasses.replace(pod, free_page_reporting=True))
    assert "virtio-balloon-device,free-page-reporting=on" in argv
    assert "page_reporting.page_reporting_order=0" in argv[argv.index("-append") + 1]
    q35 = render_argv(dataclasses.replace(pod, free_page_reporting=True, machine="q35"))
    assert "virtio-balloon-pci,free-page-reporting=on" in q35
    assert not any("balloon" in a for a in render_argv(pod))


def test_handlers_with_templates_get_no_balloon(tmp_path: Path) -> None:
    from frakpy.config import Config, HandlerConfig
    from frakpy.sandbox.vmboot import handler_spec

    cfg = Config()
    guest = tmp_path / "guest"
    guest.mkdir()
    (guest / "vmlinux").write_bytes(b"k")
    (guest / "rootfs.erofs").write_bytes(b"r")
    common = {"kernel": str(guest / "vmlinux"), "rootfs": str(guest / "rootfs.erofs"), "accelerator": "tcg"}
    with_t, _ = handler_spec(cfg, HandlerConfig(template=True, **common), "x", tmp_path)
    without, _ = handler_spec(cfg, HandlerConfig(template=False, **common), "x", tmp_path)
    off, _ = handler_spec(cfg, HandlerConfig(template=False, free_page_reporting=False, **common), "x", tmp_path)
    assert (with_t.free_page_reporting, without.free_page_reporting, off.free_page_reporting) == (False, True, False)


def make_template(d: Path, memory: bytes = b"m" * 100, state: bytes = b"s" * 50) -> template.Template:
    d.mkdir(parents=True, exist_ok=True)
    (d / "memory").write_bytes(memory)
    (d / "state").write_bytes(state)
    meta = {"sizes": {"memory": len(memory), "state": len(state)}, "state_sha256": hashlib.sha256(state).hexdigest()}
    (d / "meta.json").write_text(json.dumps(meta))
    return template.Template("frakpy", d.name.split("-", 1)[1], d)


def test_pin_checks_the_files_and_holds_them_open(tmp_path: Path) -> None:
    import os
    import shutil

    t = make_template(tmp_path / "frakpy-x")
    p = t.pin()
    try:
        assert p.build == hashlib.sha256(b"s" * 50).hexdigest()
        shutil.rmtree(t.dir)  # a sibling's discard: the restore still reads this build
        assert os.pread(p.memory_fd, 4, 0) == b"mmmm" and os.read(p.state_fd, 50) == b"s" * 50
    finally:
        p.close()
    with pytest.raises(template.TemplateGone):
        t.pin()


def test_pin_catches_damaged_files(tmp_path: Path) -> None:
    t = make_template(tmp_path / "frakpy-x")
    t.pin().close()
    (t.dir / "state").write_bytes(b"s" * 49 + b"t")
    with pytest.raises(FailedPrecondition, match="corrupted"):
        t.pin()
    (t.dir / "memory").write_bytes(b"m" * 99)
    with pytest.raises(FailedPrecondition, match="memory is 99 bytes"):
        t.pin()


def test_a_failure_with_a_replaced_build_keeps_the_new_one(tmp_path: Path) -> None:
    store = template.TemplateStore(tmp_path, tmp_path / "run")
    t = make_template(tmp_path / "frakpy-x", state=b"old")
    old = t.pin()
    old.close()
    make_template(t.dir, state=b"new")  # rebuilt after a sibling's failure
    store.discard(t, "restore failed late", build=old.build)
    assert t.build_id() == hashlib.sha256(b"new").hexdigest()  # still published
    store.discard(t, "restore failed", build=t.build_id())
    assert not t.dir.exists()


def test_prune_keeps_the_current_and_recent_templates(tmp_path: Path) -> None:
    import os
    import time

    store = template.TemplateStore(tmp_path, tmp_path / "run")
    for name, age in (("frakpy-old", 3600), ("frakpy-new", 0), ("frakpy-cur", 3600), ("other-old", 3600)):
        (tmp_path / name).mkdir()
        then = time.time() - age
        os.utime(tmp_path / name, (then, then))
    removed = store.prune("frakpy", keep="cur")
    assert removed == ["frakpy-old"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["frakpy-cur", "frakpy-new", "other-old"]


def test_repeated_restore_failures_stop_rebuilds_for_a_while(pod: VMSpec, tmp_path: Path) -> None:
    import asyncio

    store = template.TemplateStore(tmp_path / "templates", tmp_path / "run")
    k = key(pod)
    t = make_template(tmp_path / "templates" / f"frakpy-{k}", state=b"build 1")
    b1 = t.build_id()
    store.discard(t, "qemu said no", build=b1)
    assert not t.dir.exists() and k not in store._failed  # first failure: the next pod rebuilds
    store.discard(t, "a sibling pod of the same build failed too", build=b1)
    assert k not in store._failed  # one bad build counts once, however many pods it failed
    make_template(t.dir, state=b"build 2")
    store.discard(t, "qemu said no again", build=t.build_id())
    with pytest.raises(FailedPrecondition, match="failed to build .*restore failed with 2 builds"):
        asyncio.run(store.get("frakpy", pod, 1.0))  # no build attempted: pods cold-boot for a while
    store._failed.clear()
    store.restored(t)
    make_template(t.dir, state=b"build 3")
    store.discard(t, "once more", build=t.build_id())
    assert k not in store._failed  # a success in between resets the count


def test_cleanup_removes_what_a_crashed_build_left(tmp_path: Path) -> None:
    import fcntl
    import os

    store = template.TemplateStore(tmp_path / "templates", tmp_path / "run")
    store.root.mkdir(parents=True)
    dead = store.root / ".build-aaaa-999999999"  # no such pid
    dead.mkdir()
    (dead / "memory").write_bytes(b"x")
    live = store.root / f".build-bbbb-{os.getpid()}"
    live.mkdir()
    stale_run = tmp_path / "run" / "templates" / "cccc"
    stale_run.mkdir(parents=True)
    (stale_run / "qemu.pid").write_text("999999999\n")
    busy_run = tmp_path / "run" / "templates" / "dddd"
    busy_run.mkdir(parents=True)
    lock = os.open(store.root / ".lock-dddd0000", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)  # a build of that key is running
    try:
        removed = store.cleanup()
    finally:
        os.close(lock)
    assert removed == [".build-aaaa-999999999"]
    assert not dead.exists() and live.exists() and not stale_run.exists() and busy_run.exists()
