"""Typed configuration for frakpyd, read from ``/etc/frakpy/config.toml``.

The dataclasses below are the single source of truth: field docs come from the
``doc`` metadata, ``render_default()`` prints the complete commented default file
(`frakpy config default`), and ``load()`` rejects unknown keys and bad values with a
message naming the key. Runtime handlers (what a Kubernetes RuntimeClass selects) are
``[handlers.<name>]`` tables; ``frakpy`` is always present.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frakpy.errors import InvalidArgument

DEFAULT_PATH = Path("/etc/frakpy/config.toml")
DEFAULT_HANDLER = "frakpy"


def _f(default: Any, doc: str, *, choices: tuple[str, ...] = (), minimum: float | None = None,
       maximum: float | None = None) -> Any:
    meta = {"doc": doc, "choices": choices, "minimum": minimum, "maximum": maximum}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DaemonConfig:
    socket: str = _f("/run/frakpy/frakpy.sock",
                     "Unix socket where frakpyd serves CRI (kubelet's containerRuntimeEndpoint).")
    socket_mode: str = _f("0660", "Permission bits of the CRI socket, octal.")
    socket_group: str = _f("", "Group owning the CRI socket; empty keeps root's group.")
    state_dir: str = _f("/var/lib/frakpy", "Durable state: database, blobs, image filesystems, guest kernel and image.")
    run_dir: str = _f("/run/frakpy", "Runtime state: per-sandbox sockets, QEMU argv files, pidfiles, consoles.")
    log_level: str = _f("info", "Daemon log level.", choices=("debug", "info", "warning", "error"))
    log_format: str = _f("text", "Daemon log format: human text or one JSON object per line.",
                         choices=("text", "json"))
    cgroup_driver: str = _f("cgroupfs", "Cgroup driver reported to kubelet (RuntimeConfig).",
                            choices=("cgroupfs", "systemd"))
    default_handler: str = _f(DEFAULT_HANDLER, "Handler used when RunPodSandbox names none.")
    shutdown_grace_s: float = _f(5.0, "Seconds to finish in-flight RPCs on SIGTERM before closing.", minimum=0)


@dataclass
class GuestConfig:
    manifest: str = _f("", "guest.json written by images/build.py; empty means <state_dir>/guest/guest.json.")
    templates_dir: str = _f("", "Where VM templates are kept; empty means <state_dir>/templates.")


@dataclass
class CNIConfig:
    conf_dir: str = _f("/etc/cni/net.d", "Directory holding CNI network configs; the first by name is used.")
    bin_dirs: list[str] = _f(["/opt/cni/bin", "/usr/lib/cni"], "Directories searched, in order, for CNI plugins.")
    netns_dir: str = _f("/run/netns", "Where pod network namespaces are pinned (named frakpy-<pod id>).")
    plugin_timeout_s: float = _f(60.0, "Seconds a CNI plugin may run before it is killed.", minimum=1)
    tap_queues: int = _f(1, "Queues of each pod's tap and virtio-net NIC; 1 turns multi-queue off "
                            "(more helps only VMs with several vCPUs).", minimum=1)


@dataclass
class StreamingConfig:
    address: str = _f("127.0.0.1", "Address of the exec/attach/port-forward streaming server.")
    port: int = _f(0, "Port of the streaming server; 0 picks a free one.", minimum=0)
    token_ttl_s: float = _f(60.0, "Lifetime of a streaming URL's single-use token.", minimum=1)
    tls_cert: str = _f("", "PEM certificate of the streaming server; with tls_key serves HTTPS, empty = plain HTTP.")
    tls_key: str = _f("", "PEM private key matching tls_cert; empty = plain HTTP.")


@dataclass
class ImageConfig:
    platform: str = _f("linux/amd64", "Platform picked from multi-platform images, os/arch[/variant].")
    max_concurrent_downloads: int = _f(3, "Layer downloads running at once across all pulls.", minimum=1)
    retries: int = _f(4, "Retries of a registry request after a transient error (0 disables).", minimum=0)
    compression: str = _f("lz4", "Compression of the per-image EROFS filesystem.", choices=("lz4", "lz4hc", "none"))


@dataclass
class RegistryTable:
    """One registry, keyed by its host as written in image references: [registries."docker.io"]."""

    endpoints: list[str] = _f([], "Mirrors tried in order before the origin (https://..., or http:// to declare a "
                                  "plain-HTTP mirror).")
    insecure: bool = _f(False, "Reach the origin over plain HTTP (never guessed).")
    ca_file: str = _f("", "Extra CA certificates (PEM) trusted for this registry and its mirrors.")
    skip_verify: bool = _f(False, "Do not verify TLS certificates (testing only).")
    fallback_to_origin: bool = _f(True, "After the mirrors fail, try the origin; off for air-gapped nodes.")


@dataclass
class HandlerConfig:
    """A VM profile selected by a RuntimeClass's handler name."""

    vcpus: int = _f(1, "Virtual CPUs of each pod VM.", minimum=1)
    memory_mib: int = _f(256, "Guest RAM of each pod VM in MiB.", minimum=64)
    machine: str = _f("microvm", "QEMU machine type: microvm boots fastest; q35 and pc use PCI.",
                      choices=("microvm", "q35", "pc"))
    accelerator: str = _f("auto", "auto uses KVM only where it runs a normal guest, else TCG.",
                          choices=("auto", "kvm", "tcg"))
    tb_size_mib: int = _f(24, "TCG translation cache size in MiB (TCG only). A boot fills 32 MiB twice over; 24 "
                              "costs ~0.1 s of boot and saves ~9 MiB per VM, at 20 and below boots slow down fast.",
                          minimum=0)
    kernel: str = _f("", "Guest kernel (PVH vmlinux); empty takes the one in the guest manifest.")
    rootfs: str = _f("", "Guest root filesystem image; empty takes the one in the guest manifest.")
    kernel_params: str = _f("", "Extra guest kernel command-line parameters.")
    agent_transport: str = _f("auto", "Host-guest agent channel. auto: kernel vsock where /dev/vhost-vsock exists, "
                                      "else virtio-serial. vsock: kernel vsock, or where the host has none frakpy's "
                                      "own userspace vsock device (one small helper process per VM; no VM "
                                      "templates). serial: virtio-serial.",
                              choices=("auto", "vsock", "serial"))
    vsock_port: int = _f(1024, "vsock port the guest agent listens on (given to it on the kernel command line).",
                         minimum=1, maximum=0xFFFFFFFE)
    boot_timeout_s: float = _f(30.0, "Seconds for a VM to boot until its agent answers.", minimum=1)
    qemu_binary: str = _f("qemu-system-x86_64", "QEMU system emulator to run.")
    seccomp: bool = _f(True, "Run QEMU under its own seccomp sandbox (-sandbox on, ...).")
    qemu_capstone: bool = _f(False, "Let QEMU load the real libcapstone, its disassembler for debug output (-d "
                                    "in_asm, the monitor's x/i). false: QEMU loads the no-op stand-in images/build.py "
                                    "compiles (qemu_lib_dir in the guest manifest), ~1.3 MiB less memory per VM.")
    disable_thp: bool = _f(True, "Disable transparent huge pages for QEMU (saves ~8 MiB per idle VM).")
    template: bool = _f(True, "Start pods by restoring a saved VM of this handler (a VM template) instead of "
                              "booting; false gives every pod an independent boot (own kernel address layout).")
    root_dax: bool = _f(True, "Give the guest its root image as persistent memory read in place (DAX) rather than "
                              "a virtio-blk disk: the image's pages stay in the host page cache, shared by every "
                              "VM. Needs an EROFS image padded to 2 MiB and a kernel with X86_PMEM_LEGACY and "
                              "FS_DAX (images/build.py makes both); microvm only: other images and machines "
                              "use the disk.")
    free_page_reporting: bool = _f(True, "Give memory the guest frees back to the host (virtio-balloon free page "
                                         "reporting); handlers without templates only (see docs/architecture.md).")


