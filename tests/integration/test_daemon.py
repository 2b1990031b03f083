"""frakpyd as a real subprocess: the CRI basics, socket ownership, clean shutdown."""

from __future__ import annotations

import json
import signal
import stat

import grpc
import pytest

from frakpy.cri.client import CRIError
from frakpy.cri.proto import api_pb2 as pb

from .daemon_fixture import cleanup_host, short_tmpdir, start, stop, write_config


@pytest.fixture(scope="module")
def daemon():
    base = short_tmpdir()
    d = start(base, write_config(base, cni=False))
    try:
        yield d
    finally:
        stop(d)
        cleanup_host(base)


def test_version(daemon):
    with daemon.client() as c:
        v = c.call(c.runtime.Version, pb.VersionRequest(version="0.1.0"))
    assert v.runtime_name == "frakpy"
    assert v.runtime_api_version == "v1"
    assert v.runtime_version


def test_status_conditions_and_handlers(daemon):
    with daemon.client() as c:
        st = c.call(c.runtime.Status, pb.StatusRequest(verbose=True))
    conds = {cond.type: cond for cond in st.status.conditions}
    assert set(conds) == {"RuntimeReady", "NetworkReady"}
    # no CNI config in the test's conf dir: the network is honestly not ready, with a reason
    assert conds["NetworkReady"].status is False
    assert conds["NetworkReady"].reason == "NetworkPluginNotReady"
    assert str(daemon.socket.parent / "cni") in conds["NetworkReady"].message
    if not conds["RuntimeReady"].status:
        assert conds["RuntimeReady"].reason in {"GuestImageMissing", "QemuMissing"}
    assert [h.name for h in st.runtime_handlers] == ["frakpy"]
    cfg = json.loads(st.info["config"])
    assert cfg["daemon"]["socket"] == str(daemon.socket)
    assert json.loads(st.info["version"])["frakpy"]


def test_status_not_verbose_has_no_info(daemon):
    with daemon.client() as c:
        st = c.call(c.runtime.Status, pb.StatusRequest())
    assert dict(st.info) == {}


def test_runtime_config_and_update(daemon):
    with daemon.client() as c:
        rc = c.call(c.runtime.RuntimeConfig, pb.RuntimeConfigRequest())
        assert rc.linux.cgroup_driver == pb.CGROUPFS
        c.call(c.runtime.UpdateRuntimeConfig, pb.UpdateRuntimeConfigRequest(
            runtime_config=pb.RuntimeConfig(network_config=pb.NetworkConfig(pod_cidr="10.99.0.0/16"))))
        st = c.call(c.runtime.Status, pb.StatusRequest(verbose=True))
    assert json.loads(st.info["pod_cidr"]) == "10.99.0.0/16"


def test_unimplemented_rpc_names_itself(daemon):
    with daemon.client() as c, pytest.raises(CRIError) as exc:
        c.call(c.runtime.CheckpointContainer, pb.CheckpointContainerRequest(container_id="x"))
    assert exc.value.code == grpc.StatusCode.UNIMPLEMENTED
    assert "CheckpointContainer" in str(exc.value)


def test_socket_mode(daemon):
    assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o660


def test_second_daemon_on_same_socket_refuses(daemon):
    other = start(daemon.socket.parent, daemon.config, wait=False)
    rc = other.proc.wait(30)
    assert rc != 0
    assert "another frakpyd" in other.log_text()
    # the first one still answers
    with daemon.client() as c:
        c.call(c.runtime.Version, pb.VersionRequest())


def test_sigterm_removes_socket_and_stale_socket_is_replaced():
    base = short_tmpdir()
    d = start(base, write_config(base, cni=False))
    assert d.socket.exists()
    assert stop(d, signal.SIGTERM) == 0
    assert not d.socket.exists()
    # a daemon killed with SIGKILL leaves its socket file behind; the next one replaces it
    d = start(base, d.config)
    stop(d, signal.SIGKILL)
    assert d.socket.exists()
    d = start(base, d.config)
    with d.client() as c:
        c.call(c.runtime.Version, pb.VersionRequest())
    assert stop(d) == 0
    cleanup_host(base)


def test_bad_config_stops_startup_naming_the_key():
    base = short_tmpdir()
    d = start(base, write_config(base, "[handlers.big]\nvcpus = 'lots'\n", cni=False), wait=False)
    assert d.proc.wait(30) == 2
    assert "handlers.big.vcpus" in d.log_text()
    cleanup_host(base)
