"""Container Network Interface: loading network configs and running plugins.

Config selection follows containerd: the first file by lexical name in the conf dir ending in
``.conflist``, ``.conf`` or ``.json`` is the pod network. A ``.conflist`` is a plugin chain; a
``.conf``/``.json`` is one plugin config, wrapped as a one-element chain. A file that does not
parse makes the network "not ready" (we do not fall through to the next file, so a typo never
silently switches networks).

Plugins are executables named by each entry's ``type``, found in the first bin dir that has
them. Each call gets the CNI_* environment and, on stdin, the plugin's own config with the
list's ``name`` and ``cniVersion``, ``prevResult`` (ADD: the previous plugin's result; DEL and
CHECK: the cached result of the ADD, for cniVersion >= 0.4.0) and ``runtimeConfig`` holding only
the capabilities that plugin declares in ``capabilities``.

Error choice: every failure of a plugin (non-zero exit, unreadable output, timeout) is a
:class:`CNIError`, a subclass of :class:`~frakpy.errors.Unavailable`. From kubelet's point of
view a failed CNI ADD/DEL is retried (IPAM exhausted, "try again later" code 11, iptables
lock, a plugin not yet installed by a DaemonSet), so UNAVAILABLE is the honest code. A
missing or broken configuration is :class:`~frakpy.errors.FailedPrecondition` (the node is
not set up) and also shows in :meth:`CNI.status` as NetworkReady=false. The plugin's JSON
error is kept verbatim in ``cni_code``/``cni_msg``/``details`` (note: ``code`` on frakpy errors
is the gRPC status name, hence the ``cni_`` prefix).
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from frakpy.errors import FailedPrecondition, InvalidArgument, Unavailable

DEFAULT_CONF_DIR = "/etc/cni/net.d"
DEFAULT_BIN_DIRS = ("/opt/cni/bin", "/usr/lib/cni")
CONF_EXTENSIONS = (".conflist", ".conf", ".json")
DEFAULT_IFNAME = "eth0"
DEFAULT_TIMEOUT_S = 60.0
NOT_READY_REASON = "NetworkPluginNotReady"

# The loopback "network" containerd runs in every pod netns, before the pod network.
LOOPBACK_CONF: dict[str, Any] = {"cniVersion": "0.3.1", "name": "cni-loopback", "type": "loopback"}

# Error codes reserved by the CNI spec (plugins use 100+ for their own).
CNI_ERROR_CODES = {
    1: "incompatible CNI version",
    2: "unsupported field in network configuration",
    3: "container unknown or does not exist",
    4: "invalid necessary environment variables",
    5: "I/O failure",
    6: "failed to decode content",
    7: "invalid network config",
    11: "try again later",
}


def parse_version(v: str) -> tuple[int, int, int]:
    """'0.4.0' -> (0, 4, 0). A missing version means 0.1.0 (CNI version-decoding rule)."""
    if not v:
        return (0, 1, 0)
    parts = v.split(".")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise InvalidArgument(f"cniVersion {v!r} is not a version like 1.0.0") from None
    while len(nums) < 3:
        nums.append(0)
    return (nums[0], nums[1], nums[2])


# --------------------------------------------------------------------------------------- errors


class CNIError(Unavailable):
    """A CNI plugin failed. ``cni_code``/``cni_msg``/``details`` are the plugin's JSON error,
    verbatim (``cni_code`` is None when the plugin did not print one: crash, timeout)."""

    def __init__(
        self,
        message: str,
        *,
        cni_code: int | None = None,
        cni_msg: str = "",
        details: str = "",
        plugin: str = "",
        command: str = "",
        network: str = "",
        errors: Sequence[CNIError] = (),
    ) -> None:
        super().__init__(message)
        self.cni_code = cni_code
        self.cni_msg = cni_msg
        self.details = details
        self.plugin = plugin
        self.command = command
        self.network = network
        self.errors = list(errors)


def plugin_error(
    *, plugin: str, command: str, network: str, returncode: int, stdout: bytes, stderr: bytes
) -> CNIError:
    """Build a CNIError from a failed plugin run: its stdout JSON error when it printed one,
    else its stderr/stdout text."""
    code: int | None = None
    msg = ""
    details = ""
    try:
        doc = json.loads(stdout.decode() or "null")
    except (ValueError, UnicodeDecodeError):
        doc = None
    if isinstance(doc, dict) and ("code" in doc or "msg" in doc):
        raw_code = doc.get("code")
        code = raw_code if isinstance(raw_code, int) else None
        msg = str(doc.get("msg", ""))
        details = str(doc.get("details", "") or "")
    else:
        text = (stderr or stdout).decode(errors="replace").strip()
        msg = text or f"exited with status {returncode} and no output"
    where = f"CNI plugin {plugin!r} {command} (network {network!r})"
    text = f"{where} failed: {msg}"
    if details:
        text += f"; details: {details}"
    if code is not None:
        meaning = CNI_ERROR_CODES.get(code)
        text += f" [CNI error code {code}{': ' + meaning if meaning else ''}]"
    return CNIError(
        text, cni_code=code, cni_msg=msg, details=details, plugin=plugin, command=command, network=network
    )


# ------------------------------------------------------------------------------ configuration


@dataclass
class NetworkConfigList:
    """A CNI network: name, version and the ordered plugin configs (raw dicts)."""

    name: str
    cni_version: str
    plugins: list[dict[str, Any]]
    disable_check: bool = False
    source: str = ""

    @classmethod
    def from_dict(cls, doc: Any, source: str = "<memory>", single: bool = False) -> NetworkConfigList:
        if not isinstance(doc, dict):
            raise FailedPrecondition(f"CNI config {source}: top level must be a JSON object")
        if single:
            if "plugins" in doc and "type" not in doc:
                raise FailedPrecondition(
                    f"CNI config {source} is a plugin list; rename it to end in .conflist"
                )
            if not doc.get("type"):
                raise FailedPrecondition(f'CNI config {source}: network type not found (set "type")')
            plugins: list[dict[str, Any]] = [doc]
            disable_check = False
        else:
            raw_plugins = doc.get("plugins")
            if not isinstance(raw_plugins, list) or not raw_plugins:
                raise FailedPrecondition(f'CNI config list {source} has no plugins (set "plugins": [...])')
            plugins = raw_plugins
            for i, p in enumerate(plugins):
                if not isinstance(p, dict) or not p.get("type"):
                    raise FailedPrecondition(f'CNI config list {source}: plugin #{i} has no "type"')
            dc = doc.get("disableCheck", False)
            disable_check = dc is True or (isinstance(dc, str) and dc.lower() == "true")
        name = doc.get("name")
        if not isinstance(name, str) or not name:
            raise FailedPrecondition(f'CNI config {source}: missing network "name"')
        version = doc.get("cniVersion", "") or ""
        if not isinstance(version, str):
            raise FailedPrecondition(f"CNI config {source}: cniVersion must be a string")
        try:
            parse_version(version)
        except InvalidArgument as exc:
            raise FailedPrecondition(f"CNI config {source}: {exc}") from None
        return cls(
            name=name,
            cni_version=version or "0.1.0",
            plugins=[copy.deepcopy(p) for p in plugins],
            disable_check=disable_check,
            source=source,
        )

    @classmethod
    def from_bytes(
        cls, data: bytes | str, source: str = "<memory>", single: bool = False
    ) -> NetworkConfigList:
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise FailedPrecondition(f"CNI config {source} is not valid JSON: {exc}") from None
        return cls.from_dict(doc, source, single)

    @classmethod
    def from_file(cls, path: str) -> NetworkConfigList:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise FailedPrecondition(f"cannot read CNI config {path}: {exc.strerror}") from None
        return cls.from_bytes(data, path, single=not path.endswith(".conflist"))

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"cniVersion": self.cni_version, "name": self.name, "plugins": self.plugins}
        if self.disable_check:
            doc["disableCheck"] = True
        return doc

    @property
    def version(self) -> tuple[int, int, int]:
        return parse_version(self.cni_version)


def config_files(conf_dir: str) -> list[str]:
    """Candidate config files in the conf dir, in lexical order."""
    try:
        names = sorted(os.listdir(conf_dir))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise FailedPrecondition(f"cannot list CNI conf dir {conf_dir}: {exc.strerror}") from None
    return [
        os.path.join(conf_dir, n)
        for n in names
        if n.endswith(CONF_EXTENSIONS) and os.path.isfile(os.path.join(conf_dir, n))
    ]


def load_network(conf_dir: str) -> NetworkConfigList:
    """The pod network: the first config in ``conf_dir`` by name (containerd's choice)."""
    files = config_files(conf_dir)
    if not files:
        raise FailedPrecondition(
            f"no CNI network config in {conf_dir} (*.conflist, *.conf, *.json); install one "
            "(frakpy installs a default bridge network when the directory is empty)"
        )
    return NetworkConfigList.from_file(files[0])


# ----------------------------------------------------------------------------- runtime inputs


@dataclass
class PortMapping:
    """A CRI port mapping in CNI ``portMappings`` shape."""

    container_port: int
    host_port: int
    protocol: str = "tcp"
    host_ip: str = ""

    def to_cni(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "hostPort": self.host_port,
            "containerPort": self.container_port,
            "protocol": self.protocol.lower(),
        }
        if self.host_ip:
            doc["hostIP"] = self.host_ip
        return doc


@dataclass
class DNSConfig:
    """CRI DNSConfig; also what the CNI ``dns`` capability receives."""

    servers: list[str] = field(default_factory=list)
    searches: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)

    def to_cni(self) -> dict[str, Any]:
        return {"servers": list(self.servers), "searches": list(self.searches), "options": list(self.options)}


