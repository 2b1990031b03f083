"""The pod VM's QEMU command line with its root image as persistent memory (DAX) or as a disk."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from frakpy.vm import template
from frakpy.vm.qemu import render_argv
from frakpy.vm.spec import VMSpec, root_dax_problem

MiB = 1 << 20


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "rootfs.erofs"
    with open(path, "wb") as f:
        f.truncate(52 * MiB)
    return path


@pytest.fixture
def pod(tmp_path: Path, image: Path) -> VMSpec:
    return VMSpec(vm_id="a" * 64, run_dir=tmp_path / "run", kernel=tmp_path / "vmlinux", rootfs=image,
                  root_dax=True, tsc_khz=2000000, qmp_fd=3, agent_fd=4, tap_fd=5, tap_fds=[5], mac="0a:58:0a:00:00:05")


def arg_after(argv: list[str], opt: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == opt]


def test_dax_root_is_a_second_ram_block_after_guest_ram(pod: VMSpec, image: Path) -> None:
    argv = render_argv(pod)
    assert arg_after(argv, "-M") == ["microvm,x-option-roms=off,pcie=on"]
    assert arg_after(argv, "-m") == [str(256 + 52)]
    assert arg_after(argv, "-object") == [
        "memory-backend-ram,id=ram,size=256M",
        f"memory-backend-file,id=rootfs,size=52M,mem-path={image},share=on,readonly=on"]
    assert arg_after(argv, "-numa") == ["node,memdev=ram", "node,memdev=rootfs"]
    assert not any(a.startswith(("virtio-blk", "id=root,")) for a in argv)
    cmdline = arg_after(argv, "-append")[0].split()
    assert "memmap=52M!256M" in cmdline and "root=/dev/pmem0" in cmdline
    assert {"rootflags=dax=always", "rootwait", "ro", "percpu_alloc=page"} <= set(cmdline)
    # the devices whose receive queues the guest fills go over PCI (virtio-mmio offers 1024 entries)
    devices = arg_after(argv, "-device")
    assert {"virtio-serial-pci,id=vser0", "virtio-scsi-pci,id=scsi0",
            "virtio-net-pci,netdev=net0,mac=0a:58:0a:00:00:05,romfile=", "virtio-rng-device"} <= set(devices)


def test_disk_root_keeps_virtio_mmio(pod: VMSpec) -> None:
    argv = render_argv(dataclasses.replace(pod, root_dax=False))
    assert arg_after(argv, "-M") == ["microvm,x-option-roms=off"]
    assert arg_after(argv, "-m") == ["256"] and "-numa" not in argv
    assert "virtio-blk-device,drive=root" in argv and "virtio-serial-device,id=vser0" in argv
    cmdline = arg_after(argv, "-append")[0].split()
    assert "root=/dev/vda" in cmdline and not any(p.startswith("memmap=") for p in cmdline)


def test_pci_machines_keep_the_disk_root(image: Path) -> None:
    assert "machine q35" in root_dax_problem(image, "erofs", 256, "q35")
    assert "machine pc" in root_dax_problem(image, "erofs", 256, "pc")


def test_templates_and_clones_put_their_ram_file_first(pod: VMSpec, tmp_path: Path) -> None:
    t = template.template_spec(pod, "k" * 20, tmp_path / "trun", tmp_path / "work")
    t.qmp_fd, t.agent_fd = 3, 4
    argv = render_argv(t)
    assert arg_after(argv, "-M") == ["microvm,x-option-roms=off,pcie=on"]  # RAM comes from the NUMA nodes
    objects = arg_after(argv, "-object")
    assert objects[0] == f"memory-backend-file,id=ram,size=256M,mem-path={tmp_path}/work/memory,share=on"
    assert objects[1].startswith("memory-backend-file,id=rootfs,")  # shared: left out of the saved state
    clone = render_argv(template.clone_spec(pod, template.Pinned(template.Template("h", "k", tmp_path), "b", 12, 11)))
    assert arg_after(clone, "-object")[0] == "memory-backend-file,id=ram,size=256M,mem-path=/proc/self/fd/12,share=off"


def test_root_dax_problem(tmp_path: Path, image: Path) -> None:
    assert root_dax_problem(image, "erofs", 256) == ""
    assert "not EROFS" in root_dax_problem(image, "ext4", 256)
    assert "exceeds" in root_dax_problem(image, "erofs", 2000)
    odd = tmp_path / "odd.erofs"
    odd.write_bytes(b"x" * 4096)
    assert "multiple of 2 MiB" in root_dax_problem(odd, "erofs", 256)
    assert "unreadable" in root_dax_problem(tmp_path / "missing", "erofs", 256)
    os.truncate(odd, 0)
    assert "multiple of 2 MiB" in root_dax_problem(odd, "erofs", 256)
