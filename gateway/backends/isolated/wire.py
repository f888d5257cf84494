"""How tensors and control messages cross the worker boundary: tensors in one shared-memory region, one
small fixed-layout binary message per call and direction over a SOCK_SEQPACKET socket (one message per send).

A call message is a header and one descriptor per tensor (struct, little-endian, no names: a tensor is named
by its index in the model's input or output list, agreed at load):

    request  = <HHBx inputs, requested outputs (0: all), flags (SPIN | linger << 1)>  descriptor * inputs
               <H index> * requested
    reply    = <BxH status 0, outputs> <Q the model's run in ns, as the worker timed it>  descriptor * outputs
             | <BxH status (error kind), message length>  UTF-8 message
    descriptor = <HBBQQ index, datatype code, rank, offset, nbytes>  <q dimension> * rank

A tensor's bytes lie at region[offset:offset + nbytes]; BYTES tensors are packed as a 4-byte little-endian
length before each element. Nothing is pickled and nothing is JSON per call (JSON only for the one-off load
handshake): the gateway never unpickles what an untrusted worker wrote, and `read_reply` checks every
descriptor (known index, once each, known datatype, bounded rank, non-negative shape, size matching the shape,
inside the region, no trailing bytes) before it reads.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gateway.backends.dtypes import BYTES, V2_DATATYPES, numpy_dtype

ALIGN = 64
MAX_CONTROL = 1 << 20  # bytes of one control message (descriptors and error text, never tensor data)
MAX_TENSORS = 4096
MAX_RANK = 64
MAX_ERROR_TEXT = 300
_LEN = struct.Struct("<I")
HEAD = struct.Struct("<HHBx")
SPIN = 1  # request flag: the gateway is lightly loaded, so the worker may poll for the next call (its spin)
LINGER_UNIT_NS = 100_000  # flags >> 1: how much longer that poll may last, in 100 µs (a batcher's queue delay)
MAX_LINGER = 127
REPLY = struct.Struct("<BxH")
RUN = struct.Struct("<Q")  # after a success reply's header: the model's own run (ns), for statistics and canaries
INDEX = struct.Struct("<H")
_DESCRIPTORS = tuple(struct.Struct(f"<HBBQQ{rank}q") for rank in range(MAX_RANK + 1))
_DESCRIPTOR_SIZE = _DESCRIPTORS[0].size
_NUMPY = tuple(numpy_dtype(name) if name != BYTES else np.dtype(object) for name in V2_DATATYPES)
CODES = {name: code for code, name in enumerate(V2_DATATYPES)}
_BYTES_CODE = CODES[BYTES]

OK = 0
ERRORS = ("", "InvalidInput", "TooLarge", "UnsupportedFormat", "Internal")
"""Reply status codes: 0 is success, the others name the error kind the gateway raises."""


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


def write_tensors(
    region: memoryview, start: int, end: int, tensors: Sequence[tuple[int, int, np.ndarray]], parts: list[bytes]
) -> None:
    """Copy each (index, datatype code, array) into region[start:end] (aligned, one copy each) and append its
    descriptor to `parts`; WireError if they do not fit. Arrays must already have their code's dtype."""
    pos = _aligned(start)
    for index, code, value in tensors:
        shape = value.shape
        if len(shape) > MAX_RANK:
            raise WireError(f"a tensor of rank {len(shape)} is above {MAX_RANK}")
        if code == _BYTES_CODE:
            packed = _pack_bytes(value)
            nbytes = len(packed)
            if pos + nbytes > end:
                raise WireError(
                    f"tensors of {pos + nbytes - start} bytes or more do not fit the {end - start}-byte region"
                )
            region[pos : pos + nbytes] = packed
        else:
            dtype = _NUMPY[code]
            nbytes = value.size * dtype.itemsize
            if pos + nbytes > end:
                raise WireError(
                    f"tensors of {pos + nbytes - start} bytes or more do not fit the {end - start}-byte region"
                )
            if nbytes:  # the one copy, into the region, as the code's dtype
                np.copyto(np.frombuffer(region, dtype, value.size, pos).reshape(shape), value, casting="same_kind")
        parts.append(_DESCRIPTORS[len(shape)].pack(index, code, len(shape), pos, nbytes, *shape))
        pos = _aligned(pos + nbytes)


def request(
    inputs: Sequence[tuple[int, int, np.ndarray]],
    requested: Sequence[int],
    region: memoryview,
    end: int,
    flags: int = 0,
) -> bytes:
    """The gateway's call message, its inputs written to region[:end]."""
    parts = [HEAD.pack(len(inputs), len(requested), flags)]
    write_tensors(region, 0, end, inputs, parts)
    parts.extend(INDEX.pack(index) for index in requested)
    return b"".join(parts)


def reply_ok(
    outputs: Sequence[tuple[int, int, np.ndarray]], region: memoryview, start: int, end: int, run_ns: int = 0
) -> bytes:
    """The worker's success message, its outputs written to region[start:end]; `run_ns`: the model's run."""
    parts = [REPLY.pack(OK, len(outputs)), RUN.pack(max(run_ns, 0))]
    write_tensors(region, start, end, outputs, parts)
    return b"".join(parts)


