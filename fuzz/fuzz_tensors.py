"""Fuzz the gRPC tensor decoder, `gateway.server.tensors.decode_inputs`, with whole ModelInferRequests.

Input layout: the first byte picks the mode. 0: the rest is a serialized ModelInferRequest, parsed as the
gRPC server would (protobuf parse errors are the transport's business and end the call quietly).
Anything else: the rest drives a FuzzedDataProvider that builds a request field by field (datatypes from
the known list and a few unknown ones, shapes with huge, negative and boundary dimensions, raw or typed
contents, BYTES framing right or wrong), reaching deep cases that byte-level mutation rarely forms.
Allowed: SealgateError subclasses that map to a client error. A decoded array must have the declared shape.
"""

from __future__ import annotations

import struct
import sys
from typing import Any

from fuzz.common import Harness, fuzz_main, instrumented

with instrumented():
    from google.protobuf.message import DecodeError

    from gateway.backends.dtypes import BYTES, V2_DATATYPES
    from gateway.errors import SealgateError
    from gateway.protos.inference import grpc_service_pb2 as pb
    from gateway.server import tensors

MODE_PROTO = 0
DATATYPES = [*V2_DATATYPES, "", "FP8", "bytes", "STRING", "BF16"]
NAMES = ["input", "x", "a", "b", "", "input "]
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
DIMS = [0, 1, 2, 3, 4, 8, 64, -1, -2, 1 << 16, 1 << 28, (1 << 28) + 1, 1 << 31, 1 << 62, INT64_MAX, INT64_MIN]
TYPED_FIELDS = sorted(set(tensors.TYPED_FIELD.values()))  # the decoder's own datatype -> field map
_TYPED_LIMITS = {
    "int_contents": (-(1 << 31), (1 << 31) - 1),
    "int64_contents": (INT64_MIN, INT64_MAX),
    "uint_contents": (0, (1 << 32) - 1),
    "uint64_contents": (0, (1 << 64) - 1),
}


def _shape(fdp: Any) -> list[int]:
    rank = fdp.ConsumeIntInRange(0, 6)
    out = []
    for _ in range(rank):
        if fdp.ConsumeBool():
            out.append(fdp.PickValueInList(DIMS))
        else:
            out.append(fdp.ConsumeIntInRange(-4, 70))
    return out


def _bytes_framing(fdp: Any) -> bytes:
    """BYTES raw content: usually well-formed length-prefixed elements, sometimes a lying length."""
    parts = []
    for _ in range(fdp.ConsumeIntInRange(0, 8)):
        item = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 32))
        length = len(item) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, (1 << 32) - 1)
        parts.append(struct.pack("<I", length) + item)
    return b"".join(parts)


def _field_for(datatype: str) -> str:
    """The typed-contents field Triton uses for `datatype` (fp32_contents for types that have none)."""
    return tensors.TYPED_FIELD.get(datatype, "fp32_contents")


def _typed(fdp: Any, tensor: pb.ModelInferRequest.InferInputTensor, count: int) -> None:
    field = fdp.PickValueInList(TYPED_FIELDS) if fdp.ConsumeIntInRange(0, 7) == 0 else _field_for(tensor.datatype)
    target = getattr(tensor.contents, field)
    n = count if fdp.ConsumeBool() and 0 <= count <= 256 else fdp.ConsumeIntInRange(0, 64)
    if field == "bool_contents":
        target.extend(fdp.ConsumeBool() for _ in range(n))
    elif field in ("fp32_contents", "fp64_contents"):
        target.extend(fdp.ConsumeRegularFloat() if fdp.ConsumeBool() else fdp.ConsumeFloat() for _ in range(n))
    elif field == "bytes_contents":
        target.extend(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 16)) for _ in range(n))
    else:
        lo, hi = _TYPED_LIMITS[field]
        target.extend(fdp.ConsumeIntInRange(lo, hi) for _ in range(n))


def build_request(data: bytes) -> pb.ModelInferRequest:
    """A ModelInferRequest shaped by a FuzzedDataProvider over `data`."""
    import atheris

    fdp = atheris.FuzzedDataProvider(data)
    request = pb.ModelInferRequest(model_name="mlp")
    raw_mode = fdp.ConsumeBool()
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        tensor = request.inputs.add()
        tensor.name = fdp.PickValueInList(NAMES) if fdp.ConsumeBool() else fdp.ConsumeUnicodeNoSurrogates(40)
        tensor.datatype = fdp.PickValueInList(DATATYPES)
        shape = _shape(fdp)
        tensor.shape.extend(shape)
        count = 1
        for dim in shape:
            count *= dim
        if raw_mode:
            if tensor.datatype == BYTES and fdp.ConsumeBool():
                request.raw_input_contents.append(_bytes_framing(fdp))
            else:
                request.raw_input_contents.append(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4096)))
        else:
            _typed(fdp, tensor, count)
    if raw_mode and fdp.ConsumeIntInRange(0, 15) == 0:
        request.raw_input_contents.append(fdp.ConsumeBytes(8))  # one raw content too many
    return request


def decode(data: bytes) -> None:
    """The target: decode one request; every array must come back with its declared shape."""
    if not data:
        return
    if data[0] == MODE_PROTO:
        try:
            request = pb.ModelInferRequest.FromString(data[1:])
        except DecodeError:
            return
    else:
        request = build_request(data[1:])
    arrays = tensors.decode_inputs(request)
    for tensor in request.inputs:
        got = arrays[tensor.name].shape
        if got != tuple(tensor.shape):
            raise AssertionError(f"input {tensor.name[:40]!r} decoded to shape {got}, declared {list(tensor.shape)}")


TestOneInput = Harness("tensors", decode, (SealgateError,))

if __name__ == "__main__":
    fuzz_main(TestOneInput)
    sys.exit(0)
