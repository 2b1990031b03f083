"""SetupNetwork: the pod NIC (frakpy_guest.netconf, owned by the network code) and /etc/hosts."""

from __future__ import annotations

import json

from frakpy.agent.protocol import agent_pb2 as pb
from frakpy.agent.protocol.ttrpc import Code, ServerCall, TTRPCError


async def setup_network(state, req: pb.SetupNetworkRequest, call: ServerCall) -> pb.SetupNetworkResponse:  # type: ignore[no-untyped-def]
    from frakpy_guest import netconf

    name = ""
    if req.config_json:
        try:
            config = json.loads(req.config_json)
        except ValueError as exc:
            raise TTRPCError(Code.INVALID_ARGUMENT, f"config_json is not JSON: {exc}") from exc
        try:
            name = netconf.apply(config)
        except netconf.NetconfError as exc:
            raise TTRPCError(Code.FAILED_PRECONDITION, str(exc)) from exc
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
