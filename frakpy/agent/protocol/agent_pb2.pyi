from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ServingStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SERVING_STATUS_UNKNOWN: _ClassVar[ServingStatus]
    SERVING_STATUS_SERVING: _ClassVar[ServingStatus]
    SERVING_STATUS_NOT_SERVING: _ClassVar[ServingStatus]

class ContainerStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONTAINER_STATUS_UNKNOWN: _ClassVar[ContainerStatus]
    CONTAINER_STATUS_CREATED: _ClassVar[ContainerStatus]
    CONTAINER_STATUS_RUNNING: _ClassVar[ContainerStatus]
    CONTAINER_STATUS_EXITED: _ClassVar[ContainerStatus]

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNKNOWN: _ClassVar[EventKind]
    EVENT_KIND_EXIT: _ClassVar[EventKind]

class OutputStream(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_STREAM_UNKNOWN: _ClassVar[OutputStream]
    OUTPUT_STREAM_STDOUT: _ClassVar[OutputStream]
    OUTPUT_STREAM_STDERR: _ClassVar[OutputStream]
SERVING_STATUS_UNKNOWN: ServingStatus
SERVING_STATUS_SERVING: ServingStatus
SERVING_STATUS_NOT_SERVING: ServingStatus
CONTAINER_STATUS_UNKNOWN: ContainerStatus
CONTAINER_STATUS_CREATED: ContainerStatus
CONTAINER_STATUS_RUNNING: ContainerStatus
CONTAINER_STATUS_EXITED: ContainerStatus
EVENT_KIND_UNKNOWN: EventKind
EVENT_KIND_EXIT: EventKind
OUTPUT_STREAM_UNKNOWN: OutputStream
OUTPUT_STREAM_STDOUT: OutputStream
OUTPUT_STREAM_STDERR: OutputStream

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: ServingStatus
    def __init__(self, status: _Optional[_Union[ServingStatus, str]] = ...) -> None: ...

class GuestDetailsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GuestDetailsResponse(_message.Message):
    __slots__ = ("kernel_release", "mem_total_bytes", "agent_version", "boot_id", "agent_start_uptime_ns", "agent_ready_uptime_ns", "uptime_ns", "online_cpus", "sandbox_id", "clock_lag_ns", "init_started_ns", "root_mount")
    KERNEL_RELEASE_FIELD_NUMBER: _ClassVar[int]
    MEM_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_START_UPTIME_NS_FIELD_NUMBER: _ClassVar[int]
    AGENT_READY_UPTIME_NS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_NS_FIELD_NUMBER: _ClassVar[int]
    ONLINE_CPUS_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    CLOCK_LAG_NS_FIELD_NUMBER: _ClassVar[int]
    INIT_STARTED_NS_FIELD_NUMBER: _ClassVar[int]
    ROOT_MOUNT_FIELD_NUMBER: _ClassVar[int]
    kernel_release: str
    mem_total_bytes: int
    agent_version: str
    boot_id: str
    agent_start_uptime_ns: int
    agent_ready_uptime_ns: int
    uptime_ns: int
    online_cpus: int
    sandbox_id: str
    clock_lag_ns: int
    init_started_ns: int
    root_mount: str
    def __init__(self, kernel_release: _Optional[str] = ..., mem_total_bytes: _Optional[int] = ..., agent_version: _Optional[str] = ..., boot_id: _Optional[str] = ..., agent_start_uptime_ns: _Optional[int] = ..., agent_ready_uptime_ns: _Optional[int] = ..., uptime_ns: _Optional[int] = ..., online_cpus: _Optional[int] = ..., sandbox_id: _Optional[str] = ..., clock_lag_ns: _Optional[int] = ..., init_started_ns: _Optional[int] = ..., root_mount: _Optional[str] = ...) -> None: ...

class DNSConfig(_message.Message):
    __slots__ = ("servers", "searches", "options")
    SERVERS_FIELD_NUMBER: _ClassVar[int]
    SEARCHES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    servers: _containers.RepeatedScalarFieldContainer[str]
    searches: _containers.RepeatedScalarFieldContainer[str]
    options: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, servers: _Optional[_Iterable[str]] = ..., searches: _Optional[_Iterable[str]] = ..., options: _Optional[_Iterable[str]] = ...) -> None: ...

class HostEntry(_message.Message):
    __slots__ = ("ip", "names")
    IP_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    ip: str
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ip: _Optional[str] = ..., names: _Optional[_Iterable[str]] = ...) -> None: ...

