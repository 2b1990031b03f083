"""`frakpy pull`: progress from frakpy.v1.Progress/WatchPull, plain lines off a TTY, and no service at all."""

from __future__ import annotations

import io

from cri_fake import IMG_BUSYBOX

from frakpy.cli import pull as cli_pull
from frakpy.cri.proto import frakpy_pb2 as fpb

REF = "docker.io/library/busybox:latest"
L1, L2 = "sha256:" + "a1" * 32, "sha256:" + "b2" * 32


def _snaps() -> list[fpb.PullProgress]:
    def snap(stage: int, l1: tuple[int, int], l2: tuple[int, int], **kw) -> fpb.PullProgress:
        return fpb.PullProgress(
            image=REF,
            stage=stage,
            layers=[
                fpb.LayerProgress(digest=L1, size=2_000_000, downloaded=l1[0], state=l1[1], cached=True),
                fpb.LayerProgress(digest=L2, size=3_000_000, downloaded=l2[0], state=l2[1], resumed_from=1_000_000),
            ],
            **kw,
        )

    dl, done = fpb.LAYER_STATE_DOWNLOADED, fpb.LAYER_STATE_DONE
    return [
        fpb.PullProgress(image=REF, stage=fpb.PULL_STAGE_RESOLVING),
        snap(fpb.PULL_STAGE_DOWNLOADING, (2_000_000, dl), (1_000_000, fpb.LAYER_STATE_DOWNLOADING)),
        snap(fpb.PULL_STAGE_DOWNLOADING, (2_000_000, dl), (2_000_000, fpb.LAYER_STATE_DOWNLOADING)),
        snap(fpb.PULL_STAGE_DOWNLOADING, (2_000_000, dl), (3_000_000, fpb.LAYER_STATE_VERIFYING)),
        snap(fpb.PULL_STAGE_BUILDING, (2_000_000, fpb.LAYER_STATE_UNPACKING), (3_000_000, dl)),
        snap(fpb.PULL_STAGE_DONE, (2_000_000, done), (3_000_000, done), image_id=IMG_BUSYBOX, fs_size=9_000_000),
    ]


def test_pull_prints_plain_progress_lines_and_summary(fake, capsys):
    fake.state.progress = _snaps()
    assert fake.run("pull", "busybox") == 0
    out = capsys.readouterr().out.splitlines()
    assert fake.state.last("WatchPull").image == "busybox"
    assert f"{REF}: resolving" in out and f"{REF}: building image filesystem" in out
    # one line per state change, not per byte update
    assert out.count("b2b2b2b2b2b2: downloading (3MB, resumed at 1MB)") == 1
    assert "b2b2b2b2b2b2: verifying (3MB, resumed at 1MB)" in out
    assert "a1a1a1a1a1a1: already present (2MB)" in out
    assert out[-2] == f"Image is up to date for {IMG_BUSYBOX}"
    summary = out[-1]
    assert summary.startswith(f"Pulled {REF}: id {'e' * 13}, 4.26MB in ")
    assert "MB/s, 2MB downloaded, 1 of 2 layers already present)" in summary


def test_pull_without_progress_service(fake, capsys):
    assert fake.state.progress is None  # WatchPull answers UNIMPLEMENTED, as containerd would
    assert fake.run("pull", "busybox") == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == f"Image is up to date for {IMG_BUSYBOX}"
    assert lines[1].startswith(f"Pulled {REF}: id ") and "MB/s" not in lines[1]
    assert captured.err == ""
    assert fake.state.names().count("PullImage") == 1


def test_rich_renderer_draws_a_bar_per_layer():
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120, color_system=None)
    renderer = cli_pull.RichRenderer(buf, console=console)
    with renderer:
        for snap in _snaps():
            renderer.update(snap)
    text = buf.getvalue()
    assert "a1a1a1a1a1a1" in text and "b2b2b2b2b2b2" in text
    assert "done" in text and len(renderer.tasks) == 2


def test_summary_counts_only_fetched_bytes():
    last = _snaps()[-1]
    assert cli_pull.downloaded_bytes(last) == 2_000_000  # cached layer and resumed prefix excluded
    line = cli_pull.summary(IMG_BUSYBOX, None, 2.0, last)
    assert (
        line == f"Pulled {IMG_BUSYBOX}: id {'e' * 13}, size unknown in 2.0s (1.0 MB/s, 2MB downloaded, "
        "1 of 2 layers already present)"
    )


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_pull_on_a_terminal_draws_bars(fake):
    from frakpy.cri.client import CRIClient
    from frakpy.cri.proto import api_pb2 as pb

    req = pb.PullImageRequest(image=pb.ImageSpec(image="busybox"))
    for progress in (None, _snaps()):  # without, then with the progress service
        fake.state.progress = progress
        fake.state.pull_started.clear()
        out = _TTY()
        with CRIClient(fake.socket) as cri:
            assert cli_pull.run_pull(cri, req, timeout=10, out=out) == 0
        text = out.getvalue()
        assert f"Image is up to date for {IMG_BUSYBOX}" in text
        if progress is None:
            assert "total" not in text and "b2b2b2b2b2b2" not in text
        else:
            assert "b2b2b2b2b2b2" in text and "a1a1a1a1a1a1" in text and "MB/s" in text
