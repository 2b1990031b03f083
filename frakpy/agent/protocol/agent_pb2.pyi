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
SERVING_STATUS_UNKNOWN: ServingStatus
SERVING_STATUS_SERVING: ServingStatus
SERVING_STATUS_NOT_SERVING: ServingStatus

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
    __slots__ = ("kernel_release", "mem_total_bytes", "agent_version", "boot_id", "agent_start_uptime_ns", "agent_ready_uptime_ns", "uptime_ns", "online_cpus", "sandbox_id")
    KERNEL_RELEASE_FIELD_NUMBER: _ClassVar[int]
    MEM_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_START_UPTIME_NS_FIELD_NUMBER: _ClassVar[int]
    AGENT_READY_UPTIME_NS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_NS_FIELD_NUMBER: _ClassVar[int]
    ONLINE_CPUS_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    kernel_release: str
    mem_total_bytes: int
    agent_version: str
    boot_id: str
    agent_start_uptime_ns: int
    agent_ready_uptime_ns: int
    uptime_ns: int
    online_cpus: int
    sandbox_id: str
    def __init__(self, kernel_release: _Optional[str] = ..., mem_total_bytes: _Optional[int] = ..., agent_version: _Optional[str] = ..., boot_id: _Optional[str] = ..., agent_start_uptime_ns: _Optional[int] = ..., agent_ready_uptime_ns: _Optional[int] = ..., uptime_ns: _Optional[int] = ..., online_cpus: _Optional[int] = ..., sandbox_id: _Optional[str] = ...) -> None: ...

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