class SetupSandboxRequest(_message.Message):
    __slots__ = ("sandbox_id", "hostname", "dns", "hosts", "realtime_ns", "rng_seed")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    DNS_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    REALTIME_NS_FIELD_NUMBER: _ClassVar[int]
    RNG_SEED_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    hostname: str
    dns: DNSConfig
    hosts: _containers.RepeatedCompositeFieldContainer[HostEntry]
    realtime_ns: int
    rng_seed: bytes
    def __init__(self, sandbox_id: _Optional[str] = ..., hostname: _Optional[str] = ..., dns: _Optional[_Union[DNSConfig, _Mapping]] = ..., hosts: _Optional[_Iterable[_Union[HostEntry, _Mapping]]] = ..., realtime_ns: _Optional[int] = ..., rng_seed: _Optional[bytes] = ...) -> None: ...

class SetupSandboxResponse(_message.Message):
    __slots__ = ("entropy_bits_credited", "clock_set")
    ENTROPY_BITS_CREDITED_FIELD_NUMBER: _ClassVar[int]
    CLOCK_SET_FIELD_NUMBER: _ClassVar[int]
    entropy_bits_credited: int
    clock_set: bool
    def __init__(self, entropy_bits_credited: _Optional[int] = ..., clock_set: _Optional[bool] = ...) -> None: ...

class ShutdownRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ShutdownResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MountImageRequest(_message.Message):
    __slots__ = ("mount_id", "serial", "fstype", "read_write", "timeout_ms")
    MOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    FSTYPE_FIELD_NUMBER: _ClassVar[int]
    READ_WRITE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    mount_id: str
    serial: str
    fstype: str
    read_write: bool
    timeout_ms: int
    def __init__(self, mount_id: _Optional[str] = ..., serial: _Optional[str] = ..., fstype: _Optional[str] = ..., read_write: _Optional[bool] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class MountImageResponse(_message.Message):
    __slots__ = ("path", "device", "already_mounted")
    PATH_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    ALREADY_MOUNTED_FIELD_NUMBER: _ClassVar[int]
    path: str
    device: str
    already_mounted: bool
    def __init__(self, path: _Optional[str] = ..., device: _Optional[str] = ..., already_mounted: _Optional[bool] = ...) -> None: ...

class UnmountImageRequest(_message.Message):
    __slots__ = ("mount_id",)
    MOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    mount_id: str
    def __init__(self, mount_id: _Optional[str] = ...) -> None: ...

class UnmountImageResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MountShareRequest(_message.Message):
    __slots__ = ("tag", "path", "msize")
    TAG_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MSIZE_FIELD_NUMBER: _ClassVar[int]
    tag: str
    path: str
    msize: int
    def __init__(self, tag: _Optional[str] = ..., path: _Optional[str] = ..., msize: _Optional[int] = ...) -> None: ...

class MountShareResponse(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class CreateContainerRequest(_message.Message):
    __slots__ = ("container_id", "spec_json", "image_mount_id", "stdin", "tty", "log_buffer_bytes")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    IMAGE_MOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    TTY_FIELD_NUMBER: _ClassVar[int]
    LOG_BUFFER_BYTES_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    spec_json: bytes
    image_mount_id: str
    stdin: bool
    tty: bool
    log_buffer_bytes: int
    def __init__(self, container_id: _Optional[str] = ..., spec_json: _Optional[bytes] = ..., image_mount_id: _Optional[str] = ..., stdin: _Optional[bool] = ..., tty: _Optional[bool] = ..., log_buffer_bytes: _Optional[int] = ...) -> None: ...

class CreateContainerResponse(_message.Message):
    __slots__ = ("pid",)
    PID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    def __init__(self, pid: _Optional[int] = ...) -> None: ...

class StartContainerRequest(_message.Message):
    __slots__ = ("container_id",)
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    def __init__(self, container_id: _Optional[str] = ...) -> None: ...

class StartContainerResponse(_message.Message):
    __slots__ = ("started_at_ns",)
    STARTED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    started_at_ns: int
    def __init__(self, started_at_ns: _Optional[int] = ...) -> None: ...

class SignalContainerRequest(_message.Message):
    __slots__ = ("container_id", "signal", "all", "exec_id")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    signal: int
    all: bool
    exec_id: str
    def __init__(self, container_id: _Optional[str] = ..., signal: _Optional[int] = ..., all: _Optional[bool] = ..., exec_id: _Optional[str] = ...) -> None: ...

class SignalContainerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteContainerRequest(_message.Message):
    __slots__ = ("container_id",)
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    def __init__(self, container_id: _Optional[str] = ...) -> None: ...

class DeleteContainerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ContainerStateRequest(_message.Message):
    __slots__ = ("container_id",)
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    def __init__(self, container_id: _Optional[str] = ...) -> None: ...

class ContainerStateResponse(_message.Message):
    __slots__ = ("container_id", "status", "pid", "exit_code", "created_at_ns", "started_at_ns", "finished_at_ns", "oom_killed", "output_offset", "termination_message")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    TERMINATION_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    status: ContainerStatus
    pid: int
    exit_code: int
    created_at_ns: int
    started_at_ns: int
    finished_at_ns: int
    oom_killed: bool
    output_offset: int
    termination_message: bytes
    def __init__(self, container_id: _Optional[str] = ..., status: _Optional[_Union[ContainerStatus, str]] = ..., pid: _Optional[int] = ..., exit_code: _Optional[int] = ..., created_at_ns: _Optional[int] = ..., started_at_ns: _Optional[int] = ..., finished_at_ns: _Optional[int] = ..., oom_killed: _Optional[bool] = ..., output_offset: _Optional[int] = ..., termination_message: _Optional[bytes] = ...) -> None: ...

class UpdateContainerResourcesRequest(_message.Message):
    __slots__ = ("container_id", "resources_json")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_JSON_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    resources_json: bytes
    def __init__(self, container_id: _Optional[str] = ..., resources_json: _Optional[bytes] = ...) -> None: ...

class UpdateContainerResourcesResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EventsRequest(_message.Message):
    __slots__ = ("after_seq",)
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    def __init__(self, after_seq: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("seq", "kind", "container_id", "exec_id", "exit_code", "exited_at_ns", "oom_killed", "pid")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    EXITED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLED_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    seq: int
    kind: EventKind
    container_id: str
    exec_id: str
    exit_code: int
    exited_at_ns: int
    oom_killed: bool
    pid: int
    def __init__(self, seq: _Optional[int] = ..., kind: _Optional[_Union[EventKind, str]] = ..., container_id: _Optional[str] = ..., exec_id: _Optional[str] = ..., exit_code: _Optional[int] = ..., exited_at_ns: _Optional[int] = ..., oom_killed: _Optional[bool] = ..., pid: _Optional[int] = ...) -> None: ...

class AckEventsRequest(_message.Message):
    __slots__ = ("up_to_seq",)
    UP_TO_SEQ_FIELD_NUMBER: _ClassVar[int]
    up_to_seq: int
    def __init__(self, up_to_seq: _Optional[int] = ...) -> None: ...

class AckEventsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReadOutputRequest(_message.Message):
    __slots__ = ("container_id", "exec_id", "from_offset", "auto_ack")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_OFFSET_FIELD_NUMBER: _ClassVar[int]
    AUTO_ACK_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    exec_id: str
    from_offset: int
    auto_ack: bool
    def __init__(self, container_id: _Optional[str] = ..., exec_id: _Optional[str] = ..., from_offset: _Optional[int] = ..., auto_ack: _Optional[bool] = ...) -> None: ...

class OutputChunk(_message.Message):
    __slots__ = ("offset", "stream", "time_ns", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TIME_NS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    stream: OutputStream
    time_ns: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., stream: _Optional[_Union[OutputStream, str]] = ..., time_ns: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class AckOutputRequest(_message.Message):
    __slots__ = ("container_id", "exec_id", "up_to_offset")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    UP_TO_OFFSET_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    exec_id: str
    up_to_offset: int
    def __init__(self, container_id: _Optional[str] = ..., exec_id: _Optional[str] = ..., up_to_offset: _Optional[int] = ...) -> None: ...

class AckOutputResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExecSyncRequest(_message.Message):
    __slots__ = ("container_id", "args", "timeout_s", "output_limit_bytes")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    args: _containers.RepeatedScalarFieldContainer[str]
    timeout_s: int
    output_limit_bytes: int
    def __init__(self, container_id: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., timeout_s: _Optional[int] = ..., output_limit_bytes: _Optional[int] = ...) -> None: ...

class ExecSyncResponse(_message.Message):
    __slots__ = ("stdout", "stderr", "exit_code", "timed_out", "truncated")
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    stdout: bytes
    stderr: bytes
    exit_code: int
    timed_out: bool
    truncated: bool
    def __init__(self, stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., exit_code: _Optional[int] = ..., timed_out: _Optional[bool] = ..., truncated: _Optional[bool] = ...) -> None: ...

class ExecStartRequest(_message.Message):
    __slots__ = ("container_id", "exec_id", "process_json", "tty", "stdin", "log_buffer_bytes")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    PROCESS_JSON_FIELD_NUMBER: _ClassVar[int]
    TTY_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    LOG_BUFFER_BYTES_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    exec_id: str
    process_json: bytes
    tty: bool
    stdin: bool
    log_buffer_bytes: int
    def __init__(self, container_id: _Optional[str] = ..., exec_id: _Optional[str] = ..., process_json: _Optional[bytes] = ..., tty: _Optional[bool] = ..., stdin: _Optional[bool] = ..., log_buffer_bytes: _Optional[int] = ...) -> None: ...

class ExecStartResponse(_message.Message):
    __slots__ = ("pid",)
    PID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    def __init__(self, pid: _Optional[int] = ...) -> None: ...

class WriteStdinRequest(_message.Message):
    __slots__ = ("container_id", "exec_id", "data", "close")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    exec_id: str
    data: bytes
    close: bool
    def __init__(self, container_id: _Optional[str] = ..., exec_id: _Optional[str] = ..., data: _Optional[bytes] = ..., close: _Optional[bool] = ...) -> None: ...

class WriteStdinResponse(_message.Message):
    __slots__ = ("written",)
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    written: int
    def __init__(self, written: _Optional[int] = ...) -> None: ...

class ResizeTtyRequest(_message.Message):
    __slots__ = ("container_id", "exec_id", "width", "height")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    exec_id: str
    width: int
    height: int
    def __init__(self, container_id: _Optional[str] = ..., exec_id: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class ResizeTtyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WaitProcessRequest(_message.Message):
    __slots__ = ("container_id", "exec_id")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    exec_id: str
    def __init__(self, container_id: _Optional[str] = ..., exec_id: _Optional[str] = ...) -> None: ...

class WaitProcessResponse(_message.Message):
    __slots__ = ("exit_code", "exited_at_ns", "oom_killed")
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    EXITED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLED_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    exited_at_ns: int
    oom_killed: bool
    def __init__(self, exit_code: _Optional[int] = ..., exited_at_ns: _Optional[int] = ..., oom_killed: _Optional[bool] = ...) -> None: ...

class DeleteProcessRequest(_message.Message):
    __slots__ = ("container_id", "exec_id")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    exec_id: str
    def __init__(self, container_id: _Optional[str] = ..., exec_id: _Optional[str] = ...) -> None: ...

class DeleteProcessResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ContainerStatsRequest(_message.Message):
    __slots__ = ("container_id",)
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    def __init__(self, container_id: _Optional[str] = ...) -> None: ...

class ContainerStatsResponse(_message.Message):
    __slots__ = ("timestamp_ns", "cpu_usage_ns", "memory_working_set_bytes", "memory_usage_bytes", "memory_rss_bytes", "page_faults", "major_page_faults", "oom_kills", "writable_layer_bytes", "writable_layer_inodes", "memory_available_bytes")
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    CPU_USAGE_NS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_WORKING_SET_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    PAGE_FAULTS_FIELD_NUMBER: _ClassVar[int]
    MAJOR_PAGE_FAULTS_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLS_FIELD_NUMBER: _ClassVar[int]
    WRITABLE_LAYER_BYTES_FIELD_NUMBER: _ClassVar[int]
    WRITABLE_LAYER_INODES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_AVAILABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    timestamp_ns: int
    cpu_usage_ns: int
    memory_working_set_bytes: int
    memory_usage_bytes: int
    memory_rss_bytes: int
    page_faults: int
    major_page_faults: int
    oom_kills: int
    writable_layer_bytes: int
    writable_layer_inodes: int
    memory_available_bytes: int
    def __init__(self, timestamp_ns: _Optional[int] = ..., cpu_usage_ns: _Optional[int] = ..., memory_working_set_bytes: _Optional[int] = ..., memory_usage_bytes: _Optional[int] = ..., memory_rss_bytes: _Optional[int] = ..., page_faults: _Optional[int] = ..., major_page_faults: _Optional[int] = ..., oom_kills: _Optional[int] = ..., writable_layer_bytes: _Optional[int] = ..., writable_layer_inodes: _Optional[int] = ..., memory_available_bytes: _Optional[int] = ...) -> None: ...

class SandboxStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NetworkStats(_message.Message):
    __slots__ = ("name", "rx_bytes", "rx_errors", "tx_bytes", "tx_errors")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RX_BYTES_FIELD_NUMBER: _ClassVar[int]
    RX_ERRORS_FIELD_NUMBER: _ClassVar[int]
    TX_BYTES_FIELD_NUMBER: _ClassVar[int]
    TX_ERRORS_FIELD_NUMBER: _ClassVar[int]
    name: str
    rx_bytes: int
    rx_errors: int
    tx_bytes: int
    tx_errors: int
    def __init__(self, name: _Optional[str] = ..., rx_bytes: _Optional[int] = ..., rx_errors: _Optional[int] = ..., tx_bytes: _Optional[int] = ..., tx_errors: _Optional[int] = ...) -> None: ...

class SandboxStatsResponse(_message.Message):
    __slots__ = ("timestamp_ns", "cpu_usage_ns", "memory_total_bytes", "memory_available_bytes", "memory_working_set_bytes", "interfaces")
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    CPU_USAGE_NS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_AVAILABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_WORKING_SET_BYTES_FIELD_NUMBER: _ClassVar[int]
    INTERFACES_FIELD_NUMBER: _ClassVar[int]
    timestamp_ns: int
    cpu_usage_ns: int
    memory_total_bytes: int
    memory_available_bytes: int
    memory_working_set_bytes: int
    interfaces: _containers.RepeatedCompositeFieldContainer[NetworkStats]
    def __init__(self, timestamp_ns: _Optional[int] = ..., cpu_usage_ns: _Optional[int] = ..., memory_total_bytes: _Optional[int] = ..., memory_available_bytes: _Optional[int] = ..., memory_working_set_bytes: _Optional[int] = ..., interfaces: _Optional[_Iterable[_Union[NetworkStats, _Mapping]]] = ...) -> None: ...

class SetupNetworkRequest(_message.Message):
    __slots__ = ("config_json", "hostname", "pod_ips", "host_aliases")
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    POD_IPS_FIELD_NUMBER: _ClassVar[int]
    HOST_ALIASES_FIELD_NUMBER: _ClassVar[int]
    config_json: bytes
    hostname: str
    pod_ips: _containers.RepeatedScalarFieldContainer[str]
    host_aliases: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, config_json: _Optional[bytes] = ..., hostname: _Optional[str] = ..., pod_ips: _Optional[_Iterable[str]] = ..., host_aliases: _Optional[_Iterable[str]] = ...) -> None: ...

class SetupNetworkResponse(_message.Message):
    __slots__ = ("interface",)
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    interface: str
    def __init__(self, interface: _Optional[str] = ...) -> None: ...

class PortConnectRequest(_message.Message):
    __slots__ = ("port", "window_bytes")
    PORT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_BYTES_FIELD_NUMBER: _ClassVar[int]
    port: int
    window_bytes: int
    def __init__(self, port: _Optional[int] = ..., window_bytes: _Optional[int] = ...) -> None: ...

class PortData(_message.Message):
    __slots__ = ("conn_id", "offset", "data", "eof")
    CONN_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    EOF_FIELD_NUMBER: _ClassVar[int]
    conn_id: str
    offset: int
    data: bytes
    eof: bool
    def __init__(self, conn_id: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., eof: _Optional[bool] = ...) -> None: ...

class PortAckRequest(_message.Message):
    __slots__ = ("conn_id", "up_to_offset")
    CONN_ID_FIELD_NUMBER: _ClassVar[int]
    UP_TO_OFFSET_FIELD_NUMBER: _ClassVar[int]
    conn_id: str
    up_to_offset: int
    def __init__(self, conn_id: _Optional[str] = ..., up_to_offset: _Optional[int] = ...) -> None: ...

class PortAckResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PortWriteRequest(_message.Message):
    __slots__ = ("conn_id", "data", "close_write")
    CONN_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CLOSE_WRITE_FIELD_NUMBER: _ClassVar[int]
    conn_id: str
    data: bytes
    close_write: bool
    def __init__(self, conn_id: _Optional[str] = ..., data: _Optional[bytes] = ..., close_write: _Optional[bool] = ...) -> None: ...

class PortWriteResponse(_message.Message):
    __slots__ = ("written",)
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    written: int
    def __init__(self, written: _Optional[int] = ...) -> None: ...

class PortCloseRequest(_message.Message):
    __slots__ = ("conn_id",)
    CONN_ID_FIELD_NUMBER: _ClassVar[int]
    conn_id: str
    def __init__(self, conn_id: _Optional[str] = ...) -> None: ...

class PortCloseResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
