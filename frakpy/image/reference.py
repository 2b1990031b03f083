"""Docker-style image references, parsed and normalised the way kubelet and containerd do.

``busybox`` -> ``docker.io/library/busybox:latest``; ``host:port/repo:tag``; ``repo@sha256:<hex>``;
``repo:tag@sha256:<hex>`` keeps both (the digest decides what is pulled). The grammar is the one of
the distribution project's reference package: lowercase path components separated by ``/`` with
``.``, ``_``, ``__`` or runs of ``-`` inside, an optional domain first (it has a ``.`` or a ``:``, or
is ``localhost``), a tag of at most 128 word characters, dots and dashes, and a digest
``algorithm:hex``. Anything else is an :class:`InvalidArgument` naming what is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from frakpy.errors import InvalidArgument

DEFAULT_REGISTRY = "docker.io"
LEGACY_DEFAULT_REGISTRY = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_MAX = 255

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?$")
_PATH_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}$")
_SHA256_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Reference:
    """A normalised image reference. ``tag`` is ``latest`` when neither tag nor digest was given."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``registry/repository``, the part before the tag."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    @property
    def familiar(self) -> str:
        """The short form docker prints: ``busybox:latest``, ``myorg/app:1``, ``host:5000/x:y``."""
        name = self.name
        if self.registry == DEFAULT_REGISTRY:
            name = self.repository
            if name.startswith(OFFICIAL_REPO_PREFIX) and "/" not in name[len(OFFICIAL_REPO_PREFIX) :]:
                name = name[len(OFFICIAL_REPO_PREFIX) :]
        if self.tag:
            name += f":{self.tag}"
        if self.digest:
            name += f"@{self.digest}"
        return name

    @property
    def reference(self) -> str:
        """What to ask the registry's manifest endpoint for: the digest if any, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_tag(self) -> str | None:
        """``registry/repo:tag`` (a repo tag as CRI reports it), or None without a tag."""
        return f"{self.name}:{self.tag}" if self.tag else None

    def with_digest(self, digest: str) -> str:
        """``registry/repo@digest`` (a repo digest as CRI reports it)."""
        return f"{self.name}@{digest}"


def parse(text: str) -> Reference:
    """Parse and normalise ``text``; raises InvalidArgument naming the problem."""
    if not isinstance(text, str) or not text:
        raise InvalidArgument("image reference is empty; give a name such as busybox or registry:5000/app:1")
    if text != text.strip():
        raise InvalidArgument(f"image reference {text!r} has surrounding whitespace")
    if _HEX64_RE.match(text):
        raise InvalidArgument(
            f"image reference {text!r} is a 64-hex identifier, not a name; use sha256:{text} to name an image id"
        )
    rest = text
    digest = None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST_RE.match(digest):
            raise InvalidArgument(f"image reference {text!r}: invalid digest {digest!r} (want algorithm:hex)")
        algorithm, hexpart = digest.split(":", 1)
        if algorithm == "sha256" and len(hexpart) != 64:
            raise InvalidArgument(f"image reference {text!r}: sha256 digest must have 64 hex digits")
        if hexpart != hexpart.lower():
            raise InvalidArgument(f"image reference {text!r}: digest hex must be lowercase")
    tag = None
    last_slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > last_slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise InvalidArgument(
                f"image reference {text!r}: invalid tag {tag!r} (letters, digits, _ . -, at most 128, "
                "not starting with . or -)"
            )
    if not rest:
        raise InvalidArgument(f"image reference {text!r} has no repository name")
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        registry, path = first, remainder
        if not _DOMAIN_RE.match(registry):
            raise InvalidArgument(f"image reference {text!r}: invalid registry host {registry!r}")
        if registry == LEGACY_DEFAULT_REGISTRY:
            registry = DEFAULT_REGISTRY
    else:
        registry, path = DEFAULT_REGISTRY, rest
    if registry == DEFAULT_REGISTRY and "/" not in path:
        path = OFFICIAL_REPO_PREFIX + path
    for component in path.split("/"):
        if not _PATH_COMPONENT_RE.match(component):
            if component.lower() != component and _PATH_COMPONENT_RE.match(component.lower()):
                raise InvalidArgument(f"image reference {text!r}: repository name must be lowercase")
            raise InvalidArgument(
                f"image reference {text!r}: invalid repository path component {component!r} "
                "(lowercase letters and digits, separated by . _ __ or -)"
            )
    if len(registry) + 1 + len(path) > NAME_TOTAL_MAX:
        raise InvalidArgument(f"image reference {text!r}: name longer than {NAME_TOTAL_MAX} characters")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry=registry, repository=path, tag=tag, digest=digest)


def is_image_id(text: str) -> bool:
    """True for ``sha256:<64 hex>`` (an image id = config digest) or a bare 64-hex id."""
    return bool(_SHA256_RE.match(text) or _HEX64_RE.match(text))


def normalize_id(text: str) -> str:
    return text if text.startswith("sha256:") else f"sha256:{text}"
