#!/usr/bin/env python3
"""Regenerate the Python stubs of every frakpy proto.

Run from anywhere (paths are taken relative to the repository root):

    python tools/gen_protos.py           # rewrite *_pb2.py, *_pb2.pyi (and *_pb2_grpc.py under frakpy/cri/)
    python tools/gen_protos.py --check   # regenerate into a temp dir; exit 1 listing stale files

Every ``frakpy/**/*.proto`` gets message stubs and ``.pyi`` type stubs. Only protos under
``frakpy/cri/`` get gRPC stubs (``api.proto``, CRI ``runtime.v1``, and ``frakpy.proto``, our own
``frakpy.v1`` services on the same socket): the guest agent speaks ttrpc, so its protos are
messages only.
Protos are compiled with ``-I .`` from the repository root, so generated imports are
package-absolute (``from frakpy.cri.proto import api_pb2``).

The output depends only on the proto sources and the grpcio-tools version (pinned by the venv),
so ``--check`` is byte-exact.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "frakpy"
GRPC_DIRS = ("frakpy/cri/",)
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def find_protos(root: Path = ROOT) -> list[str]:
    """Repo-relative POSIX paths of all project protos, sorted for a stable order."""
    return sorted(p.relative_to(root).as_posix() for p in (root / PACKAGE).rglob("*.proto"))


def wants_grpc(proto: str) -> bool:
    return proto.startswith(GRPC_DIRS)


def outputs_for(proto: str) -> list[str]:
    stem = proto[: -len(".proto")]
    outs = [f"{stem}_pb2.py", f"{stem}_pb2.pyi"]
    if wants_grpc(proto):
        outs.append(f"{stem}_pb2_grpc.py")
    return outs


def _well_known_include() -> str:
    import grpc_tools

    return str(Path(grpc_tools.__file__).parent / "_proto")


def generate(out_dir: Path, protos: list[str], root: Path = ROOT) -> None:
    """Compile ``protos`` (repo-relative) into ``out_dir``, mirroring the repo layout."""
    include = _well_known_include()
    plain = [p for p in protos if not wants_grpc(p)]
    grpc_ones = [p for p in protos if wants_grpc(p)]
    base = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "-I.",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
    ]
    runs = []
    if plain:
        runs.append(base + plain)
    if grpc_ones:
        runs.append(base + [f"--grpc_python_out={out_dir}"] + grpc_ones)
    env = dict(os.environ, PYTHONHASHSEED="0")
    for cmd in runs:
        res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env)
        if res.returncode != 0:
            raise SystemExit(f"protoc failed:\n  {' '.join(cmd)}\n{res.stderr.strip()}")


def existing_generated(root: Path = ROOT) -> set[str]:
    found: set[str] = set()
    for suffix in GENERATED_SUFFIXES:
        found.update(p.relative_to(root).as_posix() for p in (root / PACKAGE).rglob(f"*{suffix}"))
    return found


def check(root: Path = ROOT) -> list[str]:
    """Return a sorted list of problems: stale, missing or orphaned generated files."""
    protos = find_protos(root)
    expected = {out for p in protos for out in outputs_for(p)}
    problems = []
    with tempfile.TemporaryDirectory(prefix="frakpy-protos-") as tmp:
        generate(Path(tmp), protos, root)
        for rel in sorted(expected):
            fresh = Path(tmp, rel)
            current = root / rel
            if not fresh.exists():
                problems.append(f"{rel}: protoc did not produce it")
            elif not current.exists():
                problems.append(f"{rel}: missing")
            elif current.read_bytes() != fresh.read_bytes():
                problems.append(f"{rel}: stale")
    for rel in sorted(existing_generated(root) - expected):
        problems.append(f"{rel}: no matching .proto (orphan)")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if any generated file is out of date")
    args = ap.parse_args(argv)

    if args.check:
        problems = check()
        for line in problems:
            print(line)
        if problems:
            print("generated stubs are out of date: run `python tools/gen_protos.py`", file=sys.stderr)
            return 1
        print(f"stubs up to date ({len(find_protos())} protos)")
        return 0

    protos = find_protos()
    generate(ROOT, protos)
    for p in protos:
        print(f"generated {', '.join(outputs_for(p))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