def reply_error(kind: str, message: str) -> bytes:
    """The worker's failure message: a known error kind (else Internal) and a short text."""
    status = ERRORS.index(kind) if kind in ERRORS[1:] else ERRORS.index("Internal")
    text = message.encode("utf-8", "replace")[:MAX_ERROR_TEXT]
    return REPLY.pack(status, len(text)) + text


def _descriptors(
    message: bytes | memoryview,
    pos: int,
    count: int,
    names: Sequence[str],
    region: memoryview,
    start: int,
    end: int,
    copy: bool,
) -> tuple[dict[str, np.ndarray], int]:
    """`count` descriptors from message[pos:], each checked, and the tensors they name; and the position after."""
    if count > len(names):
        raise WireError("more tensors than the model has")
    size = len(message)
    out: dict[str, np.ndarray] = {}
    for _ in range(count):
        if pos + _DESCRIPTOR_SIZE > size:
            raise WireError("a tensor descriptor is cut short")
        index, code, rank, offset, nbytes = _DESCRIPTORS[0].unpack_from(message, pos)
        if rank > MAX_RANK or pos + _DESCRIPTORS[rank].size > size:
            raise WireError("a tensor descriptor has a bad rank or is cut short")
        dims = _DESCRIPTORS[rank].unpack_from(message, pos)[5:]
        pos += _DESCRIPTORS[rank].size
        if index >= len(names) or names[index] in out:
            raise WireError("a tensor descriptor has an unknown or repeated index")
        if code >= len(_NUMPY):
            raise WireError("a tensor descriptor has an unknown datatype")
        if any(d < 0 for d in dims):
            raise WireError("a tensor descriptor has a negative dimension")
        if math.prod(max(d, 1) for d in dims) * max(_NUMPY[code].itemsize, 1) >= 1 << 62:  # 0 beside huge ones
            raise WireError("a tensor descriptor's shape is too large")
        if not (start <= offset and offset + nbytes <= end):
            raise WireError("a tensor descriptor points outside its region")
        raw = region[offset : offset + nbytes]
        if code == _BYTES_CODE:
            out[names[index]] = _unpack_bytes(raw, dims)
            continue
        dtype = _NUMPY[code]
        elements = math.prod(dims)
        if elements * dtype.itemsize != nbytes:
            raise WireError("a tensor descriptor's size does not match its shape")
        array = np.frombuffer(raw, dtype, elements).reshape(dims)
        out[names[index]] = array.copy() if copy else array
    return out, pos


def read_request(
    message: bytes | memoryview, names: Sequence[str], outputs: Sequence[str], region: memoryview, end: int
) -> tuple[dict[str, np.ndarray], list[str] | None, int]:
    """The worker's view of a call: its inputs (views into region[:end]), the requested output names, flags."""
    if len(message) < HEAD.size:
        raise WireError("a call message is cut short")
    count, wanted, flags = HEAD.unpack_from(message, 0)
    inputs, pos = _descriptors(message, HEAD.size, count, names, region, 0, end, copy=False)
    if pos + wanted * INDEX.size != len(message):
        raise WireError("a call message has a bad length")
    requested = None
    if wanted:
        requested = []
        for k in range(wanted):
            (index,) = INDEX.unpack_from(message, pos + k * INDEX.size)
            if index >= len(outputs):
                raise WireError("a call names an unknown output")
            requested.append(outputs[index])
    return inputs, requested, flags


def read_reply(
    message: bytes | memoryview, names: Sequence[str], region: memoryview, start: int, end: int
) -> tuple[dict[str, np.ndarray], str, str, int]:
    """A worker's reply, every descriptor checked, its outputs copied out of region[start:end]:
    (outputs, '', '', the run in ns the worker claims) on success, ({}, error kind, message, 0) on failure;
    WireError if malformed. The claimed run is only a figure for statistics: callers bound it by what they saw."""
    if len(message) < REPLY.size:
        raise WireError("a reply is cut short")
    status, count = REPLY.unpack_from(message, 0)
    if status != OK:
        if status >= len(ERRORS) or REPLY.size + count != len(message):
            raise WireError("an error reply is malformed")
        return {}, ERRORS[status], bytes(message[REPLY.size :]).decode("utf-8", "replace"), 0
    if len(message) < REPLY.size + RUN.size:
        raise WireError("a reply is cut short")
    (run_ns,) = RUN.unpack_from(message, REPLY.size)
    outputs, pos = _descriptors(message, REPLY.size + RUN.size, count, names, region, start, end, copy=True)
    if pos != len(message):
        raise WireError("a reply has trailing bytes")
    return outputs, "", "", run_ns


def encode(message: Mapping[str, Any]) -> bytes:
    """One load-handshake message as compact JSON (once per worker start, never per call)."""
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_CONTROL:
        raise WireError("control message too large")
    return data


def decode(data: bytes) -> dict[str, Any]:
    """One load-handshake message from the peer; WireError unless it is a JSON object."""
    try:
        message = json.loads(data)
    except (ValueError, RecursionError):
        raise WireError("control message is not JSON") from None
    if not isinstance(message, dict):
        raise WireError("control message is not a JSON object")
    return message
