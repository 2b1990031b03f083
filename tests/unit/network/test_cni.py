import json

import pytest

from frakpy.errors import FailedPrecondition, InvalidArgument, Unavailable
from frakpy.network.cni import (
    CNI,
    Attachment,
    CNIError,
    CNIResult,
    DNSConfig,
    NetworkConfigList,
    PortMapping,
    RuntimeConf,
    capability_args,
    format_cni_args,
    k8s_args,
    load_network,
    plugin_error,
)
from frakpy.network.defaults import default_conflist, install_default


def chain(*plugins, version="1.0.0", **extra):
    return {"cniVersion": version, "name": "testnet", "plugins": list(plugins), **extra}


def rt(netns="/nonexistent/netns", caps=None):
    return RuntimeConf(
        container_id="sb1234567890abcdef",
        netns=netns,
        args=k8s_args("default", "web-0", "sb1234567890abcdef", "uid-9"),
        capability_args=caps or {},
    )


# ------------------------------------------------------------------------------------ loading


def test_first_file_by_lexical_name_wins(fake_cni):
    fake_cni.write_conf("20-b.conflist", chain({"type": "b"}))
    fake_cni.write_conf("10-a.conf", {"cniVersion": "0.4.0", "name": "single", "type": "a"})
    fake_cni.write_conf("00-ignored.txt", "not a config")
    net = load_network(str(fake_cni.conf))
    assert net.name == "single"
    assert net.cni_version == "0.4.0"
    assert [p["type"] for p in net.plugins] == ["a"]  # .conf wrapped as a one-plugin list
    assert net.source.endswith("10-a.conf")


def test_conflist_fields(fake_cni):
    fake_cni.write_conf("a.conflist", chain({"type": "x"}, {"type": "y"}, version="0.4.0", disableCheck=True))
    net = load_network(str(fake_cni.conf))
    assert (net.name, net.cni_version, net.disable_check) == ("testnet", "0.4.0", True)
    assert net.version == (0, 4, 0)
    assert [p["type"] for p in net.plugins] == ["x", "y"]


def test_missing_version_means_010():
    net = NetworkConfigList.from_dict({"name": "n", "type": "x"}, single=True)
    assert net.cni_version == "0.1.0"


@pytest.mark.parametrize(
    "fname,doc,needle",
    [
        ("a.conflist", "{nope", "not valid JSON"),
        ("a.conflist", {"cniVersion": "1.0.0", "name": "n", "plugins": []}, "has no plugins"),
        ("a.conflist", {"cniVersion": "1.0.0", "plugins": [{"type": "x"}]}, 'missing network "name"'),
        ("a.conflist", chain({"ipam": {}}), 'plugin #0 has no "type"'),
        ("a.json", chain({"type": "x"}), "rename it to end in .conflist"),
        ("a.conf", {"cniVersion": "1.0.0", "name": "n"}, "network type not found"),
        ("a.conf", {"cniVersion": "one", "name": "n", "type": "x"}, "is not a version"),
    ],
)
def test_bad_configs(fake_cni, fname, doc, needle):
    fake_cni.write_conf(fname, doc)
    with pytest.raises(FailedPrecondition) as ei:
        load_network(str(fake_cni.conf))
    assert needle in ei.value.message
    assert fname in ei.value.message


def test_empty_dir(tmp_path):
    with pytest.raises(FailedPrecondition, match="no CNI network config"):
        load_network(str(tmp_path / "missing"))


def test_status(fake_cni):
    cni = CNI(str(fake_cni.conf), [str(fake_cni.bin)])
    ready, reason, msg = cni.status()
    assert not ready and reason == "NetworkPluginNotReady" and str(fake_cni.conf) in msg

    fake_cni.write_conf("10.conflist", "{broken")
    ready, reason, msg = cni.status()
    assert not ready and reason == "NetworkPluginNotReady" and "not valid JSON" in msg

    fake_cni.write_conf("10.conflist", chain({"type": "fakea"}))
    ready, reason, msg = cni.status()
    assert not ready and "'loopback' not found" in msg  # loopback is required too

    fake_cni.install("loopback")
    ready, reason, msg = cni.status()
    assert not ready and "'fakea' not found" in msg and str(fake_cni.bin) in msg

    fake_cni.install("fakea")
    assert cni.status() == (True, "", "")