def k8s_args(namespace: str, pod_name: str, sandbox_id: str, pod_uid: str) -> list[tuple[str, str]]:
    """The CNI_ARGS kubelet-era runtimes pass (same keys and order as containerd)."""
    return [
        ("IgnoreUnknown", "1"),
        ("K8S_POD_NAMESPACE", namespace),
        ("K8S_POD_NAME", pod_name),
        ("K8S_POD_INFRA_CONTAINER_ID", sandbox_id),
        ("K8S_POD_UID", pod_uid),
    ]


def format_cni_args(args: Iterable[tuple[str, str]]) -> str:
    out = []
    for k, v in args:
        if ";" in k + v or "=" in k + v:
            raise InvalidArgument(f"CNI_ARGS entry {k}={v!r} contains ';' or '='; these separate entries")
        out.append(f"{k}={v}")
    return ";".join(out)


@dataclass
class RuntimeConf:
    """Per-attachment inputs: who, where, and the capability arguments."""

    container_id: str
    netns: str
    ifname: str = DEFAULT_IFNAME
    args: list[tuple[str, str]] = field(default_factory=list)
    capability_args: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "containerId": self.container_id,
            "netns": self.netns,
            "ifname": self.ifname,
            "args": [list(a) for a in self.args],
            "capabilityArgs": self.capability_args,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> RuntimeConf:
        return cls(
            container_id=doc["containerId"],
            netns=doc.get("netns", ""),
            ifname=doc.get("ifname", DEFAULT_IFNAME),
            args=[(str(k), str(v)) for k, v in doc.get("args", [])],
            capability_args=dict(doc.get("capabilityArgs", {})),
        )


