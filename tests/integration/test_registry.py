"""Image pulls against real registries (distribution 2.8 from Debian) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
from pathlib import Path

import pytest

from frakpy.errors import FailedPrecondition, Unauthenticated, Unavailable
from frakpy.image import ocibuild as ob
from frakpy.image import testimages
from frakpy.image.push import push_layout
from frakpy.image.registry import Credentials, PullConfig, RegistryConfig
from frakpy.image.store import ImageStore
from frakpy.store.db import Database

from .registry_fixtures import Registry, TamperProxy, TokenServer, requirements_missing

_missing = requirements_missing()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(_missing is not None, reason=_missing or "")]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("layouts")
    testimages.busybox_layout(base / "busybox", entrypoint=["/bin/sh", "-c"], cmd=["echo hi"], user="frak")
    testimages.busybox_layout(base / "multi", multiarch=True)
    # three layers so an interrupted pull has finished and unfinished layers
    layout = ob.OCILayout(base / "three")
    spec = testimages.busybox_spec()
    spec.layers = [*spec.layers, [ob.file("data/blob.bin", os.urandom(3 << 20))]]
    layout.tag(layout.add_image(spec), "latest")
    return {"busybox": base / "busybox", "multi": base / "multi", "three": base / "three"}


@pytest.fixture
def registry(tmp_path: Path):
    reg = Registry(tmp_path / "registry")
    yield reg
    reg.close()


def make_store(tmp_path: Path, config: PullConfig, **kw) -> ImageStore:
    state = tmp_path / "state"
    return ImageStore(Database(state / "frakpy.db"), state, config, **kw)


def insecure(*hosts: str, **kw) -> PullConfig:
    return PullConfig(registries=[RegistryConfig(name=h, insecure=True) for h in hosts], **kw)


def extract(fsimage: str, dest: Path) -> Path:
    subprocess.run(["fsck.erofs", f"--extract={dest}", fsimage], check=True, capture_output=True)
    return dest


async def test_anonymous_pull_by_tag_and_digest(tmp_path: Path, registry: Registry, layouts) -> None:
    pushed = await push_layout(layouts["busybox"], f"{registry.host}/test/busybox:1", config=insecure(registry.host))
    store = make_store(tmp_path, insecure(registry.host))
    before = store.fs_info()
    events = []
    record = await store.pull(f"{registry.host}/test/busybox:1", None, progress=events.append)
    assert record.repo_tags == [f"{registry.host}/test/busybox:1"]
    assert record.repo_digests == [f"{registry.host}/test/busybox@{pushed['digest']}"]
    assert record.entrypoint == ["/bin/sh", "-c"] and record.cmd == ["echo hi"]
    assert record.user == "frak" and record.username == "frak" and record.uid is None
    assert record.fsimage_size > 0 and os.path.isfile(record.fsimage_path)  # noqa: ASYNC240
    assert {e.phase for e in events} >= {"resolved", "downloading", "downloaded", "unpacking", "ready"}
    after = store.fs_info()
    assert after.used_bytes > before.used_bytes and after.inodes_used > before.inodes_used

    tree = extract(record.fsimage_path, tmp_path / "x")
    assert (tree / "etc/motd").read_text() == "frakpy test image, layer 2\n"
    assert not (tree / "etc/obsolete.conf").exists()
    assert sorted(os.listdir(tree / "opt/old")) == ["c"]
    assert "frak:x:1234:1234" in (tree / "etc/passwd").read_text()
    assert (tree / "home/frak").stat().st_uid == 1234
    assert oct((tree / "tmp").stat().st_mode & 0o7777) == "0o1777"
    assert os.readlink(tree / "usr/bin/env") == "/bin/env"
    dump = subprocess.run(  # noqa: ASYNC221
        ["dump.erofs", "--path=/bin/ls", record.fsimage_path], capture_output=True, text=True
    )
    assert "Links:" in dump.stdout and "Links: 1 " not in dump.stdout

    # by digest, in a second store: same image id, digest reference recorded, no tag
    store2 = make_store(tmp_path / "two", insecure(registry.host))
    by_digest = await store2.pull(f"{registry.host}/test/busybox@{pushed['digest']}")
    assert by_digest.id == record.id and by_digest.repo_tags == []
    assert store2.status(f"{registry.host}/test/busybox@{pushed['digest']}").id == record.id
    # status by id, short id, tag; absent -> None
    assert store.status(record.id).id == record.id
    assert store.status(record.id[7:19]).id == record.id
    assert store.status(f"{registry.host}/test/busybox:nope") is None
    await store.aclose()
    await store2.aclose()


async def test_plain_http_only_when_configured_insecure(tmp_path: Path, registry: Registry, layouts) -> None:
    await push_layout(layouts["busybox"], f"{registry.host}/test/busybox:1", config=insecure(registry.host))
    store = make_store(tmp_path, PullConfig(retries=0))
    with pytest.raises(Unavailable, match="insecure"):
        await store.pull(f"{registry.host}/test/busybox:1")
    assert store.list() == []
    await store.aclose()


async def test_basic_auth(tmp_path: Path, layouts) -> None:
    reg = Registry(tmp_path / "reg", htpasswd={"alice": "s3cret"})
    try:
        cfg = insecure(reg.host)
        await push_layout(
            layouts["busybox"],
            f"{reg.host}/private/bb:1",
            config=cfg,
            creds=Credentials(username="alice", password="s3cret"),
        )
        store = make_store(tmp_path, cfg)
        with pytest.raises(Unauthenticated, match="requires credentials"):
            await store.pull(f"{reg.host}/private/bb:1")
        with pytest.raises(Unauthenticated, match="rejected the credentials"):
            await store.pull(f"{reg.host}/private/bb:1", Credentials(username="alice", password="wrong"))
        assert store.list() == []
        auth = base64.b64encode(b"alice:s3cret").decode()
        record = await store.pull(f"{reg.host}/private/bb:1", Credentials(auth=auth))
        assert record.repo_tags == [f"{reg.host}/private/bb:1"]
        await store.aclose()
    finally:
        reg.close()


async def test_server_address_scopes_credentials(tmp_path: Path, layouts) -> None:
    reg = Registry(tmp_path / "reg", htpasswd={"alice": "s3cret"})
    try:
        cfg = insecure(reg.host)
        alice = Credentials(username="alice", password="s3cret")
        await push_layout(layouts["busybox"], f"{reg.host}/private/bb:1", config=cfg, creds=alice)
        store = make_store(tmp_path, cfg)
        elsewhere = Credentials(username="alice", password="s3cret", server_address="https://index.docker.io/v1/")
        with pytest.raises(Unauthenticated, match="server_address"):
            await store.pull(f"{reg.host}/private/bb:1", elsewhere)  # sent anonymously, as containerd does
        here = Credentials(username="alice", password="s3cret", server_address=f"http://{reg.host}/")
        record = await store.pull(f"{reg.host}/private/bb:1", here)
        assert record.repo_tags == [f"{reg.host}/private/bb:1"]
        await store.aclose()
    finally:
        reg.close()


async def test_pull_progress_watchers(tmp_path: Path, registry: Registry, layouts) -> None:
    await push_layout(layouts["three"], f"{registry.host}/p/bb:1", config=insecure(registry.host))
    store = make_store(tmp_path, insecure(registry.host))
    ref = f"{registry.host}/p/bb:1"

    async def watch() -> list:
        return [snap async for snap in store.progress.watch(ref, wait_s=10, min_interval_s=0.01)]

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.05)
    record = await store.pull(ref)
    snaps = await asyncio.wait_for(watcher, 10)
    final = snaps[-1]
    assert final.stage == "done" and final.image_id == record.id and final.fs_size == record.fsimage_size
    manifest = _manifest(layouts["three"])
    assert [x.digest for x in final.layers] == [x["digest"] for x in manifest["layers"]]
    assert all(x.state == "done" and x.downloaded == x.size for x in final.layers)
    assert "downloading" in {s.stage for s in snaps}
    assert store.progress.active(ref) is None
    await store.aclose()


async def test_cli_pull_shows_layer_progress(tmp_path: Path, registry: Registry, layouts, capsys) -> None:
    """`frakpy pull` against an in-process CRI server (ImageService + frakpy.v1.Progress) on a socket."""
    import tempfile

    from frakpy.cli.main import main as cli_main
    from frakpy.cri import server as cri_server
    from frakpy.cri.image import ImageServicer
    from frakpy.cri.progress import ProgressServicer

    await push_layout(layouts["three"], f"{registry.host}/cli/bb:1", config=insecure(registry.host))
    store = make_store(tmp_path, insecure(registry.host))
    sock = Path(tempfile.mkdtemp(prefix="frakpy-pull-", dir="/tmp")) / "cri.sock"
    server = cri_server.build([], [ImageServicer(store)], [ProgressServicer(store)])
    server.add_insecure_port(f"unix://{sock}")
    await server.start()
    try:
        rc = await asyncio.to_thread(cli_main, ["-r", str(sock), "pull", f"{registry.host}/cli/bb:1"])
        assert rc == 0
        out = capsys.readouterr().out.splitlines()
        record = store.status(f"{registry.host}/cli/bb:1")
        assert record is not None
        for layer in _manifest(layouts["three"])["layers"]:
            short = layer["digest"][7:19]
            # a local registry is fast: snapshots coalesce, so intermediate states may be skipped
            assert any(line.startswith(f"{short}: done") for line in out), out
        assert f"{registry.host}/cli/bb:1: building image filesystem" in out
        assert out[-2] == f"Image is up to date for {record.id}"
        assert out[-1].startswith(f"Pulled {registry.host}/cli/bb:1: id {record.id[7:20]}, ") and "MB/s" in out[-1]
    finally:
        await server.stop(None)
        await store.aclose()


async def test_bearer_token_auth(tmp_path: Path, layouts) -> None:
    tokens = TokenServer(tmp_path / "tok", {"bob": "pw"}, refresh_tokens={"refresh-123": "bob"})
    reg = Registry(tmp_path / "reg", token=tokens)
    try:
        cfg = insecure(reg.host)
        await push_layout(
            layouts["busybox"],
            f"{reg.host}/team/bb:1",
            config=cfg,
            creds=Credentials(username="bob", password="pw"),
        )
        store = make_store(tmp_path, cfg)
        tokens.requests.clear()
        with pytest.raises(Unauthenticated):
            await store.pull(f"{reg.host}/team/bb:1")  # anonymous: token without access
        with pytest.raises(Unauthenticated, match="refused"):
            await store.pull(f"{reg.host}/team/bb:1", Credentials(username="bob", password="bad"))
        record = await store.pull(f"{reg.host}/team/bb:1", Credentials(username="bob", password="pw"))
        assert record.repo_tags == [f"{reg.host}/team/bb:1"]
        asked = [r for r in tokens.requests if r["user"] == "bob"]
        assert asked and asked[-1]["service"] == TokenServer.service
        assert asked[-1]["scope"] == "repository:team/bb:pull"
        # the token is reused for the blobs of that pull: one token request for the good pull
        assert len(asked) == 1
        # identity_token -> refresh-token grant
        store.remove(record.id)
        record = await store.pull(f"{reg.host}/team/bb:1", Credentials(identity_token="refresh-123"))
        assert record.id
        # registry_token is used as the bearer token directly
        store.remove(record.id)
        direct = tokens.sign("bob", [{"type": "repository", "name": "team/bb", "actions": ["pull"]}])
        record = await store.pull(f"{reg.host}/team/bb:1", Credentials(registry_token=direct))
        assert record.id
        await store.aclose()
    finally:
        reg.close()
        tokens.close()


async def test_tls_with_ca_file(tmp_path: Path, layouts) -> None:
    reg = Registry(tmp_path / "reg", tls=True)
    try:
        trusted = PullConfig(registries=[RegistryConfig(name=reg.host, ca_file=str(reg.ca_file))])
        await push_layout(layouts["busybox"], f"{reg.host}/tls/bb:1", config=trusted)
        store = make_store(tmp_path / "a", PullConfig(retries=0))
        with pytest.raises(Unavailable, match="ca_file"):
            await store.pull(f"{reg.host}/tls/bb:1")
        await store.aclose()
        store = make_store(tmp_path / "b", trusted)
        record = await store.pull(f"{reg.host}/tls/bb:1")
        assert record.repo_tags == [f"{reg.host}/tls/bb:1"]
        await store.aclose()
    finally:
        reg.close()


async def test_index_picks_amd64_and_mirror_without_fallback(tmp_path: Path, registry: Registry, layouts) -> None:
    await push_layout(layouts["multi"], f"{registry.host}/multi/bb:1", config=insecure(registry.host))
    # registry.k8s.io mapped to the local registry, no fallback to the (unreachable) origin
    cfg = PullConfig(
        registries=[
            RegistryConfig(name="registry.k8s.io", endpoints=[f"http://{registry.host}"], fallback_to_origin=False)
        ]
    )
    store = make_store(tmp_path, cfg)
    record = await store.pull("registry.k8s.io/multi/bb:1")
    assert record.platform == "linux/amd64"
    assert record.labels["org.frakpy.arch"] == "amd64"
    index = json.loads((layouts["multi"] / "index.json").read_text())["manifests"][0]
    assert record.index_digest == index["digest"]
    assert record.repo_digests == [f"registry.k8s.io/multi/bb@{index['digest']}"]
    await store.aclose()
    arm = make_store(tmp_path / "arm", PullConfig(registries=cfg.registries, platform="linux/arm64"))
    record = await arm.pull("registry.k8s.io/multi/bb:1")
    assert record.labels["org.frakpy.arch"] == "arm64"
    await arm.aclose()


async def test_corrupted_blob_stores_nothing(tmp_path: Path, registry: Registry, layouts) -> None:
    await push_layout(layouts["busybox"], f"{registry.host}/c/bb:1", config=insecure(registry.host))
    proxy = await TamperProxy(registry.url).start()
    try:
        manifest = _manifest(layouts["busybox"])
        proxy.corrupt.add(manifest["layers"][0]["digest"])
        store = make_store(tmp_path, insecure(proxy.host))
        with pytest.raises(Unavailable, match="failed verification"):
            await store.pull(f"{proxy.host}/c/bb:1")
        assert store.list() == []
        assert not store.blobs.has(manifest["layers"][0]["digest"])
        assert [p.name for p in store.blobs.dir.iterdir() if p.name.startswith(".")] == []
        assert list(store.fsimage_dir.iterdir()) == []
        await store.aclose()
    finally:
        await proxy.close()


async def test_interrupted_pull_resumes_without_refetching(tmp_path: Path, registry: Registry, layouts) -> None:
    await push_layout(layouts["three"], f"{registry.host}/r/bb:1", config=insecure(registry.host))
    proxy = await TamperProxy(registry.url).start()
    try:
        manifest = _manifest(layouts["three"])
        big = manifest["layers"][2]["digest"]
        proxy.cut.add(big)
        store = make_store(tmp_path, insecure(proxy.host, retries=0, max_concurrent_downloads=1))
        with pytest.raises(Unavailable):
            await store.pull(f"{proxy.host}/r/bb:1")
        done = [layer["digest"] for layer in manifest["layers"] if store.blobs.has(layer["digest"])]
        assert big not in done and done
        # the bytes received before the cut are kept under the digest's partial name
        kept = store.blobs.partial_path(big).stat().st_size
        size = next(layer["size"] for layer in manifest["layers"] if layer["digest"] == big)
        assert 0 < kept < size
        proxy.cut.clear()
        sent_before = proxy.sent[big]
        events = []
        record = await store.pull(f"{proxy.host}/r/bb:1", progress=events.append)
        assert record.fsimage_size > 0
        for digest in done:
            assert sum(1 for line in proxy.log if line.startswith("GET") and digest in line) == 1
        gets = [line for line in proxy.log if line.startswith("GET") and big in line]
        assert len(gets) == 2 and gets[1].endswith(f"Range: bytes={kept}-")
        # the retry fetched only the remainder, and progress reported the resumed prefix
        assert proxy.sent[big] - sent_before == size - kept
        assert any(e.phase == "resumed" and e.digest == big and e.current == kept for e in events)
        assert list(store.blobs.partials()) == []
        await store.aclose()
    finally:
        await proxy.close()


async def test_concurrent_pulls_share_downloads(tmp_path: Path, registry: Registry, layouts) -> None:
    await push_layout(layouts["three"], f"{registry.host}/s/bb:1", config=insecure(registry.host))
    proxy = await TamperProxy(registry.url).start()
    try:
        store = make_store(tmp_path, insecure(proxy.host))
        a, b = await asyncio.gather(store.pull(f"{proxy.host}/s/bb:1"), store.pull(f"{proxy.host}/s/bb:1"))
        assert a.id == b.id
        for layer in _manifest(layouts["three"])["layers"]:
            assert sum(1 for line in proxy.log if line.startswith("GET") and layer["digest"] in line) == 1
        await store.aclose()
    finally:
        await proxy.close()


async def test_remove_by_tag_id_and_in_use(tmp_path: Path, registry: Registry, layouts) -> None:
    cfg = insecure(registry.host)
    await push_layout(layouts["busybox"], f"{registry.host}/rm/bb:1", config=cfg)
    await push_layout(layouts["busybox"], f"{registry.host}/rm/bb:2", config=cfg)
    await push_layout(layouts["multi"], f"{registry.host}/rm/multi:1", config=cfg)
    used: set[str] = set()
    store = make_store(tmp_path, cfg, in_use=lambda image_id: image_id in used)
    one = await store.pull(f"{registry.host}/rm/bb:1")
    two = await store.pull(f"{registry.host}/rm/bb:2")
    assert one.id == two.id and sorted(store.status(one.id).repo_tags) == [
        f"{registry.host}/rm/bb:1",
        f"{registry.host}/rm/bb:2",
    ]
    multi = await store.pull(f"{registry.host}/rm/multi:1")
    full = store.fs_info()
    # in use -> refused
    used.add(multi.id)
    with pytest.raises(FailedPrecondition, match="used by a container"):
        store.remove(multi.id)
    used.clear()
    # by tag: removes the image with all its tags (containerd CRI semantics)
    store.remove(f"{registry.host}/rm/bb:1")
    assert store.status(f"{registry.host}/rm/bb:2") is None and store.status(one.id) is None
    assert not os.path.exists(one.fsimage_path)  # noqa: ASYNC240
    # layers shared with the remaining image are kept
    assert all(store.blobs.has(layer["digest"]) for layer in multi.layers)
    assert store.fs_info().used_bytes < full.used_bytes
    # by id
    store.remove(multi.id)
    assert store.list() == [] and list(store.blobs.digests()) == []
    store.remove(multi.id)  # absent: no error
    await store.aclose()


async def test_import_archives(tmp_path: Path, layouts) -> None:
    layout = ob.OCILayout(layouts["busybox"])
    index = json.loads((layouts["busybox"] / "index.json").read_text())["manifests"][0]
    docker_tar = layout.to_docker_archive(index["digest"], tmp_path / "docker.tar", ["example.com/bb:v1"])
    oci_tar = ob.OCILayout(layouts["multi"]).to_archive(tmp_path / "oci.tar")
    store = make_store(tmp_path, PullConfig())
    [from_docker] = await store.import_archive(docker_tar)
    assert from_docker.repo_tags == ["example.com/bb:v1"] and from_docker.cmd == ["echo hi"]
    [from_oci] = await store.import_archive(oci_tar, name="example.com/multi")
    assert from_oci.repo_tags == ["example.com/multi:latest"] and from_oci.platform == "linux/amd64"
    [from_dir] = await store.import_archive(layouts["busybox"], name="example.com/dir")
    assert from_dir.id == from_docker.id
    tree = extract(from_docker.fsimage_path, tmp_path / "x")
    assert (tree / "etc/frakpy-release").is_file()
    await store.aclose()


def _manifest(layout: Path) -> dict:
    desc = json.loads((layout / "index.json").read_text())["manifests"][0]
    return json.loads((layout / "blobs/sha256" / desc["digest"].split(":")[1]).read_text())


async def test_dynamic_busybox_image_runs_in_chroot(tmp_path: Path) -> None:
    try:
        await asyncio.to_thread(testimages.busybox_layout, tmp_path / "dyn", dynamic=True)
    except FailedPrecondition as exc:
        pytest.skip(f"cannot fetch Debian packages: {exc}")
    store = make_store(tmp_path, PullConfig())
    [record] = await store.import_archive(tmp_path / "dyn", name="example.com/busybox-dynamic")
    tree = extract(record.fsimage_path, tmp_path / "x")
    out = await asyncio.create_subprocess_exec(
        "chroot", str(tree), "/bin/sh", "-c", "set -e; id -u frak; /bin/ls /etc", stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await out.communicate()
    assert out.returncode == 0
    assert stdout.decode().split() == ["1234", "frakpy-release", "group", "motd", "passwd", "shadow"]
    await store.aclose()