def test_bin_dir_search_order(fake_cni, tmp_path):
    second = tmp_path / "second"
    second.mkdir()
    fake_cni.install("p")
    (second / "p").write_text("#!/bin/sh\n")
    (second / "p").chmod(0o755)
    cni = CNI(str(fake_cni.conf), [str(tmp_path / "nothing"), str(second), str(fake_cni.bin)])
    assert cni.find_plugin("p") == str(second / "p")
    with pytest.raises(FailedPrecondition):
        cni.find_plugin("../p")


def test_install_default_only_when_empty(tmp_path):
    conf = tmp_path / "net.d"
    path = install_default(str(conf))
    assert path and path.endswith("10-frakpy.conflist")
    net = load_network(str(conf))
    assert net.name == "frakpy"
    assert [p["type"] for p in net.plugins] == ["bridge", "portmap"]
    bridge = net.plugins[0]
    assert bridge["bridge"] == "frakpy0" and bridge["isGateway"] is True and bridge["ipMasq"] is False
    assert net.plugins[1]["capabilities"] == {"portMappings": True}
    assert install_default(str(conf)) is None  # never twice
    (conf / "10-frakpy.conflist").unlink()
    (conf / "99-other.conf").write_text(json.dumps({"cniVersion": "1.0.0", "name": "o", "type": "x"}))
    assert install_default(str(conf)) is None
    assert [p.name for p in conf.iterdir()] == ["99-other.conf"]


def test_default_conflist_test_params():
    doc = default_conflist(
        name="t", bridge="frtest0", subnet="10.250.1.0/24", data_dir="/tmp/x", portmap=False
    )
    assert doc["plugins"][0]["ipam"]["dataDir"] == "/tmp/x"
    assert len(doc["plugins"]) == 1


# --------------------------------------------------------------------------- args and stdin


def test_cni_args_format():
    args = k8s_args("kube-system", "coredns-1", "abc", "u-1")
    assert format_cni_args(args) == (
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-1;"
        "K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1"
    )
    with pytest.raises(InvalidArgument):
        format_cni_args([("K", "a;b")])


def test_capability_args_and_injection():
    caps = capability_args(
        [PortMapping(80, 8080, "TCP"), PortMapping(53, 0, "UDP"), PortMapping(443, 8443, "tcp", "127.0.0.1")],
        DNSConfig(servers=["10.96.0.10"], searches=["svc.cluster.local"], options=["ndots:5"]),
    )
    assert caps["portMappings"] == [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 8443, "containerPort": 443, "protocol": "tcp", "hostIP": "127.0.0.1"},
    ]
    assert caps["dns"] == {
        "servers": ["10.96.0.10"],
        "searches": ["svc.cluster.local"],
        "options": ["ndots:5"],
    }
    net = NetworkConfigList.from_dict(chain({"type": "a"}))
    r = rt(caps=caps)
    with_caps = {
        "type": "portmap",
        "capabilities": {"portMappings": True, "dns": False},
        "runtimeConfig": {"x": 1},
    }
    conf = CNI.plugin_stdin(net, with_caps, r, {"cniVersion": "1.0.0"})
    assert conf["name"] == "testnet" and conf["cniVersion"] == "1.0.0"
    assert conf["runtimeConfig"] == {"portMappings": caps["portMappings"]}
    assert conf["prevResult"] == {"cniVersion": "1.0.0"}
    conf = CNI.plugin_stdin(net, {"type": "bridge"}, r, None)
    assert "runtimeConfig" not in conf and "prevResult" not in conf


async def test_add_env_and_prev_result_chaining(fake_cni):
    fake_cni.install("fakea", "fakeb")
    net = NetworkConfigList.from_dict(
        chain({"type": "fakea", "k": 1}, {"type": "fakeb", "capabilities": {"portMappings": True}})
    )
    caps = capability_args([PortMapping(80, 8080)])
    cni = CNI(str(fake_cni.conf), [str(fake_cni.bin), "/x"])
    result = await cni.add(net, rt(netns="/run/netns/frakpy-x", caps=caps))
    calls = fake_cni.calls()
    assert [c["type"] for c in calls] == ["fakea", "fakeb"]
    env = calls[0]["env"]
    assert env["CNI_COMMAND"] == "ADD"
    assert env["CNI_CONTAINERID"] == "sb1234567890abcdef"
    assert env["CNI_NETNS"] == "/run/netns/frakpy-x"
    assert env["CNI_IFNAME"] == "eth0"
    assert env["CNI_ARGS"].startswith("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;")
    assert env["CNI_PATH"] == f"{fake_cni.bin}:/x"
    assert "prevResult" not in calls[0]["stdin"] and "runtimeConfig" not in calls[0]["stdin"]
    assert calls[0]["stdin"]["k"] == 1
    first_out = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:00", "sandbox": "/run/netns/frakpy-x"}],
        "ips": [{"address": "10.9.0.2/24", "gateway": "10.9.0.1", "interface": 0}],
    }
    assert calls[1]["stdin"]["prevResult"] == first_out
    assert calls[1]["stdin"]["runtimeConfig"] == {"portMappings": caps["portMappings"]}
    assert len(result["ips"]) == 2