def capability_args(
    port_mappings: Sequence[PortMapping] = (),
    dns: DNSConfig | None = None,
    bandwidth: Mapping[str, int] | None = None,
    ips: Sequence[str] = (),
) -> dict[str, Any]:
    """capabilityArgs as containerd builds them; injected per plugin only when declared."""
    caps: dict[str, Any] = {}
    maps = [p.to_cni() for p in port_mappings if p.host_port > 0]
    if maps:
        caps["portMappings"] = maps
    if dns is not None and (dns.servers or dns.searches or dns.options):
        caps["dns"] = dns.to_cni()
    if bandwidth:
        caps["bandwidth"] = dict(bandwidth)
    if ips:
        caps["ips"] = list(ips)
    return caps


# ------------------------------------------------------------------------------------ results


@dataclass
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""
    mtu: int | None = None


@dataclass
class IPConfig:
    address: str  # CIDR, e.g. 10.89.0.5/16
    gateway: str | None = None
    interface: int | None = None  # index into CNIResult.interfaces

    @property
    def iface(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        return ipaddress.ip_interface(self.address)

    @property
    def version(self) -> int:
        return self.iface.version

    @property
    def ip(self) -> str:
        return str(self.iface.ip)

    @property
    def prefixlen(self) -> int:
        return self.iface.network.prefixlen


@dataclass
class Route:
    dst: str
    gw: str | None = None
    mtu: int | None = None
    priority: int | None = None
    table: int | None = None
    scope: int | None = None


@dataclass
class DNS:
    nameservers: list[str] = field(default_factory=list)
    domain: str = ""
    search: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)


