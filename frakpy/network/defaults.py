"""The network frakpy installs when a node has none.

A host-only bridge: pods get addresses from host-local IPAM on a private /16 behind bridge
``frakpy0`` (which is their gateway), can reach each other and the host, and reach nothing
else: ``ipMasq`` is off, so no NAT rule ever lets pod traffic leave the machine. hostPorts
work through the ``portmap`` plugin (iptables DNAT on the host). The loopback interface is
not part of this list: like containerd, frakpy runs the ``loopback`` plugin in every pod
netns separately.

Subnet choice: 10.88.0.0/16 is podman's and containerd's example network, 10.244.0.0/16
flannel's, 10.96.0.0/12 kubeadm's service range; 10.91.0.0/16 clashes with none of them.
"""

from __future__ import annotations

import json
import os
from typing import Any

from frakpy.network.cni import config_files

DEFAULT_NETWORK_NAME = "frakpy"
DEFAULT_BRIDGE = "frakpy0"
DEFAULT_SUBNET = "10.91.0.0/16"
DEFAULT_CNI_VERSION = "1.0.0"
DEFAULT_FILE_NAME = "10-frakpy.conflist"


def default_conflist(
    *,
    name: str = DEFAULT_NETWORK_NAME,
    bridge: str = DEFAULT_BRIDGE,
    subnet: str = DEFAULT_SUBNET,
    cni_version: str = DEFAULT_CNI_VERSION,
    data_dir: str | None = None,
    portmap: bool = True,
) -> dict[str, Any]:
    """The default network as a conflist document (parameters exist for tests)."""
    ipam: dict[str, Any] = {
        "type": "host-local",
        "ranges": [[{"subnet": subnet}]],
        "routes": [{"dst": "0.0.0.0/0"}],
    }
    if data_dir:
        ipam["dataDir"] = data_dir
    plugins: list[dict[str, Any]] = [
        {
            "type": "bridge",
            "bridge": bridge,
            "isGateway": True,
            "ipMasq": False,
            "hairpinMode": True,
            "ipam": ipam,
        }
    ]
    if portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
    return {"cniVersion": cni_version, "name": name, "plugins": plugins}


def install_default(conf_dir: str, file_name: str = DEFAULT_FILE_NAME, **kwargs: Any) -> str | None:
    """Write the default conflist into ``conf_dir`` only if it holds no network config yet.
    Returns the path written, or None when a config was already there (never overwrites)."""
    if config_files(conf_dir):
        return None
    os.makedirs(conf_dir, mode=0o755, exist_ok=True)
    path = os.path.join(conf_dir, file_name)
    tmp = f"{path}.{os.getpid()}.tmp"  # ends in .tmp: never picked up as a config
    with open(tmp, "w") as f:
        json.dump(default_conflist(**kwargs), f, indent=2)
        f.write("\n")
    try:
        os.link(tmp, path)  # fails instead of replacing when someone else won the race
    except FileExistsError:
        return None
    finally:
        os.unlink(tmp)
    return path
