"""Wire the daemon's parts together: stores, managers, CRI servicers."""

from __future__ import annotations

import logging

import grpc

from frakpy.config import Config
from frakpy.container.manager import ContainerManager
from frakpy.container.streams import ContainerStreams
from frakpy.cri import server as cri_server
from frakpy.cri.container import ContainerServicer
from frakpy.cri.image import ImageServicer
from frakpy.cri.progress import ProgressServicer
from frakpy.cri.runtime import RuntimeServicer
from frakpy.cri.sandbox import SandboxServicer
from frakpy.image.registry import PullConfig, RegistryConfig
from frakpy.image.store import ImageStore
from frakpy.network.pod import PodNetwork
from frakpy.runtime_status import RuntimeInfo
from frakpy.sandbox.manager import SandboxManager
from frakpy.sandbox.network import SandboxNetwork
from frakpy.store.db import Database
from frakpy.store.records import ContainerRecords, SandboxRecords
from frakpy.streaming.server import StreamingServer
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
            multiqueue=cfg.cni.tap_queues > 1, queues=cfg.cni.tap_queues,
        ))
        self.sandboxes = SandboxManager(cfg, SandboxRecords(self.db), self.network)
        self.info = RuntimeInfo(cfg, self.db, self.network.status)
        self.info.templates = self.sandboxes.templates
        self.images = ImageStore(self.db, cfg.state_dir, pull_config(cfg),
                                 compression="" if cfg.image.compression == "none" else cfg.image.compression,
                                 in_use=lambda image_id: self.containers.image_in_use(image_id))
        self.containers = ContainerManager(cfg, ContainerRecords(self.db), self.sandboxes, self.images)
        # exec / attach / port-forward: CRI returns URLs of this server, which drives the agents
        self.streaming = StreamingServer(cfg.streaming, ContainerStreams(self.containers, self.sandboxes))

    async def start(self) -> None:
        if any(h.disable_thp for h in self.cfg.handlers.values()):
            disable_thp_for_children()
        await self.sandboxes.recover()
        await self.containers.recover()
        await self.streaming.start()

    def grpc_server(self) -> grpc.aio.Server:
        return cri_server.build(
            runtime_impls=[RuntimeServicer(self.info), SandboxServicer(self.sandboxes, self.containers, self.streaming),
                           ContainerServicer(self.containers, self.streaming)],
            image_impls=[ImageServicer(self.images)],
            progress_impls=[ProgressServicer(self.images)],
        )

    async def close(self) -> None:
        await self.streaming.close()
        await self.containers.close()
        await self.sandboxes.close()
        await self.images.aclose()
        self.db.close()


def pull_config(cfg: Config) -> PullConfig:
    """The [image] and [registries.*] config tables as the registry client takes them."""
    return PullConfig(
        registries=[RegistryConfig(name=name, endpoints=list(r.endpoints), insecure=r.insecure, ca_file=r.ca_file,
                                   skip_verify=r.skip_verify, fallback_to_origin=r.fallback_to_origin)
                    for name, r in cfg.registries.items()],
        platform=cfg.image.platform,
        max_concurrent_downloads=cfg.image.max_concurrent_downloads,
        retries=cfg.image.retries,
    )
