"""CRI messages ⇄ domain objects. Nothing outside cri/ imports the pb2 modules."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format

from frakpy.container.model import Container, ContainerState
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
            "rootfs": sb.vm.rootfs, "root_device": sb.vm.root_device, "run_dir": sb.vm.run_dir,
            "vsock": {"backend": sb.vm.vsock_backend, "cid": sb.vm.vsock_cid} if sb.vm.transport == "vsock" else {},
            "boot": sb.vm.boot,
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


# --- containers ------------------------------------------------------------------------------

_CSTATE_TO_PB = {
    ContainerState.CREATED: pb.CONTAINER_CREATED, ContainerState.RUNNING: pb.CONTAINER_RUNNING,
    ContainerState.EXITED: pb.CONTAINER_EXITED, ContainerState.UNKNOWN: pb.CONTAINER_UNKNOWN,
}
_CSTATE_FROM_PB = {v: k for k, v in _CSTATE_TO_PB.items()}


def container_config(c: pb.ContainerConfig) -> dict[str, Any]:
    """ContainerConfig as plain data for build_spec (KeyValue.value stays base64: spec.py decodes it)."""
    return dict(json_format.MessageToDict(c, preserving_proto_field_name=True))


def sandbox_config(c: pb.PodSandboxConfig) -> dict[str, Any]:
    return dict(json_format.MessageToDict(c, preserving_proto_field_name=True))


def _cmetadata(c: Container) -> pb.ContainerMetadata:
    return pb.ContainerMetadata(name=c.metadata.name, attempt=c.metadata.attempt)


def container(c: Container) -> pb.Container:
    return pb.Container(
        id=c.id, pod_sandbox_id=c.sandbox_id, metadata=_cmetadata(c), image=pb.ImageSpec(image=c.image_ref),
        image_ref=c.image_id, image_id=c.image_id, state=_CSTATE_TO_PB[c.state], created_at=c.created_at,
        labels=c.labels, annotations=c.annotations,
    )


def container_status(c: Container) -> pb.ContainerStatus:
    return pb.ContainerStatus(
        id=c.id, metadata=_cmetadata(c), state=_CSTATE_TO_PB[c.state], created_at=c.created_at,
        started_at=c.started_at, finished_at=c.finished_at, exit_code=c.exit_code,
        image=pb.ImageSpec(image=c.image_ref), image_ref=c.image_id, image_id=c.image_id,
        reason=c.reason, message=c.message, labels=c.labels, annotations=c.annotations, log_path=c.log_path,
    )


def container_verbose_info(c: Container) -> dict[str, str]:
    info = {"sandboxID": c.sandbox_id, "pid": c.pid, "imageMountId": c.image_mount_id,
            "stopSignal": c.stop_signal, "outputOffset": c.output_offset, "config": c.config}
    return {"info": json.dumps(info, sort_keys=True)}


def container_filter(f: pb.ContainerFilter) -> dict[str, Any]:
    return {
        "id_prefix": f.id,
        "state": _CSTATE_FROM_PB[f.state.state] if f.HasField("state") else None,
        "sandbox_id": f.pod_sandbox_id,
        "labels": dict(f.label_selector),
    }


def linux_resources(r: pb.LinuxContainerResources) -> dict[str, Any]:
    return dict(json_format.MessageToDict(r, preserving_proto_field_name=True))


def pod_sandbox_stats(sb: Sandbox, vm: Any, per: list[tuple[Container, Any]],
                      nano_cores: dict[str, int] | None = None) -> pb.PodSandboxStats:
    nano_cores = nano_cores or {}
    u64 = pb.UInt64Value
    ts = vm.timestamp_ns
    ifaces = [pb.NetworkInterfaceUsage(name=i.name, rx_bytes=u64(value=i.rx_bytes), rx_errors=u64(value=i.rx_errors),
                                       tx_bytes=u64(value=i.tx_bytes), tx_errors=u64(value=i.tx_errors))
              for i in vm.interfaces if i.name != "lo"]
    default = next((i for i in ifaces if i.name == "eth0"), ifaces[0] if ifaces else None)
    return pb.PodSandboxStats(
        attributes=pb.PodSandboxAttributes(id=sb.id, metadata=_metadata(sb), labels=sb.labels,
                                           annotations=sb.annotations),
        linux=pb.LinuxPodSandboxStats(
            cpu=pb.CpuUsage(timestamp=ts, usage_core_nano_seconds=u64(value=vm.cpu_usage_ns)),
            memory=pb.MemoryUsage(timestamp=ts, working_set_bytes=u64(value=vm.memory_working_set_bytes),
                                  available_bytes=u64(value=vm.memory_available_bytes),
                                  usage_bytes=u64(value=vm.memory_total_bytes - vm.memory_available_bytes)),
            network=pb.NetworkUsage(timestamp=ts, default_interface=default, interfaces=ifaces),
            containers=[container_stats(c, s, nano_cores.get(c.id)) for c, s in per],
        ),
    )


def container_stats(c: Container, s: Any, nano_cores: int | None = None) -> pb.ContainerStats:
    u64 = pb.UInt64Value
    cpu = pb.CpuUsage(timestamp=s.timestamp_ns, usage_core_nano_seconds=u64(value=s.cpu_usage_ns))
    if nano_cores is not None:
        cpu.usage_nano_cores.value = nano_cores
    return pb.ContainerStats(
        attributes=pb.ContainerAttributes(id=c.id, metadata=_cmetadata(c), labels=c.labels,
                                          annotations=c.annotations),
        cpu=cpu,
        memory=pb.MemoryUsage(
            timestamp=s.timestamp_ns, working_set_bytes=u64(value=s.memory_working_set_bytes),
            available_bytes=u64(value=s.memory_available_bytes), usage_bytes=u64(value=s.memory_usage_bytes),
            rss_bytes=u64(value=s.memory_rss_bytes), page_faults=u64(value=s.page_faults),
            major_page_faults=u64(value=s.major_page_faults)),
        writable_layer=pb.FilesystemUsage(
            timestamp=s.timestamp_ns, fs_id=pb.FilesystemIdentifier(mountpoint="/"),
            used_bytes=u64(value=s.writable_layer_bytes), inodes_used=u64(value=s.writable_layer_inodes)),
    )
