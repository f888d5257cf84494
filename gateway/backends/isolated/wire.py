"""How tensors and control messages cross the worker boundary: tensors in one shared-memory region,
a small JSON control message per call over a SOCK_SEQPACKET socket (one message per send).

A tensor is (name, V2 datatype, shape, offset, nbytes) in the message and its bytes in the region;
BYTES tensors are packed as a 4-byte little-endian length before each element. Nothing is pickled:
the gateway never unpickles what an untrusted worker wrote, and `read_tensors` checks every descriptor
(known datatype, non-negative shape, size matching the shape, inside the region) before it reads.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from gateway.backends.dtypes import BYTES, V2_DATATYPES, numpy_dtype, v2_from_numpy

ALIGN = 64
MAX_CONTROL = 1 << 20  # bytes of one control message (descriptors and error text, never tensor data)
MAX_TENSORS = 4096
MAX_RANK = 64
_LEN = struct.Struct("<I")

Descriptor = tuple[str, str, list[int], int, int]


class WireError(ValueError):
    """A malformed control message or descriptor (from the peer), or tensors that do not fit the region."""


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _pack_bytes(value: np.ndarray) -> bytes:
    parts = []
    for element in value.flat:
        data = bytes(element)
        parts.append(_LEN.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def _unpack_bytes(raw: memoryview, shape: tuple[int, ...]) -> np.ndarray:
    count = math.prod(shape)
    if count * _LEN.size > len(raw):  # checked before allocating: each element takes at least its length
        raise WireError("BYTES tensor is shorter than its element count")
    out = np.empty(count, dtype=object)
    pos = 0
    for index in range(count):
        if pos + 4 > len(raw):
            raise WireError("BYTES tensor is shorter than its element count")
        (length,) = _LEN.unpack_from(raw, pos)
        pos += 4
        if pos + length > len(raw):
            raise WireError("BYTES element runs past its tensor")
        out[index] = bytes(raw[pos : pos + length])
        pos += length
    if pos != len(raw):
        raise WireError("BYTES tensor has trailing bytes")
    return out.reshape(shape)


def write_tensors(region: memoryview, start: int, end: int, tensors: Mapping[str, np.ndarray]) -> list[Descriptor]:
    """Copy `tensors` into region[start:end] (each aligned); WireError if they do not fit."""
    out: list[Descriptor] = []
    pos = _aligned(start)
    for name, value in tensors.items():
        datatype = v2_from_numpy(value.dtype)
        if datatype == BYTES:
            flat = np.frombuffer(_pack_bytes(value), dtype=np.uint8)
        else:
            flat = np.ascontiguousarray(value, dtype=numpy_dtype(datatype)).reshape(-1).view(np.uint8)
        nbytes = flat.size
        if pos + nbytes > end:
            raise WireError(f"tensors of {pos + nbytes - start} bytes or more do not fit the {end - start}-byte region")
        if nbytes:
            np.frombuffer(region, dtype=np.uint8, count=nbytes, offset=pos)[:] = flat
        out.append((name, datatype, [int(d) for d in value.shape], pos, nbytes))
        pos = _aligned(pos + nbytes)
    return out


def read_tensors(region: memoryview, start: int, end: int, descriptors: Any, *, copy: bool) -> dict[str, np.ndarray]:
    """The tensors `descriptors` name in region[start:end], checked; views into the region unless `copy`."""
    if not isinstance(descriptors, list) or len(descriptors) > MAX_TENSORS:
        raise WireError("tensor descriptors must be a bounded list")
    out: dict[str, np.ndarray] = {}
    for item in descriptors:
        if not (isinstance(item, list) and len(item) == 5):
            raise WireError("a tensor descriptor is [name, datatype, shape, offset, nbytes]")
        name, datatype, shape, offset, nbytes = item
        if not isinstance(name, str) or name in out or datatype not in V2_DATATYPES:
            raise WireError("a tensor descriptor has a bad or repeated name or an unknown datatype")
        if not (isinstance(shape, list) and len(shape) <= MAX_RANK and all(type(d) is int and d >= 0 for d in shape)):
            raise WireError("a tensor descriptor has a bad shape")
        if not (
            type(offset) is int and type(nbytes) is int and start <= offset and nbytes >= 0 and offset + nbytes <= end
        ):
            raise WireError("a tensor descriptor points outside its region")
        dims = tuple(shape)
        raw = region[offset : offset + nbytes]
        if datatype == BYTES:
            out[name] = _unpack_bytes(raw, dims)
            continue
        dtype = numpy_dtype(datatype)
        count = math.prod(dims)
        if count * dtype.itemsize != nbytes:
            raise WireError("a tensor descriptor's size does not match its shape")
        array = np.frombuffer(raw, dtype=dtype, count=count).reshape(dims)
        out[name] = array.copy() if copy else array
    return out


def encode(message: Mapping[str, Any]) -> bytes:
    """One control message as compact JSON."""
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_CONTROL:
        raise WireError("control message too large")
    return data


def decode(data: bytes) -> dict[str, Any]:
    """One control message from the peer; WireError unless it is a JSON object."""
    try:
        message = json.loads(data)
    except (ValueError, RecursionError):
        raise WireError("control message is not JSON") from None
    if not isinstance(message, dict):
        raise WireError("control message is not a JSON object")
    return message
