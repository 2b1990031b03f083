"""Wire the daemon's parts together: stores, managers, CRI servicers."""

from __future__ import annotations

import logging

import grpc

from frakpy.config import Config
from frakpy.cri import server as cri_server
from frakpy.cri.runtime import RuntimeServicer
from frakpy.cri.sandbox import SandboxServicer
from frakpy.network.pod import PodNetwork
from frakpy.runtime_status import RuntimeInfo
from frakpy.sandbox.manager import SandboxManager
from frakpy.sandbox.network import SandboxNetwork
from frakpy.store.db import Database
from frakpy.store.records import SandboxRecords
from frakpy.vm.qemu import disable_thp_for_children

log = logging.getLogger("frakpy.runtime")


class Runtime:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(cfg.state_dir / "frakpy.db")
        self.network = SandboxNetwork(PodNetwork(
            cfg.cni.conf_dir, cfg.cni.bin_dirs, state_dir=str(cfg.run_dir / "network"),
            netns_dir=cfg.cni.netns_dir, timeout=cfg.cni.plugin_timeout_s,
        ))
        self.sandboxes = SandboxManager(cfg, SandboxRecords(self.db), self.network)
        self.info = RuntimeInfo(cfg, self.db, self.network.status)

    async def start(self) -> None:
        if any(h.disable_thp for h in self.cfg.handlers.values()):
            disable_thp_for_children()
        await self.sandboxes.recover()

    def grpc_server(self) -> grpc.aio.Server:
        return cri_server.build(
            runtime_impls=[RuntimeServicer(self.info), SandboxServicer(self.sandboxes)],
            image_impls=[],
        )

    async def close(self) -> None:
        await self.sandboxes.close()
        self.db.close()
