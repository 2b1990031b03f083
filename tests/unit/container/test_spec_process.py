"""process.* of the spec: argv, env, cwd, terminal, user, stop signal."""

from __future__ import annotations

import json

import pytest

from frakpy.agent.protocol import guestpaths as gp
from frakpy.container.spec import DEFAULT_PATH, ImageConfig
from frakpy.errors import InvalidArgument
from tests.unit.container.cri import env, security, spec_for

ENTRY = ["/entry"]
CMD = ["img-cmd", "x"]


@pytest.mark.parametrize(
    ("entrypoint", "cmd", "command", "args", "expected"),
    [
        (ENTRY, CMD, [], [], ["/entry", "img-cmd", "x"]),  # image only
        (ENTRY, CMD, ["/bin/cri"], [], ["/bin/cri"]),  # command drops image cmd
        (ENTRY, CMD, [], ["a1"], ["/entry", "a1"]),  # args replace image cmd
        (ENTRY, CMD, ["/bin/cri"], ["a1"], ["/bin/cri", "a1"]),  # both from CRI
        ([], CMD, [], [], ["img-cmd", "x"]),  # no entrypoint: cmd alone
        ([], CMD, [], ["a1"], ["a1"]),  # args without any entrypoint
        ([""], CMD, [], [], ["img-cmd", "x"]),  # ENTRYPOINT [""] means none
        (ENTRY, [], [], [], ["/entry"]),
        ([], [], ["/bin/cri"], [], ["/bin/cri"]),
    ],
)
def test_command_args_matrix(entrypoint, cmd, command, args, expected):
    spec = spec_for({"command": command, "args": args}, image=ImageConfig(entrypoint=entrypoint, cmd=cmd))
    assert spec["process"]["args"] == expected


@pytest.mark.parametrize("entrypoint", [[], [""]])
def test_no_command_is_invalid_argument(entrypoint):
    with pytest.raises(InvalidArgument, match="no command specified"):
        spec_for(image=ImageConfig(entrypoint=entrypoint, cmd=[]))


def test_env_image_then_cri_overrides_by_key():
    image = ImageConfig(cmd=["sh"], env=["PATH=/img/bin", "A=image", "B=image"])
    spec = spec_for({"envs": [env("B", "cri"), env("C", "c=d"), env("HOSTNAME", "mine")]}, image=image)
    assert spec["process"]["env"] == ["HOSTNAME=mine", "PATH=/img/bin", "A=image", "B=cri", "C=c=d"]


def test_env_default_path_and_hostname():
    spec = spec_for()
    assert spec["process"]["env"] == [DEFAULT_PATH, "HOSTNAME=pod-host"]


@pytest.mark.parametrize(
    ("cri", "image", "expected"),
    [("/cri", "/img", "/cri"), ("", "/img", "/img"), ("", "", "/"), ("", "rel/dir", "/rel/dir")],
)
def test_working_dir(cri, image, expected):
    spec = spec_for({"working_dir": cri}, image=ImageConfig(cmd=["sh"], working_dir=image))
    assert spec["process"]["cwd"] == expected


def test_tty_and_stdin_flags():
    spec = spec_for({"tty": True, "stdin": True, "stdin_once": True})
    assert spec["process"]["terminal"] is True
    assert spec["annotations"][gp.ANN_STDIN] == "true"
    assert spec["annotations"][gp.ANN_STDIN_ONCE] == "true"
    plain = spec_for()
    assert plain["process"]["terminal"] is False
    assert gp.ANN_STDIN not in plain["annotations"]


def _user_request(spec):
    raw = spec["annotations"].get(gp.ANN_USER)
    return json.loads(raw) if raw else None


def test_user_numeric_strict_goes_straight_in():
    sc = security(run_as_user={"value": 1000}, run_as_group={"value": 3000},
                  supplemental_groups=[4000, 3000], supplemental_groups_policy="Strict")
    spec = spec_for(sc)
    assert spec["process"]["user"] == {"uid": 1000, "gid": 3000, "additionalGids": [3000, 4000]}
    assert _user_request(spec) is None


def test_user_numeric_merge_asks_guest_for_group_membership():
    spec = spec_for(security(run_as_user={"value": 1000}, supplemental_groups=[4000]))
    assert spec["process"]["user"] == {"uid": 1000, "gid": 0, "additionalGids": [0, 4000]}
    assert _user_request(spec) == {"user": "1000", "group": "", "supplemental_groups": [4000],
                                   "strict": False}


def test_run_as_user_zero_is_kept():
    # Int64Value{value: 0} becomes {} in MessageToDict; it still means root.
    spec = spec_for(security(run_as_user={"value": 0}), image=ImageConfig(cmd=["sh"], user="nginx"))
    assert _user_request(spec)["user"] == "0"


@pytest.mark.parametrize(
    ("image_user", "sc", "user", "group"),
    [
        ("nginx", {}, "nginx", ""),
        ("nginx:www", {}, "nginx", "www"),
        ("101:101", {}, "101", "101"),
        ("", {"run_as_username": "postgres"}, "postgres", ""),
        ("nginx", {"run_as_username": "postgres", "run_as_group": {"value": 70}}, "postgres", "70"),
        ("nginx:www", {"run_as_user": {"value": 5}}, "5", "www"),
    ],
)
def test_user_names_resolved_in_guest(image_user, sc, user, group):
    spec = spec_for(security(**sc), image=ImageConfig(cmd=["sh"], user=image_user))
    request = _user_request(spec)
    assert (request["user"], request["group"]) == (user, group)


@pytest.mark.parametrize(
    ("cri", "image", "expected"),
    [(None, "", "SIGTERM"), (None, "SIGQUIT", "SIGQUIT"), (None, "int", "SIGINT"), (None, "9", "9"),
     ("SIGUSR1", "SIGQUIT", "SIGUSR1")],
)
def test_stop_signal(cri, image, expected):
    container = {"stop_signal": cri} if cri else {}
    spec = spec_for(container, image=ImageConfig(cmd=["sh"], stop_signal=image))
    assert spec["annotations"][gp.ANN_STOP_SIGNAL] == expected


def test_oom_score_adj_from_int64_string():
    spec = spec_for({"linux": {"resources": {"oom_score_adj": -997}}})
    assert spec["process"]["oomScoreAdj"] == -997
