from frakpy_guest import ipconf

CONFIG = {
    "mac": "02:00:00:00:00:01",
    "mtu": 1450,
    "addresses": [{"address": "10.1.0.5", "prefixlen": 24, "family": 4},
                  {"address": "fd00::5", "prefixlen": 64, "family": 6}],
    "routes": [{"dst": "0.0.0.0/0", "gateway": "10.1.0.1", "family": 4},
               {"dst": "10.1.0.0/24", "family": 4, "scope": "link"}],
}


def test_commands_order_and_shape():
    cmds = [" ".join(c[1:]) for c in ipconf.commands(CONFIG, "eth0")]
    assert cmds == [
        "link set lo up",
        "link set eth0 mtu 1450",
        "-4 addr add 10.1.0.5/24 dev eth0",
        "-6 addr add fd00::5/64 dev eth0",
        "link set eth0 up",
        "-4 route replace 10.1.0.0/24 dev eth0 scope link",  # link routes before gateway routes
        "-4 route replace 0.0.0.0/0 via 10.1.0.1 dev eth0",
    ]


def test_find_nic_by_mac(tmp_path):
    for name, mac in (("lo", "00:00:00:00:00:00"), ("eth0", "02:00:00:00:00:01")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "address").write_text(mac + "\n")
    assert ipconf.find_nic("02:00:00:00:00:01".upper(), str(tmp_path)) == "eth0"


def test_restored_vm_claims_the_template_nic(tmp_path):
    import pytest

    (tmp_path / "eth0").mkdir()
    (tmp_path / "eth0" / "address").write_text("02:46:52:4b:00:01\n")
    cfg = dict(CONFIG, nic_mac="02:46:52:4b:00:01")
    assert ipconf.nic_for(cfg, str(tmp_path)) == ("eth0", True)  # must take the pod's MAC first
    (tmp_path / "eth0" / "address").write_text("02:00:00:00:00:01\n")
    assert ipconf.nic_for(cfg, str(tmp_path)) == ("eth0", False)  # already has it (re-applied)
    with pytest.raises(ipconf.IpconfError):
        ipconf.nic_for(CONFIG | {"mac": "02:00:00:00:00:99"}, str(tmp_path))
