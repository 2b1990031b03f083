import json
import os
import sys
from pathlib import Path

import pytest

FAKE = Path(__file__).with_name("fake_cni_plugin.py")


class FakeCNI:
    """A bin dir of fake plugins plus the log they write."""

    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.conf = root / "conf"
        self.log = root / "calls.jsonl"
        self.bin.mkdir()
        self.conf.mkdir()
        self.log.touch()

    def install(self, *names: str) -> None:
        body = FAKE.read_text().split("\n", 1)[1]
        for name in names:
            p = self.bin / name
            p.write_text(f"#!{sys.executable}\n{body}")
            p.chmod(0o755)

    def write_conf(self, name: str, doc: object) -> Path:
        p = self.conf / name
        p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        return p

    def calls(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


@pytest.fixture
def fake_cni(tmp_path, monkeypatch):
    f = FakeCNI(tmp_path)
    monkeypatch.setenv("FAKE_CNI_LOG", str(f.log))
    return f


@pytest.fixture
def netns_dir(tmp_path):
    """A private netns run dir (never /run/netns: orphan cleanup must not see real pods).
    netns.create bind-mounts it onto itself (like iproute2 does for /run/netns); undo that."""
    import ctypes

    d = tmp_path / "netns"
    yield str(d)
    libc = ctypes.CDLL(None, use_errno=True)
    for name in os.listdir(d) if d.exists() else []:
        libc.umount2(str(d / name).encode(), 2)
    while libc.umount2(str(d).encode(), 2) == 0:
        pass
