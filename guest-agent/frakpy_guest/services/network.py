"""SetupNetwork: the pod NIC (over rtnetlink, frakpy_guest.rtnl) and /etc/hosts."""

from __future__ import annotations

import json
import logging
import time

from frakpy.agent.protocol import agent_pb2 as pb
from frakpy.agent.protocol.ttrpc import Code, ServerCall, TTRPCError

log = logging.getLogger("frakpy_guest.network")


async def setup_network(state, req: pb.SetupNetworkRequest, call: ServerCall) -> pb.SetupNetworkResponse:  # type: ignore[no-untyped-def]
    from frakpy_guest import netconf, rtnl

    name = ""
    if req.config_json:
        try:
            config = json.loads(req.config_json)
        except ValueError as exc:
            raise TTRPCError(Code.INVALID_ARGUMENT, f"config_json is not JSON: {exc}") from exc
        t0 = time.monotonic()
        try:
            # a handful of netlink round trips to the local kernel: done inline, no thread
            name = rtnl.apply(config)
        except rtnl.RtnlError as exc:
            raise TTRPCError(Code.FAILED_PRECONDITION, f"configuring the pod network: {exc}") from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TTRPCError(Code.INVALID_ARGUMENT, f"configuring the pod network: bad config: {exc}") from exc
        log.debug("pod network set up on %s in %.3f s", name, time.monotonic() - t0)
    if req.pod_ips:
        try:
            hosts = netconf.render_hosts(req.hostname, list(req.pod_ips), list(req.host_aliases))
        except ValueError as exc:
            raise TTRPCError(Code.INVALID_ARGUMENT, f"pod_ips: {exc}") from exc
        try:
            state.system.write_etc_file("hosts", hosts)
        except OSError as exc:
            raise TTRPCError(Code.INTERNAL, f"writing /etc/hosts: {exc}") from exc
    return pb.SetupNetworkResponse(interface=name or "")