@dataclass
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    guest: GuestConfig = field(default_factory=GuestConfig)
    cni: CNIConfig = field(default_factory=CNIConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    registries: dict[str, RegistryTable] = field(default_factory=dict)
    handlers: dict[str, HandlerConfig] = field(default_factory=lambda: {DEFAULT_HANDLER: HandlerConfig()})

    @property
    def state_dir(self) -> Path:
        return Path(self.daemon.state_dir)

    @property
    def run_dir(self) -> Path:
        return Path(self.daemon.run_dir)

    @property
    def templates_dir(self) -> Path:
        return Path(self.guest.templates_dir) if self.guest.templates_dir else self.state_dir / "templates"

    @property
    def guest_manifest(self) -> Path:
        return Path(self.guest.manifest) if self.guest.manifest else self.state_dir / "guest" / "guest.json"

    def handler(self, name: str) -> HandlerConfig:
        try:
            return self.handlers[name or self.daemon.default_handler]
        except KeyError:
            known = ", ".join(sorted(self.handlers))
            raise InvalidArgument(
                f"unknown runtime handler {name!r}: configured handlers are {known}"
                " (add a [handlers.<name>] table to the frakpy config)"
            ) from None


_SECTIONS: dict[str, type] = {
    "daemon": DaemonConfig,
    "guest": GuestConfig,
    "cni": CNIConfig,
    "streaming": StreamingConfig,
    "image": ImageConfig,
}


def _check_value(key: str, f: dataclasses.Field[Any], value: Any) -> Any:
    hint = typing.get_type_hints(_owner_of(f))[f.name]
    origin = typing.get_origin(hint)
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    elif origin is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:  # pragma: no cover - every field type is listed above
        ok = True
    if not ok:
        raise InvalidArgument(f"config key {key}: expected {_type_name(hint)}, got {value!r}")
    choices = f.metadata.get("choices") or ()
    if choices and value not in choices:
        raise InvalidArgument(f"config key {key}: {value!r} is not one of {', '.join(choices)}")
    minimum = f.metadata.get("minimum")
    if minimum is not None and value < minimum:
        raise InvalidArgument(f"config key {key}: {value!r} is below the minimum {minimum}")
    maximum = f.metadata.get("maximum")
    if maximum is not None and value > maximum:
        raise InvalidArgument(f"config key {key}: {value!r} is above the maximum {maximum}")
    return value


_OWNERS: dict[int, type] = {}


def _owner_of(f: dataclasses.Field[Any]) -> type:
    return _OWNERS[id(f)]


for _cls in (DaemonConfig, GuestConfig, CNIConfig, StreamingConfig, ImageConfig, RegistryTable, HandlerConfig):
    for _fld in dataclasses.fields(_cls):
        _OWNERS[id(_fld)] = _cls


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is list:
        return "a list of strings"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _build(cls: type, table: Any, prefix: str) -> Any:
    if not isinstance(table, dict):
        raise InvalidArgument(f"config key {prefix}: expected a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in table.items():
        if key not in fields:
            known = ", ".join(fields)
            raise InvalidArgument(f"config key {prefix}.{key} is unknown (known keys: {known})")
        kwargs[key] = _check_value(f"{prefix}.{key}", fields[key], value)
    return cls(**kwargs)


def parse(data: dict[str, Any]) -> Config:
    """Build a Config from parsed TOML, validating every key."""
    cfg = Config()
    for key, value in data.items():
        if key in _SECTIONS:
            setattr(cfg, key, _build(_SECTIONS[key], value, key))
        elif key == "handlers":
            if not isinstance(value, dict):
                raise InvalidArgument("config key handlers: expected tables [handlers.<name>]")
            handlers = {DEFAULT_HANDLER: HandlerConfig()}
            for name, table in value.items():
                if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
                    raise InvalidArgument(f"config key handlers.{name}: handler names are letters, digits, - _ .")
                handlers[name] = _build(HandlerConfig, table, f"handlers.{name}")
            cfg.handlers = handlers
        elif key == "registries":
            if not isinstance(value, dict):
                raise InvalidArgument('config key registries: expected tables [registries."<host>"]')
            cfg.registries = {name: _build(RegistryTable, table, f"registries.{name}")
                              for name, table in value.items()}
        else:
            known = ", ".join([*_SECTIONS, "registries", "handlers"])
            raise InvalidArgument(f"config key {key} is unknown (known sections: {known})")
    if cfg.daemon.default_handler not in cfg.handlers:
        raise InvalidArgument(
            f"config key daemon.default_handler: handler {cfg.daemon.default_handler!r} is not configured"
        )
    try:
        int(cfg.daemon.socket_mode, 8)
    except ValueError:
        raise InvalidArgument(f"config key daemon.socket_mode: {cfg.daemon.socket_mode!r} is not octal") from None
    return cfg


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Read the config file; a missing file at the default path means all defaults."""
    p = Path(path) if path else DEFAULT_PATH
    if not p.exists():
        if path:
            raise InvalidArgument(f"config file {p} does not exist")
        return Config()
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"config file {p}: {exc}") from exc
    return parse(data)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _render_table(header: str, obj: Any) -> list[str]:
    lines = [f"[{header}]"]
    for f in dataclasses.fields(obj):
        lines.append(f"# {f.metadata['doc']}")
        if f.metadata.get("choices"):
            lines.append(f"# One of: {', '.join(f.metadata['choices'])}.")
        lines.append(f"{f.name} = {_toml_value(getattr(obj, f.name))}")
    return lines


def render_default() -> str:
    """The complete default config file, every key with its documentation."""
    cfg = Config()
    out = [
        "# frakpy configuration (/etc/frakpy/config.toml).",
        "# Every key is shown with its default; unknown keys stop frakpyd with an error.",
        "",
    ]
    for name in _SECTIONS:
        out += _render_table(name, getattr(cfg, name)) + [""]
    out += [
        "# Per-registry settings, keyed by the registry host as written in image references.",
        "# Example (air-gapped node mapping registry.k8s.io to a local registry):",
        '# [registries."registry.k8s.io"]',
    ]
    out += ["# " + line for line in _render_table("x", RegistryTable())[1:]]
    out += [
        "",
        "# Runtime handlers: a Kubernetes RuntimeClass's `handler` selects one by name.",
        "# Add more tables, e.g. [handlers.frakpy-large] with vcpus = 2, memory_mib = 1024.",
    ]
    out += _render_table(f"handlers.{DEFAULT_HANDLER}", cfg.handlers[DEFAULT_HANDLER]) + [""]
    return "\n".join(out)


def as_dict(cfg: Config) -> dict[str, Any]:
    """Plain-data view, shown by Status verbose."""
    return dataclasses.asdict(cfg)

