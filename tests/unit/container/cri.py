"""Build specs from realistic input: CRI protos round-tripped through MessageToDict."""

from __future__ import annotations

import base64
from typing import Any

from google.protobuf import json_format

from frakpy.container.spec import ImageConfig, build_spec
from frakpy.cri.proto import api_pb2 as pb

CID = "c0ffee" * 10 + "abcd"
SID = "5ab" * 20 + "0123"


def as_cri_dict(message_type: type, data: dict[str, Any]) -> dict[str, Any]:
    """What the runtime hands to build_spec: defaults dropped, int64 as strings, enums as names."""
    msg = json_format.ParseDict(data, message_type())
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def env(key: str, value: str) -> dict[str, str]:
    return {"key": key, "value": base64.b64encode(value.encode()).decode()}


def spec_for(
    container: dict[str, Any] | None = None,
    sandbox: dict[str, Any] | None = None,
    image: ImageConfig | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    c = {"metadata": {"name": "app"}, "image": {"image": "docker.io/library/busybox:1.36"}}
    c.update(container or {})
    s = {"metadata": {"name": "pod", "namespace": "default", "uid": "uid-1"}, "hostname": "pod-host"}
    s.update(sandbox or {})
    kwargs.setdefault("resolve_mount", lambda host: "/run/frakpy/shares/" + host.strip("/").replace("/", "_"))
    return build_spec(
        as_cri_dict(pb.ContainerConfig, c),
        as_cri_dict(pb.PodSandboxConfig, s),
        image or ImageConfig(cmd=["sh"]),
        container_id=CID,
        sandbox_id=SID,
        **kwargs,
    )


def security(**sc: Any) -> dict[str, Any]:
    """A container config fragment with this LinuxContainerSecurityContext."""
    return {"linux": {"security_context": sc}}
