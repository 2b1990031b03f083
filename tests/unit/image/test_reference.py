from __future__ import annotations

import pytest

from frakpy.errors import InvalidArgument
from frakpy.image.reference import is_image_id, parse

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest", "familiar"),
    [
        ("busybox", "docker.io", "library/busybox", "latest", None, "busybox:latest"),
        ("busybox:1.36", "docker.io", "library/busybox", "1.36", None, "busybox:1.36"),
        ("library/busybox", "docker.io", "library/busybox", "latest", None, "busybox:latest"),
        ("docker.io/library/busybox", "docker.io", "library/busybox", "latest", None, "busybox:latest"),
        ("index.docker.io/library/busybox", "docker.io", "library/busybox", "latest", None, "busybox:latest"),
        ("myorg/app:v1", "docker.io", "myorg/app", "v1", None, "myorg/app:v1"),
        ("registry.k8s.io/pause:3.9", "registry.k8s.io", "pause", "3.9", None, "registry.k8s.io/pause:3.9"),
        ("localhost/app", "localhost", "app", "latest", None, "localhost/app:latest"),
        ("localhost:5000/a/b/c:t", "localhost:5000", "a/b/c", "t", None, "localhost:5000/a/b/c:t"),
        ("127.0.0.1:5000/x", "127.0.0.1:5000", "x", "latest", None, "127.0.0.1:5000/x:latest"),
        (f"busybox@{D}", "docker.io", "library/busybox", None, D, f"busybox@{D}"),
        (f"q.io/a/b:t@{D}", "q.io", "a/b", "t", D, f"q.io/a/b:t@{D}"),
        ("Upper.io/lower", "Upper.io", "lower", "latest", None, "Upper.io/lower:latest"),
        ("a.io/x__y.z-w---v", "a.io", "x__y.z-w---v", "latest", None, "a.io/x__y.z-w---v:latest"),
    ],
)
def test_parse(text: str, registry: str, repository: str, tag: str | None, digest: str | None, familiar: str) -> None:
    ref = parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    assert ref.familiar == familiar
    assert parse(str(ref)) == ref


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("Busybox", "lowercase"),
        ("docker.io/Library/busybox", "lowercase"),
        ("busybox:", "invalid tag"),
        ("busybox:-x", "invalid tag"),
        ("busybox:" + "a" * 129, "invalid tag"),
        ("busybox@sha256:abc", "invalid digest"),
        ("busybox@sha256:" + "A" * 64, "lowercase"),
        ("a" * 64, "64-hex"),
        ("host:port/x", "invalid registry"),
        ("a//b", "path component"),
        ("a/b_", "path component"),
        ("-a.io/b", "invalid registry"),
        (" busybox", "whitespace"),
        ("x.io/" + "a" * 260, "longer than"),
    ],
)
def test_parse_errors(text: str, problem: str) -> None:
    with pytest.raises(InvalidArgument, match=problem):
        parse(text)


def test_helpers() -> None:
    ref = parse("q.io/a:t")
    assert ref.with_tag() == "q.io/a:t" and ref.with_digest(D) == f"q.io/a@{D}"
    assert ref.reference == "t" and parse(f"q.io/a:t@{D}").reference == D
    assert is_image_id(D) and is_image_id("a" * 64) and not is_image_id("busybox")