async def test_del_reverse_with_cached_result_and_best_effort(fake_cni):
    fake_cni.install("fakea", "fakeb", "fakec")
    net = NetworkConfigList.from_dict(
        chain(
            {"type": "fakea", "fail": {"DEL": {"code": 7, "msg": "bad a"}}},
            {"type": "fakeb"},
            {"type": "fakec", "crash": {"DEL": "panic: c broke"}},
        )
    )
    cached = {"cniVersion": "1.0.0", "ips": [{"address": "10.9.0.2/24"}]}
    cni = CNI(str(fake_cni.conf), [str(fake_cni.bin)])
    with pytest.raises(CNIError) as ei:
        await cni.delete(net, rt(netns="/does/not/exist"), cached)
    calls = fake_cni.calls()
    assert [c["type"] for c in calls] == ["fakec", "fakeb", "fakea"]  # every plugin ran, reversed
    assert all(c["stdin"]["prevResult"] == cached for c in calls)
    assert all(c["env"]["CNI_NETNS"] == "" for c in calls)  # vanished netns tolerated
    err = ei.value
    assert isinstance(err, Unavailable)
    assert len(err.errors) == 2
    assert "panic: c broke" in err.message and "bad a" in err.message
    assert err.errors[1].cni_code == 7 and err.errors[1].cni_msg == "bad a"


async def test_del_without_prev_result_before_040(fake_cni):
    fake_cni.install("fakea")
    net = NetworkConfigList.from_dict(chain({"type": "fakea"}, version="0.3.1"))
    await CNI(str(fake_cni.conf), [str(fake_cni.bin)]).delete(net, rt(), {"cniVersion": "0.3.1"})
    assert "prevResult" not in fake_cni.calls()[0]["stdin"]


async def test_check(fake_cni):
    fake_cni.install("fakea", "fakeb")
    cni = CNI(str(fake_cni.conf), [str(fake_cni.bin)])
    net = NetworkConfigList.from_dict(chain({"type": "fakea"}, {"type": "fakeb"}))
    cached = {"cniVersion": "1.0.0"}
    await cni.check(net, rt(), cached)
    calls = fake_cni.calls()
    assert [(c["type"], c["env"]["CNI_COMMAND"]) for c in calls] == [("fakea", "CHECK"), ("fakeb", "CHECK")]
    assert calls[0]["stdin"]["prevResult"] == cached
    off = NetworkConfigList.from_dict(chain({"type": "fakea"}, disableCheck=True))
    await cni.check(off, rt(), cached)
    assert len(fake_cni.calls()) == 2
    with pytest.raises(FailedPrecondition, match="needs 0.4.0"):
        await cni.check(NetworkConfigList.from_dict(chain({"type": "fakea"}, version="0.3.1")), rt(), cached)


async def test_add_error_verbatim_and_chain_stops(fake_cni):
    fake_cni.install("fakea", "fakeb", "fakec")
    err_doc = {"code": 11, "msg": "no IP addresses available in range set", "details": "range 10.9.0.0/24"}
    net = NetworkConfigList.from_dict(
        chain({"type": "fakea"}, {"type": "fakeb", "fail": {"ADD": err_doc}}, {"type": "fakec"})
    )
    with pytest.raises(CNIError) as ei:
        await CNI(str(fake_cni.conf), [str(fake_cni.bin)]).add(net, rt())
    e = ei.value
    assert (e.cni_code, e.cni_msg, e.details) == (11, err_doc["msg"], err_doc["details"])
    assert (e.plugin, e.command, e.network) == ("fakeb", "ADD", "testnet")
    assert e.code == "UNAVAILABLE"
    assert "fakeb" in e.message and "try again later" in e.message
    assert [c["type"] for c in fake_cni.calls()] == ["fakea", "fakeb"]


