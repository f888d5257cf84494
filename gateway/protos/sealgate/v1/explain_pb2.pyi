from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Instance(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "instances", "method", "nsamples", "output", "target")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    NSAMPLES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    instances: _containers.RepeatedCompositeFieldContainer[Instance]
    method: str
    nsamples: int
    output: str
    target: int
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., instances: _Optional[_Iterable[_Union[Instance, _Mapping]]] = ..., method: _Optional[str] = ..., nsamples: _Optional[int] = ..., output: _Optional[str] = ..., target: _Optional[int] = ...) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("base_value", "values", "output", "target")
    BASE_VALUE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    base_value: float
    values: _containers.RepeatedScalarFieldContainer[float]
    output: float
    target: int
    def __init__(self, base_value: _Optional[float] = ..., values: _Optional[_Iterable[float]] = ..., output: _Optional[float] = ..., target: _Optional[int] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "method", "output", "feature_shape", "explanations", "evaluations")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    EXPLANATIONS_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    method: str
    output: str
    feature_shape: _containers.RepeatedScalarFieldContainer[int]
    explanations: _containers.RepeatedCompositeFieldContainer[Explanation]
    evaluations: int
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., method: _Optional[str] = ..., output: _Optional[str] = ..., feature_shape: _Optional[_Iterable[int]] = ..., explanations: _Optional[_Iterable[_Union[Explanation, _Mapping]]] = ..., evaluations: _Optional[int] = ...) -> None: ...