@dataclass
class CNIResult:
    """A parsed CNI result (any spec version); ``raw`` is the plugin's JSON, kept verbatim for
    ``prevResult`` and the cache."""

    cni_version: str
    interfaces: list[Interface] = field(default_factory=list)
    ips: list[IPConfig] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    dns: DNS = field(default_factory=DNS)
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> CNIResult:
        if not isinstance(doc, Mapping):
            raise InvalidArgument("CNI result must be a JSON object")
        version = str(doc.get("cniVersion", "") or "")
        dns_doc = doc.get("dns") or {}
        dns = DNS(
            nameservers=list(dns_doc.get("nameservers") or []),
            domain=str(dns_doc.get("domain") or ""),
            search=list(dns_doc.get("search") or []),
            options=list(dns_doc.get("options") or []),
        )
        res = cls(cni_version=version or "0.1.0", dns=dns, raw=dict(doc))
        if parse_version(version) < (0, 3, 0) and ("ip4" in doc or "ip6" in doc):
            # 0.1.0/0.2.0: {"ip4": {"ip", "gateway", "routes"}, "ip6": {...}}
            for key in ("ip4", "ip6"):
                sect = doc.get(key)
                if not sect:
                    continue
                res.ips.append(IPConfig(address=sect["ip"], gateway=sect.get("gateway")))
                res.routes.extend(_route(r) for r in sect.get("routes") or [])
            return res
        for i in doc.get("interfaces") or []:
            res.interfaces.append(
                Interface(
                    name=i.get("name", ""),
                    mac=i.get("mac", ""),
                    sandbox=i.get("sandbox", ""),
                    mtu=i.get("mtu"),
                )
            )
        for ip in doc.get("ips") or []:
            res.ips.append(
                IPConfig(address=ip["address"], gateway=ip.get("gateway"), interface=ip.get("interface"))
            )
        res.routes.extend(_route(r) for r in doc.get("routes") or [])
        return res

    def to_json(self) -> str:
        return json.dumps(self.raw, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CNIResult:
        return cls.from_dict(json.loads(text))

    def sandbox_interface(self, ifname: str = DEFAULT_IFNAME) -> tuple[int, Interface] | None:
        for idx, itf in enumerate(self.interfaces):
            if itf.sandbox and itf.name == ifname:
                return idx, itf
        return None

    def ips_for(self, ifname: str = DEFAULT_IFNAME) -> list[IPConfig]:
        """IPs on the pod interface: those pointing at it, plus those naming no interface."""
        found = self.sandbox_interface(ifname)
        idx = found[0] if found else None
        return [ip for ip in self.ips if ip.interface is None or ip.interface == idx]


def _route(r: Mapping[str, Any]) -> Route:
    return Route(
        dst=r["dst"],
        gw=r.get("gw"),
        mtu=r.get("mtu"),
        priority=r.get("priority"),
        table=r.get("table"),
        scope=r.get("scope"),
    )


# -------------------------------------------------------------------------- cached attachment


@dataclass
class Attachment:
    """Everything a later DEL needs: the network config used for ADD, the runtime inputs and
    the final result. Persist ``to_json()`` with the sandbox; DEL works from it alone."""

    network: NetworkConfigList
    runtime: RuntimeConf
    result: dict[str, Any] | None = None
    loopback: bool = False

    CACHE_VERSION = 1

    def to_json(self) -> str:
        return json.dumps(
            {
                "frakpyCniCache": self.CACHE_VERSION,
                "network": self.network.to_dict(),
                "runtime": self.runtime.to_dict(),
                "result": self.result,
                "loopback": self.loopback,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Attachment:
        try:
            doc = json.loads(text)
            if doc.get("frakpyCniCache") != cls.CACHE_VERSION:
                raise ValueError(f"unknown cache version {doc.get('frakpyCniCache')!r}")
            return cls(
                network=NetworkConfigList.from_dict(doc["network"], source="<cache>"),
                runtime=RuntimeConf.from_dict(doc["runtime"]),
                result=doc.get("result"),
                loopback=bool(doc.get("loopback")),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidArgument(f"cached CNI attachment is not readable: {exc}") from None

    @property
    def parsed_result(self) -> CNIResult | None:
        return CNIResult.from_dict(self.result) if self.result is not None else None


# ------------------------------------------------------------------------------------- runner


class CNI:
    """Runs CNI plugin chains for one conf dir and plugin search path."""

    def __init__(
        self,
        conf_dir: str = DEFAULT_CONF_DIR,
        bin_dirs: Sequence[str] = DEFAULT_BIN_DIRS,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.conf_dir = conf_dir
        self.bin_dirs = list(bin_dirs)
        self.timeout = timeout

    # -- config and readiness

    def load(self) -> NetworkConfigList:
        return load_network(self.conf_dir)

    def find_plugin(self, plugin_type: str) -> str:
        if "/" in plugin_type or plugin_type in ("", ".", ".."):
            raise FailedPrecondition(f"CNI plugin type {plugin_type!r} is not a plain executable name")
        for d in self.bin_dirs:
            p = os.path.join(d, plugin_type)
            if os.path.isfile(p) and os.access(p, os.X_OK):
                return p
        raise FailedPrecondition(
            f"CNI plugin {plugin_type!r} not found in {':'.join(self.bin_dirs)}; install it "
            "(e.g. containernetworking-plugins) or fix the plugin bin dirs"
        )

    def status(self) -> tuple[bool, str, str]:
        """(ready, reason, message) for the CRI NetworkReady condition."""
        try:
            net = self.load()
            for p in [LOOPBACK_CONF, *net.plugins]:
                self.find_plugin(p["type"])
        except FailedPrecondition as exc:
            return (
                False,
                NOT_READY_REASON,
                f"network plugin not ready: {exc.message} (conf dir {self.conf_dir})",
            )
        return True, "", ""

    # -- plugin execution

    def _env(self, command: str, rt: RuntimeConf) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            CNI_COMMAND=command,
            CNI_CONTAINERID=rt.container_id,
            CNI_NETNS=rt.netns,
            CNI_IFNAME=rt.ifname,
            CNI_ARGS=format_cni_args(rt.args),
            CNI_PATH=os.pathsep.join(self.bin_dirs),
        )
        return env

    @staticmethod
    def plugin_stdin(
        net: NetworkConfigList,
        plugin: Mapping[str, Any],
        rt: RuntimeConf,
        prev_result: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        conf = copy.deepcopy(dict(plugin))
        conf["name"] = net.name
        conf["cniVersion"] = net.cni_version
        if prev_result is not None:
            conf["prevResult"] = copy.deepcopy(dict(prev_result))
        caps = plugin.get("capabilities") or {}
        rc = {k: v for k, v in rt.capability_args.items() if caps.get(k) is True}
        if rc:
            conf["runtimeConfig"] = rc
        else:
            conf.pop("runtimeConfig", None)
        return conf

    async def exec_plugin(
        self,
        command: str,
        net: NetworkConfigList,
        plugin: Mapping[str, Any],
        rt: RuntimeConf,
        prev_result: Mapping[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """Run one plugin; returns its result for ADD, None otherwise; raises CNIError."""
        ptype = plugin["type"]
        try:
            path = self.find_plugin(ptype)
        except FailedPrecondition as exc:
            raise CNIError(exc.message, plugin=ptype, command=command, network=net.name) from None
        stdin = json.dumps(self.plugin_stdin(net, plugin, rt, prev_result)).encode()
        try:
            proc = await asyncio.create_subprocess_exec(
                path,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env(command, rt),
                cwd="/",
            )
        except OSError as exc:
            raise CNIError(
                f"cannot execute CNI plugin {path}: {exc.strerror}",
                plugin=ptype,
                command=command,
                network=net.name,
            ) from exc
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(stdin), self.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise CNIError(
                f"CNI plugin {ptype!r} {command} (network {net.name!r}) timed out after {self.timeout:g}s",
                plugin=ptype,
                command=command,
                network=net.name,
            ) from None
        except asyncio.CancelledError:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        if proc.returncode != 0:
            raise plugin_error(
                plugin=ptype,
                command=command,
                network=net.name,
                returncode=proc.returncode or 0,
                stdout=stdout,
                stderr=stderr,
            )
        if command != "ADD":
            return None
        try:
            result = json.loads(stdout)
            if not isinstance(result, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            raise CNIError(
                f"CNI plugin {ptype!r} ADD (network {net.name!r}) printed an unreadable result: {exc}",
                plugin=ptype,
                command=command,
                network=net.name,
            ) from None
        return result

    async def add(self, net: NetworkConfigList, rt: RuntimeConf) -> dict[str, Any]:
        """ADD through the chain in order; each plugin sees the previous result."""
        prev: dict[str, Any] | None = None
        for plugin in net.plugins:
            prev = await self.exec_plugin("ADD", net, plugin, rt, prev)
        assert prev is not None
        return prev

    async def delete(
        self, net: NetworkConfigList, rt: RuntimeConf, cached_result: Mapping[str, Any] | None = None
    ) -> None:
        """DEL through the chain in reverse, best effort: every plugin runs, failures are
        aggregated into one CNIError. A vanished netns is passed as an empty CNI_NETNS."""
        if rt.netns and not os.path.exists(rt.netns):  # noqa: ASYNC240 - one stat of a tmpfs path
            rt = RuntimeConf(rt.container_id, "", rt.ifname, rt.args, rt.capability_args)
        prev = cached_result if net.version >= (0, 4, 0) else None
        errors: list[CNIError] = []
        for plugin in reversed(net.plugins):
            try:
                await self.exec_plugin("DEL", net, plugin, rt, prev)
            except CNIError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise CNIError(
                f"CNI DEL of network {net.name!r} for {rt.container_id}: {len(errors)} plugins failed: "
                + "; ".join(e.message for e in errors),
                cni_code=errors[0].cni_code,
                cni_msg=errors[0].cni_msg,
                details=errors[0].details,
                plugin=errors[0].plugin,
                command="DEL",
                network=net.name,
                errors=errors,
            )

    async def check(
        self, net: NetworkConfigList, rt: RuntimeConf, cached_result: Mapping[str, Any] | None
    ) -> None:
        """CHECK the chain in order (skipped when the list sets disableCheck)."""
        if net.disable_check:
            return
        if net.version < (0, 4, 0):
            raise FailedPrecondition(
                f"CNI network {net.name!r} has cniVersion {net.cni_version}; CHECK needs 0.4.0 or later"
            )
        if cached_result is None:
            raise FailedPrecondition(
                f"no cached CNI result for {rt.container_id}; CHECK needs the ADD result"
            )
        for plugin in net.plugins:
            await self.exec_plugin("CHECK", net, plugin, rt, cached_result)

    # -- loopback, as containerd does it

    async def loopback_up(self, netns_path: str, container_id: str) -> None:
        net = NetworkConfigList.from_dict(LOOPBACK_CONF, source="<loopback>", single=True)
        await self.add(net, RuntimeConf(container_id, netns_path, ifname="lo"))

    async def loopback_down(self, netns_path: str, container_id: str) -> None:
        net = NetworkConfigList.from_dict(LOOPBACK_CONF, source="<loopback>", single=True)
        await self.delete(net, RuntimeConf(container_id, netns_path, ifname="lo"))
