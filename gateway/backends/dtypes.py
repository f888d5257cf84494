"""KServe V2 datatypes and their numpy, ONNX and TensorFlow counterparts.

One table per framework, so every layer (backends, gRPC, REST) names tensor types the same way.
BYTES tensors are numpy object arrays whose elements are `bytes`.
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np

from gateway.errors import InvalidInput, UnsupportedFormat

BYTES = "BYTES"

_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    BYTES: np.dtype(object),
}

V2_DATATYPES: tuple[str, ...] = tuple(_NUMPY)
"""Every KServe V2 datatype sealgate serves (BF16 is absent: numpy has no such type)."""

NUMPY_DTYPES = MappingProxyType(_NUMPY)
"""V2 datatype -> numpy dtype (native byte order; BYTES -> object)."""

_FROM_NUMPY: dict[np.dtype, str] = {dtype: name for name, dtype in _NUMPY.items() if name != BYTES}

_ONNX: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": BYTES,
}

_TF: dict[str, str] = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "half": "FP16",
    "float32": "FP32",
    "float": "FP32",
    "float64": "FP64",
    "double": "FP64",
    "string": BYTES,
}


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype that carries a V2 datatype; an unknown name is the client's mistake."""
    try:
        return _NUMPY[datatype]
    except KeyError:
        raise InvalidInput(f"unknown datatype {datatype!r}; expected one of {', '.join(V2_DATATYPES)}") from None


def v2_datatype_or_none(dtype: np.dtype) -> str | None:
    """The V2 datatype of a numpy dtype (any byte order; object or fixed bytes -> BYTES), or None."""
    name = _FROM_NUMPY.get(dtype)  # native byte order: no new dtype object on the hot path
    if name is not None:
        return name
    if dtype.kind in "OS":
        return BYTES
    return _FROM_NUMPY.get(dtype.newbyteorder("="))


def v2_from_numpy(dtype: np.dtype) -> str:
    """The V2 datatype of a numpy dtype; refuses types V2 cannot carry (complex, str, datetime...)."""
    name = v2_datatype_or_none(dtype)
    if name is None:
        raise InvalidInput(f"numpy dtype {dtype} has no KServe V2 datatype")
    return name


def v2_from_onnx(type_string: str) -> str:
    """The V2 datatype of an ONNX Runtime type string such as 'tensor(float)'."""
    try:
        return _ONNX[type_string]
    except KeyError:
        raise UnsupportedFormat(f"ONNX type {type_string} has no KServe V2 datatype") from None


def v2_from_tf(dtype: object) -> str:
    """The V2 datatype of a TensorFlow dtype (a tf.DType or its name); no tensorflow import here."""
    name = dtype if isinstance(dtype, str) else str(getattr(dtype, "name", dtype))
    try:
        return _TF[name]
    except KeyError:
        raise UnsupportedFormat(f"TensorFlow dtype {name} has no KServe V2 datatype") from None
