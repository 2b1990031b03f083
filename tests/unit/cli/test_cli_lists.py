"""Listings and inspection: tables, JSON/YAML, filters and id prefixes."""

from __future__ import annotations

import json

import yaml
from cri_fake import CTR_APP, CTR_JOB, CTR_OLD, IMG_BUSYBOX, POD_DB, POD_JOB, POD_WEB

from frakpy.cri.proto import api_pb2 as pb


def _rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines()]


def test_version(fake, capsys):
    assert fake.run("version") == 0
    out = capsys.readouterr().out
    assert "RuntimeName:  frakpy" in out and "RuntimeApiVersion:  v1" in out
    assert fake.state.last("Version").version == "v1"


def test_pods_table_is_aligned_and_newest_first(fake, capsys):
    assert fake.run("pods") == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0]
    assert header.split() == ["POD", "ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME"]
    for col in ("CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME"):
        start = header.index(col)
        for row in lines[1:]:
            assert row[start - 1] == " " and row[start] != " ", (col, row)
    assert [row.split()[0] for row in lines[1:]] == [POD_JOB[:13], POD_DB[:13], POD_WEB[:13]]
    assert "NotReady" in lines[2] and "(default)" in lines[2]
    assert "About an hour ago" in lines[3] and "frakpy" in lines[3]


def test_pods_quiet_state_label_and_name_filters(fake, capsys):
    assert fake.run("pods", "-q", "--state", "ready", "--label", "tier=front") == 0
    assert capsys.readouterr().out.split() == [POD_WEB]
    flt = fake.state.last("ListPodSandbox").filter
    assert flt.state.state == pb.SANDBOX_READY and dict(flt.label_selector) == {"tier": "front"}

    assert fake.run("pods", "-q", "--namespace", "^kube-") == 0
    assert capsys.readouterr().out.split() == [POD_DB]
    assert fake.run("pods", "-q", "--name", "jo") == 0
    assert capsys.readouterr().out.split() == [POD_JOB]


def test_pods_id_prefix_and_bad_state(fake, capsys):
    assert fake.run("pods", "-q", "--id", "bbbb") == 0
    assert capsys.readouterr().out.split() == [POD_JOB]
    assert fake.run("pods", "--state", "sleepy") == 2
    assert "invalid pod state 'sleepy'" in capsys.readouterr().err


def test_pods_json_and_yaml(fake, capsys):
    assert fake.run("pods", "-o", "json") == 0
    data = json.loads(capsys.readouterr().out)
    first = data["items"][0]
    assert first["id"] == POD_JOB and first["state"] == "SANDBOX_READY"
    assert first["metadata"] == {"name": "job", "namespace": "default", "uid": "uid-job", "attempt": 1}
    assert "createdAt" in first and "runtimeHandler" in first
    assert fake.run("pods", "-o", "yaml") == 0
    assert yaml.safe_load(capsys.readouterr().out)["items"][2]["id"] == POD_WEB


def test_ps_running_by_default_all_with_a(fake, capsys):
    assert fake.run("ps") == 0
    out = capsys.readouterr().out
    header, *rows = out.splitlines()
    assert header.split("   ")[0] == "CONTAINER" and "POD ID" in header
    assert [r.split()[0] for r in rows] == [CTR_APP[:13], CTR_JOB[:13]]
    assert "Running" in rows[0] and "docker.io/library/busybox:latest" in rows[0]
    assert fake.state.last("ListContainers").filter.state.state == pb.CONTAINER_RUNNING

    assert fake.run("ps", "-a", "-q") == 0
    assert capsys.readouterr().out.split() == [CTR_APP, CTR_OLD, CTR_JOB]
    assert not fake.state.last("ListContainers").filter.HasField("state")


def test_ps_pod_prefix_state_and_json(fake, capsys):
    assert fake.run("ps", "--pod", "aaaa1", "--state", "exited", "-o", "json") == 0
    data = json.loads(capsys.readouterr().out)
    assert [c["id"] for c in data["containers"]] == [CTR_OLD]
    assert data["containers"][0]["podSandboxId"] == POD_WEB
    flt = fake.state.last("ListContainers").filter
    assert flt.pod_sandbox_id == POD_WEB and flt.state.state == pb.CONTAINER_EXITED


def test_ambiguous_pod_prefix_is_an_error(fake, capsys):
    assert fake.run("ps", "--pod", "aaaa") == 1
    err = capsys.readouterr().err
    assert err.startswith("frakpy: pod id prefix 'aaaa' is ambiguous")


def test_images_table_and_quiet(fake, capsys):
    assert fake.run("images") == 0
    rows = _rows(capsys.readouterr().out)
    assert rows[0] == ["IMAGE", "TAG", "IMAGE", "ID", "SIZE"]
    assert ["docker.io/library/busybox", "latest", "e" * 13, "4.26MB"] in rows
    assert ["docker.io/library/nginx", "<none>", "f" * 13, "70MB"] in rows
    assert fake.run("images", "-q") == 0
    assert capsys.readouterr().out.split()[0] == IMG_BUSYBOX


def test_images_digests_pinned_and_verbose_like_crictl(fake, capsys):
    fake.state.images[0].pinned = True
    fake.state.images[0].repo_digests.append("docker.io/library/busybox@sha256:" + "d" * 64)
    assert fake.run("images", "--digests", "--pinned") == 0
    rows = _rows(capsys.readouterr().out)
    assert rows[0] == ["IMAGE", "TAG", "DIGEST", "IMAGE", "ID", "SIZE", "PINNED"]
    assert ["docker.io/library/busybox", "latest", "d" * 13, "e" * 13, "4.26MB", "true"] in rows
    assert ["docker.io/library/nginx", "<none>", "abc", "f" * 13, "70MB", "false"] in rows
    assert fake.run("images", "-v") == 0
    blocks = capsys.readouterr().out.split("\n\n")
    assert blocks[0].splitlines() == [
        f"ID: {IMG_BUSYBOX}",
        "RepoTags: docker.io/library/busybox:latest",
        "RepoDigests: docker.io/library/busybox@sha256:" + "d" * 64,
        "Size: 4261550",
        "Pinned: true",
    ]


def test_info_decodes_verbose_json(fake, capsys):
    assert fake.run("info") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["status"]["conditions"][0]["type"] == "RuntimeReady"
    assert data["config"] == {"vcpus": 1} and data["raw"] == "not json"
    assert fake.state.last("Status").verbose is True


def test_inspect_inspectp_inspecti(fake, capsys):
    assert fake.run("inspect", "cccc1") == 0
    assert json.loads(capsys.readouterr().out)["status"]["id"] == CTR_APP
    assert fake.run("inspectp", "bbbb") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["status"]["id"] == POD_JOB and data["vm"] == {"pid": 42}
    assert fake.run("inspecti", "docker.io/library/busybox:latest") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["status"]["id"] == IMG_BUSYBOX and data["info"] == {"layers": 1}
    assert fake.run("inspecti", "nope:1") == 1
    assert "no such image 'nope:1'" in capsys.readouterr().err
