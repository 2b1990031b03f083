from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from frakpy.errors import InvalidArgument
from frakpy.image import ocibuild as ob
from frakpy.image.blobs import DigestMismatch
from frakpy.image.unpack import LayerSource, apply_layer, unpack_layers


def _tar(entries: list[ob.Entry]) -> io.BytesIO:
    buf = io.BytesIO()
    ob.write_tar(entries, buf)
    buf.seek(0)
    return buf


def _raw_tar(*infos: tuple[tarfile.TarInfo, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in infos:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    buf.seek(0)
    return buf


def _info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o644
    return info


def test_whiteouts_opaque_and_metadata(tmp_path: Path) -> None:
    lower = [
        ob.file("etc/keep", "k"),
        ob.file("etc/gone", "g"),
        ob.directory("etc/gonedir"),
        ob.file("etc/gonedir/x", "x"),
        ob.file("opt/old/a", "a"),
        ob.directory("opt/old/sub"),
        ob.file("srv/setuid", "s", mode=0o4755, uid=1234, gid=33, mtime=1_000_000),
        ob.file("srv/attr", "x", xattrs={"user.frakpy": b"yes"}),
        ob.directory("srv/d", mode=0o1777, mtime=2_000_000),
    ]
    upper = [
        ob.whiteout("etc/gone"),
        ob.whiteout("etc/gonedir"),
        ob.file("opt/old/new", "n"),
        ob.opaque("opt/old"),
    ]
    apply_layer(tmp_path, _tar(lower))
    stats = apply_layer(tmp_path, _tar(upper))
    assert stats.whiteouts == 3  # two whiteouts and one opaque marker
    apply_layer(tmp_path, _raw_tar((_info("nonexistent/.wh.file"), b"")))
    assert (tmp_path / "etc/keep").read_text() == "k"
    assert not (tmp_path / "etc/gone").exists() and not (tmp_path / "etc/gonedir").exists()
    assert sorted(os.listdir(tmp_path / "opt/old")) == ["new"]  # same-layer entry survives the opaque marker
    assert not (tmp_path / "nonexistent").exists()
    st = (tmp_path / "srv/setuid").stat()
    assert st.st_mode & 0o7777 == 0o4755 and st.st_mtime == 1_000_000
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (1234, 33)
    assert (tmp_path / "srv/d").stat().st_mode & 0o7777 == 0o1777
    assert (tmp_path / "srv/d").stat().st_mtime == 2_000_000
    try:
        assert os.getxattr(tmp_path / "srv/attr", "user.frakpy") == b"yes"
    except OSError:
        pytest.skip("filesystem without user xattrs")


def test_hardlinks_symlinks_and_replacement(tmp_path: Path) -> None:
    apply_layer(
        tmp_path,
        _tar(
            [
                ob.file("bin/busybox", "BB", mode=0o755),
                ob.hardlink("bin/ls", "bin/busybox"),
                ob.symlink("bin/sh", "busybox"),
                ob.symlink("abs", "/etc/passwd"),
                ob.file("dir2file/x", "x"),
            ]
        ),
    )
    assert os.stat(tmp_path / "bin/ls").st_ino == os.stat(tmp_path / "bin/busybox").st_ino
    assert os.readlink(tmp_path / "bin/sh") == "busybox"
    assert os.readlink(tmp_path / "abs") == "/etc/passwd"  # kept as content, never followed
    # a later layer replaces a directory with a file and a file with a directory
    apply_layer(tmp_path, _tar([ob.file("dir2file", "now a file"), ob.directory("bin/sh")]))
    assert (tmp_path / "dir2file").read_text() == "now a file"
    assert (tmp_path / "bin/sh").is_dir() and not (tmp_path / "bin/sh").is_symlink()


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "./../evil"])
def test_dotdot_refused(tmp_path: Path, name: str) -> None:
    root = tmp_path / "root"
    with pytest.raises(InvalidArgument, match="escape"):
        apply_layer(root, _raw_tar((_info(name), b"x")))
    assert not (tmp_path / "evil").exists()


def test_symlinks_never_lead_out_of_the_tree(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    layer = _raw_tar(
        (_info("escape", tarfile.SYMTYPE, str(outside)), b""),
        (_info("up", tarfile.SYMTYPE, "../../.."), b""),
        (_info("escape/pwned", tarfile.REGTYPE), b"x"),
        (_info("up/pwned2", tarfile.REGTYPE), b"y"),
    )
    apply_layer(root, layer)
    assert list(outside.iterdir()) == []
    assert (root / str(outside).lstrip("/") / "pwned").read_bytes() == b"x"  # resolved inside the root
    assert (root / "pwned2").read_bytes() == b"y"
    # the final component is replaced, not followed
    apply_layer(root, _raw_tar((_info("escape", tarfile.REGTYPE), b"plain")))
    assert (root / "escape").read_bytes() == b"plain" and list(outside.iterdir()) == []


def test_hardlink_to_missing_target_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="not in the image"):
        apply_layer(tmp_path, _raw_tar((_info("a", tarfile.LNKTYPE, "missing"), b"")))


def test_devices_skipped(tmp_path: Path) -> None:
    stats = apply_layer(
        tmp_path, _raw_tar((_info("dev/null", tarfile.CHRTYPE), b""), (_info("fifo", tarfile.FIFOTYPE), b""))
    )
    assert stats.skipped_devices == ["dev/null", "fifo"]
    assert not (tmp_path / "fifo").exists()


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_compressions_and_diff_id(tmp_path: Path, compression: str) -> None:
    if compression == "zstd":
        pytest.importorskip("zstandard")
    layout = ob.OCILayout(tmp_path / "layout")
    desc, diff_id = layout.add_layer([ob.file("hello", "world")], compression)
    blob = layout.blob_path(desc["digest"])
    unpack_layers(tmp_path / "root", [LayerSource(blob, desc["digest"], diff_id)])
    assert (tmp_path / "root/hello").read_text() == "world"
    with pytest.raises(DigestMismatch, match="diff_id"):
        unpack_layers(tmp_path / "root2", [LayerSource(blob, desc["digest"], "sha256:" + "0" * 64)])


def test_layers_are_deterministic(tmp_path: Path) -> None:
    a = ob.OCILayout(tmp_path / "a").add_layer([ob.file("x/y", "1"), ob.symlink("z", "x")])
    b = ob.OCILayout(tmp_path / "b").add_layer([ob.symlink("z", "x"), ob.file("x/y", "1")])
    assert a == b
    raw = (tmp_path / "a/blobs/sha256" / a[0]["digest"].split(":")[1]).read_bytes()
    assert "sha256:" + hashlib.sha256(gzip.decompress(raw)).hexdigest() == a[1]
