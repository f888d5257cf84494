"""Open Inference Protocol tensors <-> numpy: raw and typed contents, BYTES framing, size checks.

Every mismatch a client can cause (datatype, shape, byte count, framing) raises InvalidInput with a
message naming the tensor (clipped); nothing here allocates for a declared size before checking it against
the bytes actually received.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Mapping, Sequence

import numpy as np

from gateway.backends.dtypes import BYTES, NUMPY_DTYPES, numpy_dtype, v2_from_numpy
from gateway.errors import InvalidInput, clip
from gateway.protos.inference import grpc_service_pb2 as pb

MAX_ELEMENTS = 1 << 28
MAX_RANK = 32  # dimensions per tensor (ONNX Runtime itself refuses more than a few dozen)
THREAD_DECODE_BYTES = 1 << 20  # requests with more payload than this are decoded off the event loop
THREAD_DECODE_ELEMENTS = 1 << 14  # BYTES elements are decoded in a Python loop: many of them also leave the loop
BYTES_FRAME = 4  # each BYTES element carries at least its 4-byte length prefix
MAX_ID_CHARS = 256  # a request id is echoed in the response (oip_rest.MAX_ID_CHARS over REST)

# typed-contents field for each datatype (Triton's mapping)
TYPED_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    BYTES: "bytes_contents",
}


_LITTLE_ENDIAN_HOST = sys.byteorder == "little"
# raw contents are little-endian (the V2 protocol); dtypes made once, not per request
_WIRE = {name: np.dtype(dt).newbyteorder("<") for name, dt in NUMPY_DTYPES.items() if name != BYTES}


def _label(name: str) -> str:
    """How a message names a client's tensor: quoted, clipped, control characters escaped."""
    return f"input '{clip(name)}'"


def count_elements(name: str, shape: Sequence[int]) -> int:
    """Elements of a declared shape; refuses too many dimensions, negative ones and more than MAX_ELEMENTS."""
    if len(shape) > MAX_RANK:
        raise InvalidInput(f"{_label(name)}: {len(shape)} dimensions, at most {MAX_RANK}")
    if shape and min(shape) < 0:
        raise InvalidInput(f"{_label(name)}: shape {clip(list(shape))} has a negative dimension")
    n = 1
    for dim in shape:  # stops at the first step past the limit: no product of huge numbers is ever formed
        if dim == 0:  # an empty tensor still may not declare huge other dimensions (numpy refuses to reshape)
            continue
        n *= dim
        if n > MAX_ELEMENTS:
            raise InvalidInput(f"{_label(name)}: shape {clip(list(shape))} has more than {MAX_ELEMENTS} elements")
    return 0 if 0 in shape else n


def decode_off_loop(request: pb.ModelInferRequest) -> bool:
    """Whether decoding `request` may take long enough (large payload, many BYTES elements) to leave the loop."""
    raw = request.raw_input_contents
    if raw:
        total = 0
        for data in raw:
            total += len(data)
        if total > THREAD_DECODE_BYTES:
            return True
        return total > THREAD_DECODE_ELEMENTS * BYTES_FRAME and any(t.datatype == BYTES for t in request.inputs)
    return request.ByteSize() > THREAD_DECODE_BYTES or any(
        t.datatype == BYTES and len(t.contents.bytes_contents) > THREAD_DECODE_ELEMENTS for t in request.inputs
    )


def decode_bytes(name: str, raw: bytes, count: int) -> np.ndarray:
    """Split Triton's BYTES framing (4-byte little-endian length, then the bytes) into an object array.

    `count` is checked against the bytes received (each element needs its 4-byte prefix) before the
    array is allocated: a 30-byte request cannot declare 2**28 elements and have them allocated.
    """
    if count > len(raw) // BYTES_FRAME:
        raise InvalidInput(
            f"{_label(name)}: {len(raw)} bytes of BYTES content cannot hold {count} elements "
            f"(each needs a {BYTES_FRAME}-byte length prefix)"
        )
    out = np.empty(count, dtype=object)
    view, pos = memoryview(raw), 0
    for i in range(count):
        if pos + 4 > len(view):
            raise InvalidInput(f"{_label(name)}: BYTES content ends before element {i}")
        (n,) = struct.unpack_from("<I", view, pos)
        pos += 4
        if pos + n > len(view):
            raise InvalidInput(f"{_label(name)}: BYTES element {i} runs past the end of the content")
        out[i] = bytes(view[pos : pos + n])
        pos += n
    if pos != len(view):
        raise InvalidInput(f"{_label(name)}: {len(view) - pos} bytes left after {count} BYTES elements")
    return out


