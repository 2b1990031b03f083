"""Config files, endpoints, delegated subcommands and start-up cost."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest
from cri_fake import POD_WEB

from frakpy.cli.main import main
from frakpy.cri.client import resolve_endpoint

POD_YAML = """\
metadata:
  name: web
  namespace: default
  uid: u1
  attempt: 0
log_directory: /tmp/web
labels: {tier: front}
linux: {}
"""
POD_JSON = {
    "metadata": {"name": "x", "namespace": "default", "uid": "u1", "attempt": 0},
    "log_directory": "/tmp/x",
    "linux": {},
}
CTR_JSON = {
    "metadata": {"name": "app"},
    "image": {"image": "busybox"},
    "command": ["sleep", "60"],
    "envs": [{"key": "A", "value": "1"}],
    "log_path": "app.log",
}


def test_runp_yaml_with_runtime_handler(fake, capsys):
    path = fake.tmp / "pod.yaml"
    path.write_text(POD_YAML)
    assert fake.run("runp", "--runtime", "fast", str(path)) == 0
    assert capsys.readouterr().out.strip() == "newpod"
    req = fake.state.last("RunPodSandbox")
    assert req.runtime_handler == "fast"
    assert req.config.metadata.uid == "u1" and req.config.log_directory == "/tmp/web"
    assert dict(req.config.labels) == {"tier": "front"} and req.config.HasField("linux")


def test_runp_json_unknown_key_is_an_error(fake, capsys):
    path = fake.tmp / "pod.json"
    path.write_text(json.dumps({**POD_JSON, "log_dir": "/tmp/x"}))
    assert fake.run("runp", str(path)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"frakpy: {path}: ") and "log_dir" in err
    assert "RunPodSandbox" not in fake.state.names()


def test_config_wrong_type_and_bad_syntax(fake, capsys):
    bad_type = fake.tmp / "t.json"
    bad_type.write_text(json.dumps({"metadata": {"attempt": "many"}}))
    assert fake.run("runp", str(bad_type)) == 1
    assert "attempt" in capsys.readouterr().err
    bad_yaml = fake.tmp / "b.yaml"
    bad_yaml.write_text("metadata: [unclosed\n")
    assert fake.run("runp", str(bad_yaml)) == 1
    assert "not valid" in capsys.readouterr().err
    assert fake.run("runp", str(fake.tmp / "absent.json")) == 1
    assert "absent.json" in capsys.readouterr().err


def test_create_reads_both_configs(fake, capsys):
    ctr, pod = fake.tmp / "ctr.json", fake.tmp / "pod.json"
    ctr.write_text(json.dumps(CTR_JSON))
    pod.write_text(json.dumps(POD_JSON))
    assert fake.run("create", "aaaa1", str(ctr), str(pod)) == 0
    assert capsys.readouterr().out.strip() == "newctr"
    req = fake.state.last("CreateContainer")
    assert req.pod_sandbox_id == POD_WEB
    # env values are bytes in the reference CRI proto; config files give them as plain text
    assert list(req.config.command) == ["sleep", "60"] and req.config.envs[0].value == b"1"
    assert req.sandbox_config.metadata.name == "x"


def test_endpoint_forms(monkeypatch):
    monkeypatch.delenv("FRAKPY_SOCKET", raising=False)
    assert resolve_endpoint() == "unix:///run/frakpy/frakpy.sock"
    assert resolve_endpoint("unix:///x/y.sock") == "unix:///x/y.sock"
    assert resolve_endpoint("/x/y.sock") == "unix:///x/y.sock"
    monkeypatch.setenv("FRAKPY_SOCKET", "/env/s.sock")
    assert resolve_endpoint() == "unix:///env/s.sock"
    assert resolve_endpoint("/flag.sock") == "unix:///flag.sock"
    with pytest.raises(ValueError):
        resolve_endpoint("tcp://1.2.3.4:5")


def test_env_socket_is_used(fake, capsys, monkeypatch):
    monkeypatch.setenv("FRAKPY_SOCKET", fake.socket)
    assert main(["version"]) == 0
    assert "frakpy" in capsys.readouterr().out


def test_bad_endpoint_scheme(capsys):
    assert main(["-r", "tcp://h:1", "version"]) == 2
    assert "unsupported endpoint" in capsys.readouterr().err


def test_daemon_delegates_all_arguments(monkeypatch):
    seen = []
    mod = types.ModuleType("frakpy.daemon")
    mod.main = lambda args: seen.append(args) or 7
    monkeypatch.setitem(sys.modules, "frakpy.daemon", mod)
    assert main(["daemon", "--config", "/x.toml", "-v"]) == 7
    assert seen == [["--config", "/x.toml", "-v"]]


def _fake_config(monkeypatch, load):
    import frakpy
    from frakpy.errors import InvalidArgument

    mod = types.ModuleType("frakpy.config")
    mod.DEFAULT_PATH = "/etc/frakpy/config.toml"
    mod.render_default = lambda: "# defaults\n[daemon]\n"
    mod.load = load
    mod.InvalidArgument = InvalidArgument
    monkeypatch.setitem(sys.modules, "frakpy.config", mod)
    monkeypatch.setattr(frakpy, "config", mod, raising=False)


def test_config_default_and_check(monkeypatch, capsys):
    from frakpy.errors import InvalidArgument

    loaded = []
    _fake_config(monkeypatch, lambda path=None: loaded.append(path))
    assert main(["config", "default"]) == 0
    assert capsys.readouterr().out == "# defaults\n[daemon]\n"
    assert main(["config", "check", "--config", "/tmp/c.toml"]) == 0
    assert capsys.readouterr().out == "config OK: /tmp/c.toml\n" and loaded == ["/tmp/c.toml"]

    def bad(path=None):
        raise InvalidArgument("config key vm.vcpus: must be >= 1")

    _fake_config(monkeypatch, bad)
    assert main(["config", "check"]) == 2
    assert capsys.readouterr().err == "frakpy: config key vm.vcpus: must be >= 1\n"


def test_no_verb_prints_help(capsys):
    assert main([]) == 2
    assert "usage: frakpy" in capsys.readouterr().err


def test_help_does_not_import_grpc():
    code = (
        "import sys\n"
        "from frakpy.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = ('grpc', 'google.protobuf', 'frakpy.daemon', 'frakpy.config')\n"
        "bad = [m for m in heavy if m in sys.modules]\n"
        "print('LOADED', bad)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "LOADED []" in res.stdout, res.stdout
