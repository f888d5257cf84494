from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ArtifactMetadata(_message.Message):
    __slots__ = ("name", "version", "size", "sha256", "store_only", "rollout")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    STORE_ONLY_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    size: int
    sha256: str
    store_only: bool
    rollout: RolloutRequest
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., store_only: _Optional[bool] = ..., rollout: _Optional[_Union[RolloutRequest, _Mapping]] = ...) -> None: ...

class RolloutRequest(_message.Message):
    __slots__ = ("mode", "percent", "sticky")
    class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        NONE: _ClassVar[RolloutRequest.Mode]
        CANARY: _ClassVar[RolloutRequest.Mode]
        SHADOW: _ClassVar[RolloutRequest.Mode]
    NONE: RolloutRequest.Mode
    CANARY: RolloutRequest.Mode
    SHADOW: RolloutRequest.Mode
    MODE_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    STICKY_FIELD_NUMBER: _ClassVar[int]
    mode: RolloutRequest.Mode
    percent: int
    sticky: bool
    def __init__(self, mode: _Optional[_Union[RolloutRequest.Mode, str]] = ..., percent: _Optional[int] = ..., sticky: _Optional[bool] = ...) -> None: ...

class RolloutStatus(_message.Message):
    __slots__ = ("mode", "percent", "sticky", "stable", "candidate", "candidate_requests", "candidate_errors", "stable_requests", "stable_errors", "candidate_error_rate", "stable_error_rate", "candidate_p50_ms", "candidate_p99_ms", "stable_p50_ms", "stable_p99_ms", "compared", "disagreement", "decision")
    MODE_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    STICKY_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    STABLE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    STABLE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    STABLE_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_P50_MS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_P99_MS_FIELD_NUMBER: _ClassVar[int]
    STABLE_P50_MS_FIELD_NUMBER: _ClassVar[int]
    STABLE_P99_MS_FIELD_NUMBER: _ClassVar[int]
    COMPARED_FIELD_NUMBER: _ClassVar[int]
    DISAGREEMENT_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    mode: str
    percent: int
    sticky: bool
    stable: int
    candidate: int
    candidate_requests: int
    candidate_errors: int
    stable_requests: int
    stable_errors: int
    candidate_error_rate: float
    stable_error_rate: float
    candidate_p50_ms: float
    candidate_p99_ms: float
    stable_p50_ms: float
    stable_p99_ms: float
    compared: int
    disagreement: float
    decision: str
    def __init__(self, mode: _Optional[str] = ..., percent: _Optional[int] = ..., sticky: _Optional[bool] = ..., stable: _Optional[int] = ..., candidate: _Optional[int] = ..., candidate_requests: _Optional[int] = ..., candidate_errors: _Optional[int] = ..., stable_requests: _Optional[int] = ..., stable_errors: _Optional[int] = ..., candidate_error_rate: _Optional[float] = ..., stable_error_rate: _Optional[float] = ..., candidate_p50_ms: _Optional[float] = ..., candidate_p99_ms: _Optional[float] = ..., stable_p50_ms: _Optional[float] = ..., stable_p99_ms: _Optional[float] = ..., compared: _Optional[int] = ..., disagreement: _Optional[float] = ..., decision: _Optional[str] = ...) -> None: ...

class PushRequest(_message.Message):
    __slots__ = ("metadata", "chunk")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    metadata: ArtifactMetadata
    chunk: bytes
    def __init__(self, metadata: _Optional[_Union[ArtifactMetadata, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class PushResponse(_message.Message):
    __slots__ = ("name", "version", "size", "sha256", "state", "already_stored")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ALREADY_STORED_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    size: int
    sha256: str
    state: VersionStatus.State
    already_stored: bool
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., state: _Optional[_Union[VersionStatus.State, str]] = ..., already_stored: _Optional[bool] = ...) -> None: ...

class FetchRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class FetchResponse(_message.Message):
    __slots__ = ("metadata", "chunk")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    metadata: ArtifactMetadata
    chunk: bytes
    def __init__(self, metadata: _Optional[_Union[ArtifactMetadata, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelStatus]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelStatus, _Mapping]]] = ...) -> None: ...

class ModelStatus(_message.Message):
    __slots__ = ("name", "versions", "serving_version", "highest_version_seen", "rollout")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    SERVING_VERSION_FIELD_NUMBER: _ClassVar[int]
    HIGHEST_VERSION_SEEN_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions: _containers.RepeatedCompositeFieldContainer[VersionStatus]
    serving_version: int
    highest_version_seen: int
    rollout: RolloutStatus
    def __init__(self, name: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[VersionStatus, _Mapping]]] = ..., serving_version: _Optional[int] = ..., highest_version_seen: _Optional[int] = ..., rollout: _Optional[_Union[RolloutStatus, _Mapping]] = ...) -> None: ...

class VersionStatus(_message.Message):
    __slots__ = ("version", "state", "reason", "provenance", "pinned", "size", "sha256")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UNKNOWN: _ClassVar[VersionStatus.State]
        LOADING: _ClassVar[VersionStatus.State]
        SERVING: _ClassVar[VersionStatus.State]
        AVAILABLE: _ClassVar[VersionStatus.State]
        REFUSED: _ClassVar[VersionStatus.State]
        RETIRED: _ClassVar[VersionStatus.State]
    UNKNOWN: VersionStatus.State
    LOADING: VersionStatus.State
    SERVING: VersionStatus.State
    AVAILABLE: VersionStatus.State
    REFUSED: VersionStatus.State
    RETIRED: VersionStatus.State
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    version: int
    state: VersionStatus.State
    reason: str
    provenance: Provenance
    pinned: bool
    size: int
    sha256: str
    def __init__(self, version: _Optional[int] = ..., state: _Optional[_Union[VersionStatus.State, str]] = ..., reason: _Optional[str] = ..., provenance: _Optional[_Union[Provenance, _Mapping]] = ..., pinned: _Optional[bool] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class Provenance(_message.Message):
    __slots__ = ("framework", "created", "parent_version", "metrics", "epsilon", "delta", "gates")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    FRAMEWORK_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    PARENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    framework: str
    created: str
    parent_version: int
    metrics: _containers.ScalarMap[str, float]
    epsilon: float
    delta: float
    gates: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, framework: _Optional[str] = ..., created: _Optional[str] = ..., parent_version: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., gates: _Optional[_Iterable[str]] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("name", "version", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    reason: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class RollbackResponse(_message.Message):
    __slots__ = ("name", "version", "previous_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    previous_version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., previous_version: _Optional[int] = ...) -> None: ...
