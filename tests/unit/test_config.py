import tomllib

import pytest

from frakpy import config as cfgmod
from frakpy.errors import InvalidArgument


def test_default_file_parses_back_to_defaults():
    text = cfgmod.render_default()
    assert cfgmod.parse(tomllib.loads(text)) == cfgmod.Config()


def test_every_key_is_documented():
    text = cfgmod.render_default()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if " = " in line and not line.startswith("#"):
            assert lines[i - 1].startswith("#"), f"key without a doc comment: {line}"


def test_missing_default_file_means_defaults(tmp_path, monkeypatch):
    monkeypatch.setattr(cfgmod, "DEFAULT_PATH", tmp_path / "nope.toml")
    assert cfgmod.load() == cfgmod.Config()


def test_explicit_missing_file_is_an_error(tmp_path):
    with pytest.raises(InvalidArgument, match="does not exist"):
        cfgmod.load(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("[daemon]\nsockt = 'x'\n", "daemon.sockt is unknown"),
        ("[bogus]\n", "bogus is unknown"),
        ("[daemon]\nlog_level = 'loud'\n", "daemon.log_level"),
        ("[handlers.big]\nvcpus = 'two'\n", "handlers.big.vcpus: expected an integer"),
        ("[handlers.big]\nvcpus = 0\n", "handlers.big.vcpus"),
        ("[handlers.big]\nmemory_mib = 128\nturbo = true\n", "handlers.big.turbo is unknown"),
        ("[handlers.big]\naccelerator = 'hvf'\n", "handlers.big.accelerator"),
        ("[daemon]\ndefault_handler = 'nope'\n", "daemon.default_handler"),
        ("[daemon]\nsocket_mode = '0999'\n", "daemon.socket_mode"),
        ("[cni]\nbin_dirs = '/opt/cni/bin'\n", "cni.bin_dirs"),
        ("[daemon\n", "config file"),
        ("[handlers.vs]\nvsock_port = 0\n", "handlers.vs.vsock_port: 0 is below the minimum 1"),
        ("[handlers.vs]\nvsock_port = 4294967295\n", "handlers.vs.vsock_port: 4294967295 is above the maximum"),
        ("[handlers.vs]\nvsock_port = '1024'\n", "handlers.vs.vsock_port: expected an integer"),
        ("[handlers.vs]\nagent_transport = 'hvsock'\n", "handlers.vs.agent_transport"),
    ],
)
def test_bad_values_name_the_key(tmp_path, toml, needle):
    p = tmp_path / "c.toml"
    p.write_text(toml)
    with pytest.raises(InvalidArgument) as exc:
        cfgmod.load(p)
    assert needle in str(exc.value)


def test_handlers_add_to_the_default(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[handlers.large]\nvcpus = 2\nmemory_mib = 1024\n")
    cfg = cfgmod.load(p)
    assert set(cfg.handlers) == {"frakpy", "large"}
    assert cfg.handler("large").vcpus == 2
    assert cfg.handler("").vcpus == 1  # empty handler name means the default
    with pytest.raises(InvalidArgument, match="unknown runtime handler 'gpu'"):
        cfg.handler("gpu")


def test_int_accepted_for_float(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[handlers.frakpy]\nboot_timeout_s = 10\n")
    assert cfgmod.load(p).handler("frakpy").boot_timeout_s == 10.0


def test_vsock_port_reaches_the_handler(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[handlers.vs]\nagent_transport = 'vsock'\nvsock_port = 5000\n")
    h = cfgmod.load(p).handler("vs")
    assert (h.agent_transport, h.vsock_port) == ("vsock", 5000)
    assert cfgmod.Config().handler("").vsock_port == 1024
