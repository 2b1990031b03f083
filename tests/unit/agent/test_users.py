"""frakpy_guest.users: resolving container users against an image rootfs."""

from __future__ import annotations

import os

import pytest
from frakpy_guest.users import resolve, resolve_in_root

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
# a comment
nginx:x:101:101:nginx:/var/cache/nginx:/sbin/nologin
postgres:x:70:70::/var/lib/postgresql:/bin/sh
broken line
"""
GROUP = """\
root:x:0:
bin:x:1:root,daemon
www:x:33:nginx
nginx:x:101:
video:x:44:nginx,postgres
postgres:x:70:
"""


@pytest.fixture
def rootfs(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text(PASSWD)
    (etc / "group").write_text(GROUP)
    return str(tmp_path)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"user": "nginx"}, (101, 101, [101, 33, 44])),
        ({"user": "nginx", "group": "www"}, (101, 33, [33, 44])),
        ({"user": "nginx", "group": "500"}, (101, 500, [500, 33, 44])),
        ({"user": "101"}, (101, 101, [101, 33, 44])),  # numeric uid still finds its name
        ({"user": "4242"}, (4242, 0, [0])),  # unknown numeric uid: gid 0, no groups
        ({"user": "4242", "group": "44"}, (4242, 44, [44])),
        ({"user": ""}, (0, 0, [0, 1])),  # root by default, with its memberships
        ({"user": "postgres", "supplemental_groups": [2000, 44]}, (70, 70, [70, 44, 2000])),
        ({"user": "nginx", "strict": True, "supplemental_groups": [2000]}, (101, 101, [101, 2000])),
    ],
)
def test_resolve(rootfs, spec, expected):
    assert resolve(spec, rootfs) == expected


def test_unknown_name(rootfs):
    with pytest.raises(ValueError, match="user 'nobody' not found in the image's /etc/passwd"):
        resolve({"user": "nobody"}, rootfs)


def test_unknown_group(rootfs):
    with pytest.raises(ValueError, match="group 'wheel' not found"):
        resolve({"user": "nginx", "group": "wheel"}, rootfs)


def test_no_passwd_file(tmp_path):
    assert resolve({"user": "1000", "group": "1000"}, str(tmp_path)) == (1000, 1000, [1000])
    with pytest.raises(ValueError, match="no usable /etc/passwd"):
        resolve({"user": "app"}, str(tmp_path))


def test_symlinks_stay_inside_rootfs(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("evil:x:0:0::/:/bin/sh\n")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "real").mkdir()
    (root / "real" / "passwd").write_text("app:x:1000:1000::/:/bin/sh\n")
    # Absolute and climbing links resolve against the rootfs, never the guest's own files.
    os.symlink("/real/passwd", root / "etc" / "passwd")
    os.symlink("../../../../outside", root / "etc" / "up")
    assert resolve({"user": "app"}, str(root)) == (1000, 1000, [1000])
    assert resolve_in_root(str(root), "/etc/up/passwd") == str(root / "outside" / "passwd")
    with pytest.raises(ValueError):
        resolve({"user": "evil"}, str(root))


def test_symlink_loop(tmp_path):
    (tmp_path / "etc").mkdir()
    os.symlink("/etc/group", tmp_path / "etc" / "passwd")
    os.symlink("/etc/passwd", tmp_path / "etc" / "group")
    with pytest.raises(OSError, match="too many levels"):
        resolve({"user": "x"}, str(tmp_path))
