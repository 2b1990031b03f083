"""SetupNetwork: the pod NIC (busybox `ip` fast path, netconf/pyroute2 fallback) and /etc/hosts."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Any

from frakpy.agent.protocol import agent_pb2 as pb
from frakpy.agent.protocol.ttrpc import Code, ServerCall, TTRPCError

log = logging.getLogger("frakpy_guest.network")


async def _apply_with_pyroute2(config: dict[str, Any]) -> str:
    # The agent blocks `ssl` at start-up to keep asyncio's import cheap; pyroute2 needs it.
    if "ssl" in sys.modules and sys.modules["ssl"] is None:
        del sys.modules["ssl"]
    from frakpy_guest import netconf

    try:
        return await asyncio.to_thread(netconf.apply, config)  # pyroute2 blocks on netlink
    except netconf.NetconfError as exc:
        raise TTRPCError(Code.FAILED_PRECONDITION, str(exc)) from exc


async def setup_network(state, req: pb.SetupNetworkRequest, call: ServerCall) -> pb.SetupNetworkResponse:  # type: ignore[no-untyped-def]
    from frakpy_guest import ipconf, netconf

    name = ""
    if req.config_json:
        try:
            config = json.loads(req.config_json)
        except ValueError as exc:
            raise TTRPCError(Code.INVALID_ARGUMENT, f"config_json is not JSON: {exc}") from exc
        try:
            try:
                if "pyroute2" in sys.modules:  # warmed up in a VM template: netlink, no processes
                    t0 = time.monotonic()
                    name = await _apply_with_pyroute2(config)
                    log.info("network set up over netlink in %.3f s", time.monotonic() - t0)
                else:
                    name = await ipconf.apply(state, config)
            except ipconf.IpconfError as exc:
                if "netconf" not in str(exc):
                    raise TTRPCError(Code.FAILED_PRECONDITION, str(exc)) from exc
                name = await _apply_with_pyroute2(config)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TTRPCError(Code.INTERNAL, f"configuring the pod network: {exc}") from exc
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
