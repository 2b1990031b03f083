from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PullStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PULL_STAGE_UNSPECIFIED: _ClassVar[PullStage]
    PULL_STAGE_RESOLVING: _ClassVar[PullStage]
    PULL_STAGE_DOWNLOADING: _ClassVar[PullStage]
    PULL_STAGE_BUILDING: _ClassVar[PullStage]
    PULL_STAGE_DONE: _ClassVar[PullStage]
    PULL_STAGE_FAILED: _ClassVar[PullStage]
    PULL_STAGE_WAITING: _ClassVar[PullStage]

class LayerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LAYER_STATE_UNSPECIFIED: _ClassVar[LayerState]
    LAYER_STATE_WAITING: _ClassVar[LayerState]
    LAYER_STATE_DOWNLOADING: _ClassVar[LayerState]
    LAYER_STATE_VERIFYING: _ClassVar[LayerState]
    LAYER_STATE_DOWNLOADED: _ClassVar[LayerState]
    LAYER_STATE_UNPACKING: _ClassVar[LayerState]
    LAYER_STATE_DONE: _ClassVar[LayerState]
PULL_STAGE_UNSPECIFIED: PullStage
PULL_STAGE_RESOLVING: PullStage
PULL_STAGE_DOWNLOADING: PullStage
PULL_STAGE_BUILDING: PullStage
PULL_STAGE_DONE: PullStage
PULL_STAGE_FAILED: PullStage
PULL_STAGE_WAITING: PullStage
LAYER_STATE_UNSPECIFIED: LayerState
LAYER_STATE_WAITING: LayerState
LAYER_STATE_DOWNLOADING: LayerState
LAYER_STATE_VERIFYING: LayerState
LAYER_STATE_DOWNLOADED: LayerState
LAYER_STATE_UNPACKING: LayerState
LAYER_STATE_DONE: LayerState

class WatchPullRequest(_message.Message):
    __slots__ = ("image", "wait_seconds")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    image: str
    wait_seconds: float
    def __init__(self, image: _Optional[str] = ..., wait_seconds: _Optional[float] = ...) -> None: ...

class LayerProgress(_message.Message):
    __slots__ = ("digest", "size", "downloaded", "state", "cached", "resumed_from")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    DOWNLOADED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FROM_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size: int
    downloaded: int
    state: LayerState
    cached: bool
    resumed_from: int
    def __init__(self, digest: _Optional[str] = ..., size: _Optional[int] = ..., downloaded: _Optional[int] = ..., state: _Optional[_Union[LayerState, str]] = ..., cached: _Optional[bool] = ..., resumed_from: _Optional[int] = ...) -> None: ...

class PullProgress(_message.Message):
    __slots__ = ("image", "stage", "manifest_digest", "image_id", "layers", "fs_size", "error", "elapsed_ns")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    FS_SIZE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_NS_FIELD_NUMBER: _ClassVar[int]
    image: str
    stage: PullStage
    manifest_digest: str
    image_id: str
    layers: _containers.RepeatedCompositeFieldContainer[LayerProgress]
    fs_size: int
    error: str
    elapsed_ns: int
    def __init__(self, image: _Optional[str] = ..., stage: _Optional[_Union[PullStage, str]] = ..., manifest_digest: _Optional[str] = ..., image_id: _Optional[str] = ..., layers: _Optional[_Iterable[_Union[LayerProgress, _Mapping]]] = ..., fs_size: _Optional[int] = ..., error: _Optional[str] = ..., elapsed_ns: _Optional[int] = ...) -> None: ...
