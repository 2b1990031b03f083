"""Choose the accelerator: KVM where it runs a normal guest, TCG otherwise.

A host whose KVM is the PVM flavour (module ``kvm_pvm``) exposes /dev/kvm, but a normal
guest kernel hangs there: only a PVM guest kernel runs. ``auto`` therefore picks KVM only
when /dev/kvm is usable and no ``kvm_pvm`` module is loaded, unless the handler names a
PVM-capable kernel explicitly by asking for ``kvm``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AccelChoice:
    name: str  # "kvm" or "tcg"
    reason: str


def kvm_status(root: Path = Path("/")) -> tuple[bool, str]:
    """(usable for a normal guest, why) for the host rooted at ``root`` (tests pass a fake root)."""
    dev = root / "dev/kvm"
    if not dev.exists():
        return False, "/dev/kvm does not exist"
    if (root / "sys/module/kvm_pvm").exists():
        return False, "KVM is the PVM flavour (kvm_pvm loaded): normal guest kernels hang there"
    if root == Path("/") and not os.access(dev, os.R_OK | os.W_OK):
        return False, "/dev/kvm is not accessible to frakpyd"
    if not ((root / "sys/module/kvm_intel").exists() or (root / "sys/module/kvm_amd").exists()):
        return False, "neither kvm_intel nor kvm_amd is loaded"
    return True, "KVM available"


def choose(requested: str, root: Path = Path("/")) -> AccelChoice:
    """Resolve a handler's ``auto|kvm|tcg`` setting to the accelerator QEMU gets."""
    if requested == "tcg":
        return AccelChoice("tcg", "configured")
    if requested == "kvm":
        return AccelChoice("kvm", "configured")
    usable, why = kvm_status(root)
    return AccelChoice("kvm" if usable else "tcg", why)


def host_tsc_khz(root: Path = Path("/")) -> int | None:
    """The host TSC frequency in kHz, which a TCG microvm guest needs as tsc_early_khz.

    Without it the guest calibrates the TSC against the PIT, which fails at random under
    TCG and then hangs the boot (microvm has no HPET to fall back on).
    """
    sysfs = root / "sys/devices/system/cpu/cpu0/tsc_freq_khz"
    try:
        return int(sysfs.read_text().strip())
    except (OSError, ValueError):
        pass
    try:
        cpuinfo = (root / "proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = re.search(r"^flags\s*:(.*)$", cpuinfo, re.M)
    mhz = re.search(r"^cpu MHz\s*:\s*([\d.]+)", cpuinfo, re.M)
    if mhz and flags and "constant_tsc" in flags.group(1).split():
        return int(float(mhz.group(1)) * 1000)
    return None
