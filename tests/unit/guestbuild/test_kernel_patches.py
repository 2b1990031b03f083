"""The guest kernel build key and the source patch set (images/kernel.py), without building."""

from __future__ import annotations

import shutil

import pytest

from images import kernel

pytestmark = pytest.mark.skipif(shutil.which("patch") is None, reason="needs patch(1)")

PATCH_A = """first patch: a description before the diff

--- a/f.txt
+++ b/f.txt
@@ -1,2 +1,2 @@
 one
-two
+TWO
"""

PATCH_B = """--- a/f.txt
+++ b/f.txt
@@ -1,2 +1,3 @@
 one
 two
+three
"""


def test_key_changes_with_patches_only_when_there_are_some():
    base = kernel.kernel_key("CONFIG_X=y\n", "linux-source-6.1", "6.1.1")
    assert kernel.kernel_key("CONFIG_X=y\n", "linux-source-6.1", "6.1.1", "") == base
    assert kernel.kernel_key("CONFIG_X=y\n", "linux-source-6.1", "6.1.1", PATCH_A) != base
    assert kernel.kernel_key("CONFIG_X=y\n", "linux-source-6.1", "6.1.2") != base


def test_apply_then_switch_then_drop_patch_sets(tmp_path, monkeypatch):
    tree, pdir = tmp_path / "tree", tmp_path / "patches"
    tree.mkdir(), pdir.mkdir()
    (tree / "f.txt").write_text("one\ntwo\n")
    monkeypatch.setattr(kernel, "PATCH_DIR", pdir)
    monkeypatch.setattr(kernel, "log", lambda msg: None)

    (pdir / "0001-a.patch").write_text(PATCH_A)
    kernel.apply_patches(tree)
    assert (tree / "f.txt").read_text() == "one\nTWO\n"
    kernel.apply_patches(tree)                       # same set again: untouched
    assert (tree / "f.txt").read_text() == "one\nTWO\n"

    (pdir / "0001-a.patch").unlink()                 # another set: the old one is reverted first
    (pdir / "0001-b.patch").write_text(PATCH_B)
    kernel.apply_patches(tree)
    assert (tree / "f.txt").read_text() == "one\ntwo\nthree\n"

    (pdir / "0001-b.patch").unlink()                 # no patches: the pristine tree
    kernel.apply_patches(tree)
    assert (tree / "f.txt").read_text() == "one\ntwo\n"
    assert not (tree / ".frakpy-patches").exists()
