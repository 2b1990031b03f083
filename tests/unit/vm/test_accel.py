from pathlib import Path

from frakpy.vm import accel


def _host(tmp_path: Path, *modules: str, kvm: bool = True, cpuinfo: str = "") -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    if kvm:
        (tmp_path / "dev").mkdir()
        (tmp_path / "dev/kvm").write_text("")
    for m in modules:
        (tmp_path / "sys/module" / m).mkdir(parents=True)
    if cpuinfo:
        (tmp_path / "proc").mkdir()
        (tmp_path / "proc/cpuinfo").write_text(cpuinfo)
    return tmp_path


def test_pvm_host_falls_back_to_tcg(tmp_path):
    root = _host(tmp_path, "kvm", "kvm_pvm")
    choice = accel.choose("auto", root)
    assert choice.name == "tcg"
    assert "PVM" in choice.reason


def test_normal_kvm_host_uses_kvm(tmp_path):
    root = _host(tmp_path, "kvm", "kvm_intel")
    assert accel.choose("auto", root).name == "kvm"


def test_no_dev_kvm_means_tcg(tmp_path):
    root = _host(tmp_path, kvm=False)
    assert accel.choose("auto", root) == accel.AccelChoice("tcg", "/dev/kvm does not exist")


def test_explicit_choice_wins(tmp_path):
    root = _host(tmp_path, "kvm", "kvm_pvm")
    assert accel.choose("kvm", root).name == "kvm"  # e.g. a handler with a PVM guest kernel
    assert accel.choose("tcg", _host(tmp_path / "x", "kvm_intel")).name == "tcg"


def test_tsc_from_cpuinfo_needs_constant_tsc(tmp_path):
    info = "cpu MHz\t\t: 2599.998\nflags\t\t: fpu tsc constant_tsc nonstop_tsc\n"
    assert accel.host_tsc_khz(_host(tmp_path, cpuinfo=info)) == 2599998
    info2 = "cpu MHz\t\t: 2599.998\nflags\t\t: fpu tsc\n"
    assert accel.host_tsc_khz(_host(tmp_path / "y", kvm=False, cpuinfo=info2)) is None


def test_tsc_from_sysfs_first(tmp_path):
    p = tmp_path / "sys/devices/system/cpu/cpu0"
    p.mkdir(parents=True)
    (p / "tsc_freq_khz").write_text("2445430\n")
    assert accel.host_tsc_khz(tmp_path) == 2445430