def encode_bytes(arr: np.ndarray) -> bytes:
    """Frame an array of bytes/str elements in Triton's BYTES wire format."""
    parts = []
    for item in arr.reshape(-1):
        b = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(b)) + b)
    return b"".join(parts)


def _one_representation(tensor: pb.ModelInferRequest.InferInputTensor, raw: bool) -> None:
    """Refuse a tensor given two ways (raw and typed contents, or two typed fields): the model would run on
    one of them while whatever inspected the request (a proxy, a log, an audit) may have read the other."""
    if not tensor.HasField("contents"):
        return
    given = [field.name for field, _ in tensor.contents.ListFields()]
    if raw and given:
        raise InvalidInput(f"{_label(tensor.name)}: typed contents must not be sent with raw_input_contents")
    expected = TYPED_FIELD.get(tensor.datatype)
    if expected is not None and any(name != expected for name in given):  # no typed field: refused below
        raise InvalidInput(f"{_label(tensor.name)}: {tensor.datatype} values belong in {expected} only")


def decode_inputs(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    """Turn a ModelInferRequest's inputs into numpy arrays, raw or typed, checking every size first."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    if len(request.id) > MAX_ID_CHARS:  # echoed in the response: the same bound as over REST
        raise InvalidInput(f"request id must be a string of at most {MAX_ID_CHARS} characters")
    arrays: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in arrays:
            raise InvalidInput(f"{_label(name)} given twice")
        shape = tuple(tensor.shape)
        count = count_elements(name, shape)
        if tensor.datatype not in NUMPY_DTYPES:
            raise InvalidInput(f"{_label(name)}: unknown datatype '{clip(tensor.datatype, 32)}'")
        dtype = _WIRE.get(tensor.datatype) or numpy_dtype(tensor.datatype)
        _one_representation(tensor, bool(raw))
        if raw:
            data = raw[i]
            if tensor.datatype == BYTES:
                arr = decode_bytes(name, data, count)
            else:
                expected = count * dtype.itemsize
                if len(data) != expected:
                    raise InvalidInput(
                        f"{_label(name)}: raw content is {len(data)} bytes, shape {clip(list(shape))} of "
                        f"{tensor.datatype} needs {expected}"
                    )
                arr = np.frombuffer(data, dtype=dtype)
        else:
            field = TYPED_FIELD.get(tensor.datatype)
            if field is None:
                raise InvalidInput(f"{_label(name)}: {tensor.datatype} must be sent as raw content")
            values = getattr(tensor.contents, field)
            if len(values) != count:
                raise InvalidInput(
                    f"{_label(name)}: {len(values)} values in {field}, shape {clip(list(shape))} needs {count}"
                )
            if tensor.datatype == BYTES:
                arr = np.empty(count, dtype=object)
                arr[:] = list(values)
            else:
                try:
                    arr = np.asarray(values, dtype=dtype)
                except (OverflowError, ValueError):
                    raise InvalidInput(f"{_label(name)}: a value is outside the range of {tensor.datatype}") from None
        arrays[name] = arr.reshape(shape)
    return arrays


def encode_outputs(response: pb.ModelInferResponse, outputs: Mapping[str, np.ndarray], order: Sequence[str]) -> None:
    """Fill a ModelInferResponse with outputs as raw contents (what tritonclient reads fastest)."""
    for name in order:
        arr = outputs[name]
        datatype = v2_from_numpy(arr.dtype)
        tensor = response.outputs.add()
        tensor.name = name
        tensor.datatype = datatype
        tensor.shape.extend(arr.shape)
        if datatype == BYTES:
            response.raw_output_contents.append(encode_bytes(arr))
        elif _LITTLE_ENDIAN_HOST and arr.dtype.byteorder != ">":
            response.raw_output_contents.append(arr.tobytes())  # already little-endian; tobytes() writes C order
        else:
            response.raw_output_contents.append(arr.astype(arr.dtype.newbyteorder("<")).tobytes())
