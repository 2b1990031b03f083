"""Container images: references, registry pulls, blob store, unpacking to EROFS, the image store.

The CRI ImageService is a thin layer over :class:`~frakpy.image.store.ImageStore`; registry
settings for the TOML config are :class:`~frakpy.image.registry.PullConfig` and
:class:`~frakpy.image.registry.RegistryConfig`.
"""

from frakpy.image.reference import Reference, parse
from frakpy.image.registry import Credentials, PullConfig, RegistryConfig
from frakpy.image.store import FsUsage, ImageRecord, ImageStore, PullProgress

__all__ = [
    "Credentials",
    "FsUsage",
    "ImageRecord",
    "ImageStore",
    "PullConfig",
    "PullProgress",
    "Reference",
    "RegistryConfig",
    "parse",
]
