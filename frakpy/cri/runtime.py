"""Version, Status, RuntimeConfig, UpdateRuntimeConfig."""

from __future__ import annotations

import json
from typing import Any

from frakpy import __version__
from frakpy.cri.proto import api_pb2 as pb
from frakpy.runtime_status import RuntimeInfo

CRI_VERSION = "v1"
RUNTIME_NAME = "frakpy"


class RuntimeServicer:
    def __init__(self, info: RuntimeInfo) -> None:
        self.info = info

    async def Version(self, request: pb.VersionRequest, context: Any) -> pb.VersionResponse:
        return pb.VersionResponse(
            version="0.1.0", runtime_name=RUNTIME_NAME, runtime_version=__version__,
            runtime_api_version=CRI_VERSION,
        )

    async def Status(self, request: pb.StatusRequest, context: Any) -> pb.StatusResponse:
        conditions = [
            pb.RuntimeCondition(type=c.type, status=c.status, reason=c.reason, message=c.message)
            for c in self.info.conditions()
        ]
        handlers = [
            pb.RuntimeHandler(name=name, features=pb.RuntimeHandlerFeatures(
                recursive_read_only_mounts=False, user_namespaces=False))
            for name in self.info.handler_names()
        ]
        info: dict[str, str] = {}
        if request.verbose:
            info = {k: json.dumps(v, sort_keys=True) for k, v in self.info.verbose().items()}
        return pb.StatusResponse(
            status=pb.RuntimeStatus(conditions=conditions), info=info, runtime_handlers=handlers,
            features=pb.RuntimeFeatures(supplemental_groups_policy=False),
        )

    async def RuntimeConfig(self, request: pb.RuntimeConfigRequest, context: Any) -> pb.RuntimeConfigResponse:
        driver = pb.SYSTEMD if self.info.cfg.daemon.cgroup_driver == "systemd" else pb.CGROUPFS
        return pb.RuntimeConfigResponse(linux=pb.LinuxRuntimeConfiguration(cgroup_driver=driver))

    async def UpdateRuntimeConfig(self, request: pb.UpdateRuntimeConfigRequest,
                                  context: Any) -> pb.UpdateRuntimeConfigResponse:
        cidr = request.runtime_config.network_config.pod_cidr
        if cidr:
            self.info.set_pod_cidr(cidr)
        return pb.UpdateRuntimeConfigResponse()
