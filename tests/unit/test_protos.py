"""The generated stubs match their protos, and our CRI proto matches upstream CRI v1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECKER = REPO.parent / "shared" / "tools" / "cri_proto_check.py"


def test_generated_stubs_are_fresh() -> None:
    res = subprocess.run(
        [sys.executable, "tools/gen_protos.py", "--check"], cwd=REPO, capture_output=True, text=True
    )
    assert res.returncode == 0, f"stale stubs, run `python tools/gen_protos.py`:\n{res.stdout}{res.stderr}"


@pytest.mark.skipif(not CHECKER.exists(), reason=f"CRI checker not found at {CHECKER} (needs ../shared)")
def test_cri_proto_is_compatible_with_upstream() -> None:
    res = subprocess.run(
        [sys.executable, str(CHECKER), "frakpy/cri/proto/api.proto", "--strict"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "compatible" in res.stdout and "NOT compatible" not in res.stdout


def test_cri_stubs_import_package_absolute() -> None:
    from frakpy.cri.proto import api_pb2, api_pb2_grpc

    assert api_pb2.DESCRIPTOR.package == "runtime.v1"
    assert hasattr(api_pb2_grpc, "RuntimeServiceStub") and hasattr(api_pb2_grpc, "ImageServiceServicer")


def test_frakpy_service_is_its_own_package() -> None:
    from frakpy.cri.proto import api_pb2, frakpy_pb2, frakpy_pb2_grpc

    assert frakpy_pb2.DESCRIPTOR.package == "frakpy.v1"
    assert frakpy_pb2.DESCRIPTOR.services_by_name["Progress"].methods_by_name["WatchPull"].server_streaming
    assert hasattr(frakpy_pb2_grpc, "ProgressStub") and hasattr(frakpy_pb2_grpc, "add_ProgressServicer_to_server")
    assert list(api_pb2.DESCRIPTOR.dependencies) == [] or all(
        d.package != "frakpy.v1" for d in api_pb2.DESCRIPTOR.dependencies
    )


def test_check_reports_stale_missing_and_orphan_files(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import gen_protos
    finally:
        sys.path.pop(0)
    pkg = tmp_path / "frakpy" / "x"
    pkg.mkdir(parents=True)
    (pkg / "a.proto").write_text('syntax = "proto3";\npackage t;\nmessage A { string s = 1; }\n')
    gen_protos.generate(tmp_path, gen_protos.find_protos(tmp_path), tmp_path)
    assert gen_protos.check(tmp_path) == []
    (pkg / "a.proto").write_text('syntax = "proto3";\npackage t;\nmessage A { string s = 2; }\n')
    (pkg / "a_pb2.pyi").unlink()
    (pkg / "gone_pb2.py").write_text("")
    assert gen_protos.check(tmp_path) == [
        "frakpy/x/a_pb2.py: stale",
        "frakpy/x/a_pb2.pyi: missing",
        "frakpy/x/gone_pb2.py: no matching .proto (orphan)",
    ]