async def test_missing_plugin_and_timeout(fake_cni):
    fake_cni.install("slow")
    cni = CNI(str(fake_cni.conf), [str(fake_cni.bin)], timeout=0.5)
    with pytest.raises(CNIError, match="'absent' not found"):
        await cni.add(NetworkConfigList.from_dict(chain({"type": "absent"})), rt())
    with pytest.raises(CNIError, match="timed out after 0.5s"):
        await cni.add(NetworkConfigList.from_dict(chain({"type": "slow", "sleep": 5})), rt())


def test_plugin_error_parsing():
    e = plugin_error(
        plugin="bridge",
        command="ADD",
        network="n",
        returncode=1,
        stdout=b'{"cniVersion":"1.0.0","code":999,"msg":"custom","details":"d"}',
        stderr=b"",
    )
    assert (e.cni_code, e.cni_msg, e.details) == (999, "custom", "d")
    e = plugin_error(plugin="b", command="DEL", network="n", returncode=3, stdout=b"", stderr=b"")
    assert e.cni_code is None and "exited with status 3" in e.message


# ------------------------------------------------------------------------------------ results


RESULT_040 = {
    "cniVersion": "0.4.0",
    "interfaces": [
        {"name": "cni0", "mac": "aa:aa:aa:aa:aa:aa"},
        {"name": "veth1", "mac": "bb:bb:bb:bb:bb:bb"},
        {"name": "eth0", "mac": "cc:cc:cc:cc:cc:cc", "sandbox": "/run/netns/frakpy-x"},
    ],
    "ips": [
        {"version": "4", "interface": 2, "address": "10.88.0.5/16", "gateway": "10.88.0.1"},
        {"version": "6", "interface": 2, "address": "fd00::5/64", "gateway": "fd00::1"},
        {"version": "4", "interface": 0, "address": "10.88.0.1/16"},
    ],
    "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.0.0.0/8", "gw": "10.88.0.254"}],
    "dns": {"nameservers": ["10.88.0.1"], "domain": "cluster.local", "search": ["a"], "options": ["ndots:2"]},
}


def test_parse_040():
    r = CNIResult.from_dict(RESULT_040)
    assert r.cni_version == "0.4.0"
    idx, itf = r.sandbox_interface()
    assert idx == 2 and itf.mac == "cc:cc:cc:cc:cc:cc"
    ips = r.ips_for("eth0")
    assert [(i.ip, i.prefixlen, i.version, i.gateway) for i in ips] == [
        ("10.88.0.5", 16, 4, "10.88.0.1"),
        ("fd00::5", 64, 6, "fd00::1"),
    ]
    assert r.routes[1].gw == "10.88.0.254"
    assert r.dns.nameservers == ["10.88.0.1"] and r.dns.domain == "cluster.local"


def test_parse_100_and_roundtrip():
    doc = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "cc:cc:cc:cc:cc:cc", "mtu": 1400, "sandbox": "/n"}],
        "ips": [{"address": "10.1.2.3/24", "gateway": "10.1.2.1", "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.2.1", "mtu": 1400, "priority": 10}],
    }
    r = CNIResult.from_dict(doc)
    assert r.interfaces[0].mtu == 1400 and r.ips[0].version == 4 and r.routes[0].priority == 10
    assert CNIResult.from_json(r.to_json()).raw == doc


def test_parse_020():
    r = CNIResult.from_dict(
        {
            "cniVersion": "0.2.0",
            "ip4": {"ip": "10.1.0.5/16", "gateway": "10.1.0.1", "routes": [{"dst": "0.0.0.0/0"}]},
        }
    )
    assert r.ips[0].ip == "10.1.0.5" and r.ips[0].gateway == "10.1.0.1" and r.routes[0].dst == "0.0.0.0/0"


def test_attachment_roundtrip():
    net = NetworkConfigList.from_dict(chain({"type": "bridge"}, {"type": "portmap"}, disableCheck=True))
    a = Attachment(
        net, rt(netns="/run/netns/frakpy-x", caps={"portMappings": [{"hostPort": 1}]}), RESULT_040, True
    )
    b = Attachment.from_json(a.to_json())
    assert b.network.to_dict() == net.to_dict()
    assert b.runtime == a.runtime
    assert b.result == RESULT_040 and b.loopback
    assert b.parsed_result.ips[0].ip == "10.88.0.5"
    with pytest.raises(InvalidArgument, match="cached CNI attachment"):
        Attachment.from_json('{"x": 1}')
