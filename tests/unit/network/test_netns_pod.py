"""netns helpers and PodNetwork rollback, with fake CNI plugins (root: real netns)."""

import json
import os

import pytest

from frakpy.errors import InvalidArgument, NotFound
from frakpy.network import netns
from frakpy.network.cni import CNIError
from frakpy.network.pod import PodNetwork

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")


def test_names():
    assert netns.name_for("0123456789abcdef0123") == "frakpy-0123456789ab"
    with pytest.raises(InvalidArgument):
        netns.name_for("../etc")


@requires_root
def test_create_enter_delete(netns_dir):
    run_dir = netns_dir
    path = netns.create("frakpy-unit1", run_dir)
    try:
        assert netns.list_names(run_dir=run_dir) == ["frakpy-unit1"]
        inside = netns.run_in(path, lambda: os.readlink("/proc/thread-self/ns/net"))
        assert inside != os.readlink("/proc/thread-self/ns/net")
        assert inside == f"net:[{os.stat(path).st_ino}]"
        with pytest.raises(Exception, match="already exists"):
            netns.create("frakpy-unit1", run_dir)
    finally:
        assert netns.delete("frakpy-unit1", run_dir) is True
    assert netns.delete("frakpy-unit1", run_dir) is False
    assert netns.list_names(run_dir=run_dir) == []


def _pod(fake_cni, tmp_path, netns_dir):
    return PodNetwork(
        str(fake_cni.conf), [str(fake_cni.bin)], state_dir=str(tmp_path / "state"), netns_dir=netns_dir
    )


def _chain(*plugins):
    return {"cniVersion": "1.0.0", "name": "unitnet", "plugins": list(plugins)}


@requires_root
async def test_setup_failure_mid_chain_unwinds(fake_cni, tmp_path, netns_dir):
    fake_cni.install("loopback", "fakea", "fakeb")
    fake_cni.write_conf(
        "10.conflist", _chain({"type": "fakea"}, {"type": "fakeb", "fail": {"ADD": {"code": 5, "msg": "io"}}})
    )
    pn = _pod(fake_cni, tmp_path, netns_dir)
    with pytest.raises(CNIError, match="io"):
        await pn.setup("aaaasandbox000001", "p", "ns", "uid")
    calls = [(c["type"], c["env"]["CNI_COMMAND"]) for c in fake_cni.calls()]
    assert calls == [
        ("loopback", "ADD"),
        ("fakea", "ADD"),
        ("fakeb", "ADD"),
        ("fakeb", "DEL"),
        ("fakea", "DEL"),
        ("loopback", "DEL"),
    ]
    assert netns.list_names(run_dir=netns_dir) == []
    assert os.listdir(tmp_path / "state") == []


@requires_root
async def test_setup_failure_at_tap_unwinds_and_orphans(fake_cni, tmp_path, netns_dir):
    # fake plugins create no eth0, so the tap step fails after a successful ADD
    fake_cni.install("loopback", "fakea")
    fake_cni.write_conf("10.conflist", _chain({"type": "fakea"}))
    pn = _pod(fake_cni, tmp_path, netns_dir)
    with pytest.raises(NotFound, match="interface eth0 not found"):
        await pn.setup("bbbbsandbox000002", "p", "ns", "uid")
    dels = [c for c in fake_cni.calls() if c["env"]["CNI_COMMAND"] == "DEL" and c["type"] == "fakea"]
    assert len(dels) == 1 and dels[0]["stdin"]["prevResult"]["ips"][0]["address"] == "10.9.0.2/24"
    assert netns.list_names(run_dir=netns_dir) == []

    # an orphan: netns + state file left by a "crashed" daemon
    name = netns.name_for("ccccsandbox000003")
    netns.create(name, netns_dir)
    known = netns.create(netns.name_for("ddddsandbox000004"), netns_dir)
    from frakpy.network.cni import Attachment, NetworkConfigList, RuntimeConf

    att = Attachment(
        NetworkConfigList.from_dict(_chain({"type": "fakea"})),
        RuntimeConf("ccccsandbox000003", "x"),
        {"cniVersion": "1.0.0"},
        True,
    )
    pn._write_state(name, att)
    cleaned = await pn.cleanup_orphans(["ddddsandbox000004"])
    assert cleaned == [name]
    last = fake_cni.calls()[-2]
    assert last["env"]["CNI_CONTAINERID"] == "ccccsandbox000003" and last["stdin"]["prevResult"] == {
        "cniVersion": "1.0.0"
    }
    assert netns.list_names(run_dir=netns_dir) == [os.path.basename(known)]
    # teardown of the known one without cached JSON falls back to the current config; idempotent
    await pn.teardown("ddddsandbox000004")
    await pn.teardown("ddddsandbox000004")
    assert netns.list_names(run_dir=netns_dir) == []
    assert json.loads(json.dumps(os.listdir(tmp_path / "state"))) == []
