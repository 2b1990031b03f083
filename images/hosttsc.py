"""Host TSC frequency in kHz, for the guest's ``tsc_early_khz=`` boot parameter.

Under TCG on ``-M microvm`` there is no HPET and no ACPI PM timer, so a guest whose PIT
calibration fails hangs at boot; handing it the TSC frequency up front avoids the
calibration.  The value only has to be close: QEMU's TCG TSC ticks at the host's
rate as seen by ``cpu_get_host_ticks``.

Self-contained on purpose (standard library only) so the daemon can copy or import it.
"""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

_MHZ_PATTERNS = (
    # most precise first: the refined calibration against HPET/PM timer
    re.compile(r"tsc: Refined TSC clocksource calibration: (\d+\.\d+) MHz"),
    re.compile(r"tsc: Detected (\d+\.\d+) MHz (?:processor|TSC)"),
)


def _from_kernel_log(text: str) -> int | None:
    for pat in _MHZ_PATTERNS:
        m = pat.findall(text)
        if m:
            return round(float(m[-1]) * 1000)
    return None


def _kernel_log() -> str:
    """The boot messages: dmesg, else /dev/kmsg-less fallbacks (journal, kern.log)."""
    for argv in (["dmesg"], ["journalctl", "-k", "-b", "--no-pager", "-q"]):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and "tsc:" in out.stdout:
            return out.stdout
    try:
        return Path("/var/log/kern.log").read_text(errors="replace")
    except OSError:
        return ""


def _from_cpuinfo(text: str) -> int | None:
    """'cpu MHz' equals the TSC rate only when the TSC is invariant (constant_tsc)."""
    flags = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
    mhz = re.search(r"^cpu MHz\s*:\s*(\d+(?:\.\d+)?)$", text, re.M)
    if not (flags and mhz):
        return None
    f = flags.group(1).split()
    if "constant_tsc" not in f or not ({"tsc_known_freq", "nonstop_tsc"} & set(f)):
        return None
    return round(float(mhz.group(1)) * 1000)


@functools.lru_cache(maxsize=1)
def host_tsc_khz() -> int | None:
    """Best guess of the host TSC frequency in kHz, or None if it cannot be told.

    Order: ``/sys/devices/system/cpu/cpu0/tsc_freq_khz`` (some kernels export it),
    the kernel log ("Refined TSC clocksource calibration", then "tsc: Detected"),
    then ``/proc/cpuinfo`` "cpu MHz" when the TSC is invariant.  When None, the
    caller should leave ``tsc_early_khz=`` off the guest command line.
    """
    try:
        v = int(Path("/sys/devices/system/cpu/cpu0/tsc_freq_khz").read_text().strip())
        if v > 0:
            return v
    except (OSError, ValueError):
        pass
    v = _from_kernel_log(_kernel_log())
    if v:
        return v
    try:
        return _from_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return None


if __name__ == "__main__":
    print(host_tsc_khz())
