"""The guest agent's vsock port comes from the kernel command line (frakpy.vsock_port=N)."""

from __future__ import annotations

from pathlib import Path

import pytest
from frakpy_guest import init, server


def test_cmdline_value(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyS0 frakpy.vsock_port=5000 quiet frakpy.vsock_port=6000\n")
    assert init.cmdline_value("frakpy.vsock_port", str(cmdline)) == "6000"  # the last one wins
    assert init.cmdline_value("frakpy.vsock", str(cmdline)) is None  # whole keys only
    assert init.cmdline_value("x", str(tmp_path / "missing")) is None


@pytest.mark.parametrize(("value", "port"), [
    (None, 1024), ("2049", 2049), ("0", 1024), ("4294967295", 1024), ("abc", 1024),
])
def test_vsock_port_from_cmdline(monkeypatch: pytest.MonkeyPatch, value: str | None, port: int) -> None:
    monkeypatch.setattr(init, "cmdline_value", lambda key, path="/proc/cmdline": value)
    assert server.vsock_port_from_cmdline() == port
