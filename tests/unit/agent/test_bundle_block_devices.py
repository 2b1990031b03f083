"""frakpy_guest.bundle: CRI raw block volumes (``io.frakpy.block-devices``) in the guest spec."""

from __future__ import annotations

import json
import os

import pytest
from frakpy_guest import bundle

from frakpy.agent.protocol import guestpaths as gp


def _spec(entries: object) -> dict:  # type: ignore[type-arg]
    return {"process": {"args": ["true"]}, "annotations": {gp.ANN_BLOCK_DEVICES: json.dumps(entries), "keep": "1"},
            "linux": {"resources": {"devices": [{"allow": False, "access": "rwm"}]}}}


def _prepare(spec: dict, disks: dict[str, str]) -> None:  # type: ignore[type-arg]
    bundle.prepare(spec, rootfs="/r", sandbox_pid=lambda: 1, container_pid=lambda _: None, block_devices=disks)


def test_block_device_gets_the_guest_node_and_a_cgroup_rule(block_device: str) -> None:
    node = block_device
    rdev = os.stat(node).st_rdev
    major, minor = os.major(rdev), os.minor(rdev)
    spec = _spec([{"serial": "dev-abc-0", "path": "/dev/xvda", "access": "rm"}])
    assert bundle.block_device_requests(spec) == [{"serial": "dev-abc-0", "path": "/dev/xvda", "access": "rm"}]
    _prepare(spec, {"dev-abc-0": node})
    assert spec["annotations"] == {"keep": "1"}  # consumed
    [dev] = spec["linux"]["devices"]
    assert dev["path"] == "/dev/xvda" and dev["type"] == "b"
    assert (dev["major"], dev["minor"], dev["uid"], dev["gid"]) == (major, minor, 0, 0)
    assert spec["linux"]["resources"]["devices"][-1] == {"allow": True, "type": "b", "major": major,
                                                         "minor": minor, "access": "rm"}


def test_missing_disk_or_not_a_block_device_is_a_precondition(tmp_path) -> None:  # type: ignore[no-untyped-def]
    entries = [{"serial": "dev-abc-0", "path": "/dev/xvda", "access": "rwm"}]
    with pytest.raises(bundle.PreconditionError, match="no disk with serial dev-abc-0"):
        _prepare(_spec(entries), {})
    (tmp_path / "sdb").touch()
    with pytest.raises(bundle.PreconditionError, match="not a block device"):
        _prepare(_spec(entries), {"dev-abc-0": str(tmp_path / "sdb")})


@pytest.mark.parametrize("entries", [{"a": 1}, [{"path": "/dev/x"}], [{"serial": "s", "path": "x"}],
                                     [{"serial": "s", "path": "/dev/x", "access": "rwx"}]])
def test_malformed_annotation_is_a_spec_error(entries: object) -> None:
    with pytest.raises(bundle.SpecError, match=gp.ANN_BLOCK_DEVICES):
        bundle.block_device_requests(_spec(entries))
