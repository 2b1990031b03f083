"""ImageService: Pull/List/Status/Remove/ImageFsInfo, translated to the ImageStore."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from frakpy.cri.proto import api_pb2 as pb
from frakpy.image.registry import Credentials
from frakpy.image.store import ImageRecord, ImageStore


def _image(rec: ImageRecord) -> pb.Image:
    img = pb.Image(
        id=rec.id, repo_tags=rec.repo_tags, repo_digests=rec.repo_digests, size=rec.size,
        username=rec.username, spec=pb.ImageSpec(image=rec.id), pinned=rec.pinned,
    )
    if rec.uid is not None:
        img.uid.value = rec.uid
    return img


class ImageServicer:
    def __init__(self, images: ImageStore) -> None:
        self.images = images

    async def PullImage(self, request: pb.PullImageRequest, context: Any) -> pb.PullImageResponse:
        creds = Credentials.from_cri(request.auth) if request.HasField("auth") else None
        rec = await self.images.pull(request.image.image, creds)
        return pb.PullImageResponse(image_ref=rec.id)

    async def ListImages(self, request: pb.ListImagesRequest, context: Any) -> pb.ListImagesResponse:
        flt = request.filter.image.image if request.HasField("filter") else ""
        return pb.ListImagesResponse(images=[_image(r) for r in self.images.list(flt or None)])

    async def ImageStatus(self, request: pb.ImageStatusRequest, context: Any) -> pb.ImageStatusResponse:
        rec = self.images.status(request.image.image)
        if rec is None:
            return pb.ImageStatusResponse()  # CRI: an absent image is an empty answer, not an error
        info = {}
        if request.verbose:
            info["info"] = json.dumps(dataclasses.asdict(rec), sort_keys=True, default=str)
        return pb.ImageStatusResponse(image=_image(rec), info=info)

    async def RemoveImage(self, request: pb.RemoveImageRequest, context: Any) -> pb.RemoveImageResponse:
        self.images.remove(request.image.image)
        return pb.RemoveImageResponse()

    async def ImageFsInfo(self, request: pb.ImageFsInfoRequest, context: Any) -> pb.ImageFsInfoResponse:
        u = self.images.fs_info()
        usage = pb.FilesystemUsage(
            timestamp=u.timestamp_ns, fs_id=pb.FilesystemIdentifier(mountpoint=u.mountpoint),
            used_bytes=pb.UInt64Value(value=u.used_bytes), inodes_used=pb.UInt64Value(value=u.inodes_used),
        )
        return pb.ImageFsInfoResponse(image_filesystems=[usage])
