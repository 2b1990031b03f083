"""Pod networking: a network namespace per pod, CNI plugins in it, and a tap spliced to the
CNI interface with tc so the pod's QEMU VM owns the pod's address.

Entry point: :class:`frakpy.network.pod.PodNetwork`.
"""

from frakpy.network.cni import CNI, Attachment, CNIError, CNIResult, DNSConfig, PortMapping
from frakpy.network.pod import PodIP, PodNetwork, PodNetworkInfo
from frakpy.network.tap import TapInfo

__all__ = [
    "CNI",
    "Attachment",
    "CNIError",
    "CNIResult",
    "DNSConfig",
    "PodIP",
    "PodNetwork",
    "PodNetworkInfo",
    "PortMapping",
    "TapInfo",
]
