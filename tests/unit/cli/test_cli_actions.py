"""Verbs that change state, exec, logs and error reporting."""

from __future__ import annotations

import base64

from cri_fake import CTR_APP, CTR_JOB, IMG_NGINX, POD_JOB, POD_WEB


def test_start_resolves_a_unique_prefix(fake, capsys):
    assert fake.run("start", "cccc1") == 0
    assert capsys.readouterr().out.strip() == CTR_APP
    assert fake.state.last("StartContainer").container_id == CTR_APP


def test_ambiguous_and_unknown_container_prefix(fake, capsys):
    assert fake.run("start", "cccc") == 1
    assert "container id prefix 'cccc' is ambiguous" in capsys.readouterr().err
    assert fake.run("rm", "zzzz") == 1
    assert capsys.readouterr().err == "frakpy: no container matches 'zzzz'\n"
    assert "StartContainer" not in fake.state.names()


def test_rpc_error_is_printed_with_code(fake, capsys):
    assert fake.run("stop", "--timeout", "5", "dddd") == 1
    err = capsys.readouterr().err
    assert err == "frakpy: StopContainer: FAILED_PRECONDITION: agent of pod job is not answering\n"
    assert fake.state.last("StopContainer").timeout == 5


def test_unimplemented_is_clear(fake, capsys):
    assert fake.run("imagefsinfo") == 1
    err = capsys.readouterr().err
    assert err.startswith("frakpy: ImageFsInfo: UNIMPLEMENTED: ")
    assert "does not implement" in err


def test_no_daemon_is_unavailable(fake, capsys):
    assert fake.run("-r", str(fake.tmp / "gone.sock"), "-t", "2", "version") == 1
    err = capsys.readouterr().err
    assert err.startswith("frakpy: Version: UNAVAILABLE: ") and "is frakpyd running?" in err


def test_rm_force_stops_first_and_rmp(fake, capsys):
    assert fake.run("rm", "-f", "cccc1") == 0
    names = fake.state.names()
    assert names.index("StopContainer") < names.index("RemoveContainer")
    assert fake.state.last("RemoveContainer").container_id == CTR_APP
    assert fake.run("rmp", "-f", "bbbb", "aaaa1") == 0
    out = capsys.readouterr().out
    assert f"Removed sandbox {POD_JOB}" in out and f"Removed sandbox {POD_WEB}" in out
    assert fake.state.last("StopPodSandbox").pod_sandbox_id == POD_WEB
    assert fake.run("stopp", "bbbb") == 0
    assert fake.state.last("StopPodSandbox").pod_sandbox_id == POD_JOB


def test_exec_prints_both_streams_and_returns_exit_code(fake, capsysbinary):
    assert fake.run("exec", "-s", "--timeout", "4", "dddd", "sh", "-c", "echo hi") == 3
    cap = capsysbinary.readouterr()
    assert cap.out == b"out: sh -c echo hi\n" and cap.err == b"warn\n"
    req = fake.state.last("ExecSync")
    assert req.container_id == CTR_JOB and list(req.cmd) == ["sh", "-c", "echo hi"] and req.timeout == 4


def test_exec_without_command_is_usage_error(fake, capsys):
    assert fake.run("exec", "dddd") == 2
    assert "needs a command" in capsys.readouterr().err


def test_logs_join_partials_split_streams_and_tail(fake, capsys):
    log = fake.tmp / "app.log"
    log.write_text(
        "2024-01-01T00:00:00.000000001Z stdout F first\n"
        "2024-01-01T00:00:00.000000002Z stdout P hel\n"
        "2024-01-01T00:00:00.000000003Z stderr F oops\n"
        "2024-01-01T00:00:00.000000004Z stdout F lo world\n"
        "2024-01-01T00:00:00.000000005Z stdout F \n"
        "2024-01-01T00:00:00.000000006Z stdout F last line\n"
    )
    fake.state.log_path = str(log)
    assert fake.run("logs", "cccc1") == 0
    cap = capsys.readouterr()
    assert cap.out == "first\nhello world\n\nlast line\n"
    assert cap.err == "oops\n"
    assert fake.run("logs", "--tail", "2", "cccc1") == 0
    assert capsys.readouterr().out == "\nlast line\n"
    assert fake.run("logs", "--tail", "0", "cccc1") == 0
    assert capsys.readouterr().out == ""


def test_logs_follow_stops_when_container_exited(fake, capsys, monkeypatch):
    log = fake.tmp / "old.log"
    log.write_text("2024-01-01T00:00:00Z stdout F done\n")
    fake.state.log_path = str(log)
    monkeypatch.setattr("frakpy.cli.commands.FOLLOW_POLL", 0.01)
    monkeypatch.setattr("frakpy.cli.commands.FOLLOW_STATUS_EVERY", 0.0)
    assert fake.run("logs", "-f", "cccc2") == 0
    assert capsys.readouterr().out == "done\n"


def test_logs_missing_file(fake, capsys):
    fake.state.log_path = str(fake.tmp / "nope.log")
    assert fake.run("logs", "cccc1") == 1
    assert "cannot read log" in capsys.readouterr().err


def test_pull_with_creds_and_auth(fake, capsys):
    assert fake.run("pull", "--creds", "me:s3:cret", "busybox") == 0
    assert "Image is up to date for sha256:" in capsys.readouterr().out
    req = fake.state.last("PullImage")
    assert req.image.image == "busybox" and (req.auth.username, req.auth.password) == ("me", "s3:cret")
    token = base64.b64encode(b"me:pw").decode()
    assert fake.run("pull", "--auth", token, "busybox") == 0
    assert fake.state.last("PullImage").auth.auth == token
    assert fake.run("pull", "--auth", "***", "busybox") == 2
    assert fake.run("pull", "--creds", "nocolon", "busybox") == 2


def test_rmi_by_id_prefix_and_by_tag(fake, capsys):
    assert fake.run("rmi", "fff") == 0
    assert fake.state.last("RemoveImage").image.image == IMG_NGINX
    assert fake.run("rmi", "docker.io/library/busybox:latest") == 0
    assert "Deleted: docker.io/library/busybox:latest" in capsys.readouterr().out
    assert fake.run("rmi", "0000") == 1
