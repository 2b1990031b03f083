"""CRI messages ⇄ domain objects. Nothing outside cri/ imports the pb2 modules."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format

from frakpy.cri.proto import api_pb2 as pb
from frakpy.sandbox.manager import DNS, RunRequest
from frakpy.sandbox.model import Sandbox, SandboxMetadata, SandboxState

_STATE_TO_PB = {SandboxState.READY: pb.SANDBOX_READY, SandboxState.NOTREADY: pb.SANDBOX_NOTREADY}
_STATE_FROM_PB = {pb.SANDBOX_READY: SandboxState.READY, pb.SANDBOX_NOTREADY: SandboxState.NOTREADY}


def run_request(req: pb.RunPodSandboxRequest) -> RunRequest:
    c = req.config
    ns = c.linux.security_context.namespace_options
    return RunRequest(
        metadata=SandboxMetadata(c.metadata.name, c.metadata.namespace, c.metadata.uid, c.metadata.attempt),
        runtime_handler=req.runtime_handler,
        hostname=c.hostname,
        log_directory=c.log_directory,
        labels=dict(c.labels),
        annotations=dict(c.annotations),
        dns=DNS(list(c.dns_config.servers), list(c.dns_config.searches), list(c.dns_config.options)),
        port_mappings=[
            {"protocol": pb.Protocol.Name(p.protocol).lower(), "containerPort": p.container_port,
             "hostPort": p.host_port, "hostIP": p.host_ip}
            for p in c.port_mappings if p.host_port
        ],
        network_mode=ns.network, pid_mode=ns.pid, ipc_mode=ns.ipc,
        config=json_format.MessageToDict(c, preserving_proto_field_name=True),
    )


def _metadata(sb: Sandbox) -> pb.PodSandboxMetadata:
    md = sb.metadata
    return pb.PodSandboxMetadata(name=md.name, namespace=md.namespace, uid=md.uid, attempt=md.attempt)


def pod_sandbox(sb: Sandbox) -> pb.PodSandbox:
    return pb.PodSandbox(
        id=sb.id, metadata=_metadata(sb), state=_STATE_TO_PB[sb.state], created_at=sb.created_at,
        labels=sb.labels, annotations=sb.annotations, runtime_handler=sb.runtime_handler,
    )


def pod_sandbox_status(sb: Sandbox) -> pb.PodSandboxStatus:
    ips = list(sb.network.get("ips", [])) if sb.state is SandboxState.READY else []
    network = pb.PodSandboxNetworkStatus(
        ip=ips[0] if ips else "", additional_ips=[pb.PodIP(ip=ip) for ip in ips[1:]],
    )
    ns = sb.config.get("linux", {}).get("security_context", {}).get("namespace_options", {})
    return pb.PodSandboxStatus(
        id=sb.id, metadata=_metadata(sb), state=_STATE_TO_PB[sb.state], created_at=sb.created_at,
        network=network,
        linux=pb.LinuxPodSandboxStatus(namespaces=pb.Namespace(options=pb.NamespaceOption(
            network=pb.NamespaceMode.Value(ns.get("network", "POD")),
            pid=pb.NamespaceMode.Value(ns.get("pid", "POD")),
            ipc=pb.NamespaceMode.Value(ns.get("ipc", "POD")),
        ))),
        labels=sb.labels, annotations=sb.annotations, runtime_handler=sb.runtime_handler,
    )


def sandbox_verbose_info(sb: Sandbox) -> dict[str, str]:
    info: dict[str, Any] = {
        "vm": {
            "pid": sb.vm.pid, "accelerator": sb.vm.accel, "accelerator_reason": sb.vm.accel_reason,
            "transport": sb.vm.transport, "agent": sb.vm.agent_uri, "machine": sb.vm.machine,
            "vcpus": sb.vm.vcpus, "memory_mib": sb.vm.memory_mib, "kernel": sb.vm.kernel,
            "rootfs": sb.vm.rootfs, "run_dir": sb.vm.run_dir, "boot": sb.vm.boot,
        },
        "network": {k: v for k, v in sb.network.items() if k != "cni_result"},
        "notready_reason": sb.notready_reason,
    }
    return {"info": json.dumps(info, sort_keys=True)}


def sandbox_filter(f: pb.PodSandboxFilter) -> dict[str, Any]:
    return {
        "id_prefix": f.id,
        "state": _STATE_FROM_PB[f.state.state] if f.HasField("state") else None,
        "labels": dict(f.label_selector),
    }
